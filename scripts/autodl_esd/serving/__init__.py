"""Serving a ReplicaSet: every piece that sits between clients and the replicas, by role.

Imports flow one way, top to bottom (an import-linter layers contract checks it):

- `serve`: what serve_gateway.py runs (flags -> source, options, autoscaler -> serve).
- `autoscale/`: `cli` (the --autoscale flags), `extension` (runs the loop in the gateway),
  `controller` (the loop), `scaler` (the actuator: replica_num, stock, replacements),
  `policy` (the decision, a pure function) with its `defaults`, `spend_meter`.
- `routing/`: `gateway` (the HTTP proxy), `metrics`, `replicas` (the replica table: counts,
  ejection, queue), `sources` (where replicas come from: file, URL, watcher, Redis),
  `redis_pool` (ServicePool.from_redis), `ledgers` (in-flight counts, local or in Redis),
  `policies` (which replica) and `load_report` (a replica's own queue).
- `registry/`: `watcher` (kept current from the AutoDL API), `redis_watcher` (one active
  watcher of many), `endpoint` (GET /services, /pick), `redis_store` (the registry in
  Redis), `document` (build, check, write).
- `pool`: the client library users import as `service_pool`: standard library only, one
  file that stands alone; also the bundle's one registry parser and file/URL readers.
- Apart: `haproxy` (haproxy.cfg and the runtime backend sync), `detached` (the record of a
  gateway or watcher running in the background).

Nothing here is imported by the entry scripts' start-up path except `autoscale.cli`, which
serve_gateway.py's --help needs and which stays light.
"""
