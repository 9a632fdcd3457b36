"""Serving a ReplicaSet: every piece that sits between clients and the replicas.

- `registry`: the service registry of one deployment (build, watch, write, serve /pick).
- `pool`: client-side replica selection (least in-flight, round robin, random), ejection,
  retry on another replica. Standard library only; user code imports it as `service_pool`.

Nothing here is imported by the entry scripts' start-up path.
"""
