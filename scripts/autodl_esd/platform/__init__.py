"""The AutoDL API and what its answers mean: typed calls, units, stock, containers, the
deployment config, finding a deployment, sending a change and seeing what it did, following a
deployment, faulty hosts, notifications and the first-run doctor."""
