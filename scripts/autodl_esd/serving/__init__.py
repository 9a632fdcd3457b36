"""Serving a ReplicaSet: every piece that sits between clients and the replicas.

- `registry`: the service registry of one deployment (build, watch, write, serve /pick).
- `pool`: client-side replica selection (least in-flight, round robin, random), ejection,
  retry on another replica. Standard library only; user code imports it as `service_pool`.
- `gateway`: the serving gateway (serve_gateway.py) on aiohttp: proxy, retries, queue,
  status, metrics; its seams are in its docstring. Around it: `sources` (where replicas come
  from), `policies` (how one is picked, load reports), `replicas` (counts, ejection, the
  request queue, shared-count ledger), `metrics` (prometheus_client), `serve` (the script's
  lifecycle).

Nothing here is imported by the entry scripts' start-up path.
"""
