"""Creating deployments exactly once: the submit engine, the durable submission record behind
queue_submit (and --detach), markers of runs waiting for stock, and bulk stop/delete."""
