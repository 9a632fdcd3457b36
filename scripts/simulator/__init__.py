"""A faithful local simulator of the AutoDL elastic-deployment (弹性部署) HTTP API.

Stdlib only. Start it in-process with `Simulator(...).start()` (or as a context manager),
or from the command line with `scripts/autodl_sim.py`. Modules:

- clock        simulated time (`speed` x real time)
- cluster      machines, images, the cluster file format, host selection
- lifecycle    container statuses, phase durations, how `cmd` sets a lifetime
- controllers  ReplicaSet / Job / Container rules
- world        all mutable state behind one lock; placement, reuse pool, blacklist, stock
- routes       endpoint validation and response shapes
- faults       fault SPEC parsing and injection
- llm          the model server's cost model: prompt tokens, prefix cache, delays
- server       HTTP routes, envelope, auth, /svc and /_sim
- app          the `Simulator` handle and its test controls
"""

from .app import DEFAULT_TOKEN, Simulator
from .cluster import ClusterConfigError

__all__ = ["Simulator", "ClusterConfigError", "DEFAULT_TOKEN"]
