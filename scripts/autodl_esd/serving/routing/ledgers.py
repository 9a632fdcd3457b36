"""In-flight ledgers: who counts the requests in flight on each replica.

- `InflightLedger`: the local one (nothing shared), and the interface the replica table
  calls on the gateway's event loop: `request_started`, `request_finished`,
  `remote_inflight(uuid)` (what other gateways have in flight there).
- `RedisInflightLedger`: that interface in Redis, for several gateways
  (`serve_gateway.py --shared-inflight`); the event loop only touches memory, a thread
  talks to Redis.
- `SharedInflight`: the client pool's counts in Redis (`ServicePool.from_redis(...,
  shared_inflight=True)`): picks the least loaded candidate atomically, one round trip per
  lease and one per release.

Both Redis ledgers write the same keys (`redis_store.RedisKeys.inflight`: a sorted set of
leases per replica, scored by expiry on the server's clock), so pools and gateways see each
other's requests. A lease lives `lease_ttl` seconds after its last renewal; the live ones
are renewed every third of that, so a long stream keeps counting while a crashed client's
leases stop counting within `lease_ttl`.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import uuid as uuid_module
from typing import Any, Iterable, Optional

from ..registry.redis_store import (
    DEFAULT_KEY_PREFIX,
    RECONNECT_SECONDS,
    SOCKET_TIMEOUT_SECONDS,
    RedisKeys,
    connect,
    redis_errors,
)

# A live client renews its leases every third of this, so a long generation or stream keeps
# counting; a crashed client's leases stop counting within a minute.
DEFAULT_LEASE_TTL_SECONDS = 60.0
# The gateway's ledger refreshes other gateways' counts this often (and writes its own
# leases at once): a few round trips a second, while a burst of requests sees counts at
# most this old on top of its own exact ones.
LEDGER_REFRESH_SECONDS = 0.05

# Named for the import users write (`from service_pool import ...`): SharedInflight serves the pool.
log = logging.getLogger("service_pool")


class InflightLedger:
    """Local ledger: nothing is shared. A shared one (Redis) overrides the methods; they are
    called on the event loop, so they must not block (buffer writes, answer from a snapshot
    that a background task refreshes).

    Other gateways' counts come as a snapshot: `generation` changes whenever a new one is
    ready, and the replica table copies `remote_counts()` then, not per request."""

    generation = 0  # never changes here: nothing remote to copy

    def track(self, container_uuids: Iterable[str]) -> None:
        """The replicas in the registry now: the ones whose remote counts the table wants."""

    def request_started(self, container_uuid: str) -> None:
        pass

    def request_finished(self, container_uuid: str) -> None:
        pass

    def remote_counts(self) -> dict[str, int]:
        """In-flight requests other gateways have, per replica (absent: none known)."""
        return {}

    def remote_inflight(self, container_uuid: str) -> int:
        """In-flight requests other gateways have on this replica."""
        return self.remote_counts().get(container_uuid, 0)


# --- the lease sets in Redis ------------------------------------------------------------

# Server time (TIME), not the clients', dates the leases, so clients on machines with
# skewed clocks agree on what has expired. Every script starts with it (milliseconds).
_SERVER_NOW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
"""

# Picks the candidate with the fewest live leases and records a lease on it, in one round
# trip: ARGV = lease id, ttl ms; KEYS = the candidates' lease sets.
_LEASE_SCRIPT = _SERVER_NOW + """
local ttl = tonumber(ARGV[2])
local best, best_count = 1, nil
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count = redis.call('ZCARD', key)
  if best_count == nil or count < best_count then
    best, best_count = i, count
  end
end
redis.call('ZADD', KEYS[best], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[best], ttl)
return {best - 1, best_count}
"""

# Live leases per set (expired ones dropped first); KEYS = the replicas' lease sets.
_COUNT_SCRIPT = _SERVER_NOW + """
local counts = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  counts[i] = redis.call('ZCARD', key)
end
return counts
"""

# Records leases (or renews their expiry) without choosing: ARGV = ttl ms, then key index /
# lease id pairs; KEYS = the replicas' lease sets.
_RECORD_SCRIPT = _SERVER_NOW + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #ARGV
"""


def _ttl_ms(lease_ttl: float) -> int:
    return max(1, int(lease_ttl * 1000))


def _record(script: Any, keys: RedisKeys, leases: Iterable[tuple[str, str]], lease_ttl: float, client: Any = None) -> None:
    """Write or renew (container uuid, lease id) leases with one call of the record script."""
    leases = list(leases)
    uuids = sorted({uuid for uuid, _ in leases})
    index = {uuid: i + 1 for i, uuid in enumerate(uuids)}
    args: list[Any] = [_ttl_ms(lease_ttl)]
    for uuid, lease_id in leases:
        args += [index[uuid], lease_id]
    script(keys=[keys.inflight(uuid) for uuid in uuids], args=args, client=client)


# --- the client pool's counts ------------------------------------------------------------


class SharedInflight:
    """Per-replica in-flight counts shared by every pool of a deployment, in Redis.

    `acquire(candidates)` picks the least loaded of the candidates (across all clients) and
    records a lease on it: one round trip. `release` removes the lease: one round trip.
    Each lease expires `lease_ttl` seconds after it was last renewed; a thread renews this
    client's live leases every `lease_ttl / 3` (one round trip for all of them), so a long
    request keeps counting while a client killed mid-request leaks nothing for longer than
    `lease_ttl`.
    """

    def __init__(self, client: Any, keys: RedisKeys, lease_ttl: float = DEFAULT_LEASE_TTL_SECONDS) -> None:
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be > 0")
        self.client = client
        self.keys = keys
        self.lease_ttl = lease_ttl
        self._lease = client.register_script(_LEASE_SCRIPT)
        self._count = client.register_script(_COUNT_SCRIPT)
        self._record = client.register_script(_RECORD_SCRIPT)
        self._live: dict[str, str] = {}  # lease id -> container uuid, for renewal
        # Held while renewing, so a release never races a renewal that would bring it back.
        self._live_lock = threading.Lock()
        self._closed = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    def acquire(self, candidates: list[str]) -> tuple[int, str]:
        """(index of the chosen candidate, lease id)."""
        lease_id = uuid_module.uuid4().hex
        index, _ = self._lease(keys=[self.keys.inflight(c) for c in candidates], args=[lease_id, _ttl_ms(self.lease_ttl)])
        with self._live_lock:
            self._live[lease_id] = candidates[int(index)]
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_forever, name="shared-inflight-renewer", daemon=True)
                self._renewer.start()
        return int(index), lease_id

    def release(self, container_uuid: str, lease_id: str) -> None:
        with self._live_lock:
            self._live.pop(lease_id, None)
        self.client.zrem(self.keys.inflight(container_uuid), lease_id)

    def close(self) -> None:
        """Stop renewing (leases still out then expire after lease_ttl)."""
        self._closed.set()
        if self._renewer is not None:
            self._renewer.join(timeout=SOCKET_TIMEOUT_SECONDS)

    def _renew_forever(self) -> None:
        errors = redis_errors()
        while not self._closed.wait(self.lease_ttl / 3):
            with self._live_lock:
                live = [(uuid, lease_id) for lease_id, uuid in self._live.items()]
                if not live:
                    continue
                try:
                    _record(self._record, self.keys, live, self.lease_ttl)
                except errors as problem:  # tried again in lease_ttl / 3; meanwhile they may lapse
                    log.warning("could not renew shared in-flight leases: %s: %s", type(problem).__name__, problem)

    def counts(self, container_uuids: list[str]) -> dict[str, int]:
        """Live leases per replica, as every client sees them."""
        if not container_uuids:
            return {}
        values = self._count(keys=[self.keys.inflight(c) for c in container_uuids])
        return dict(zip(container_uuids, (int(v) for v in values)))


# --- the gateways' counts (serve_gateway.py --shared-inflight) --------------------------


class RedisInflightLedger(InflightLedger):
    """`InflightLedger` in Redis: in-flight counts shared by several gateways.

    The gateway's event loop must never wait on Redis, so its calls only touch memory: a
    started request queues a lease, a finished one queues its removal, and
    `remote_inflight` answers from a cache. A background thread writes the queue and reads
    every replica's count in one pipeline each LEDGER_REFRESH_SECONDS, and renews this
    gateway's live leases every third of `lease_ttl`, so a long stream keeps counting while
    a crashed gateway's leases expire within `lease_ttl`. Same keys as `SharedInflight`, so
    pools and gateways see each other's requests.
    """

    def __init__(self, url: str, deployment_uuid: str, key_prefix: str = DEFAULT_KEY_PREFIX,
                 lease_ttl: float = DEFAULT_LEASE_TTL_SECONDS, refresh: float = LEDGER_REFRESH_SECONDS) -> None:
        self.client = connect(url)
        self.keys = RedisKeys(deployment_uuid, key_prefix)
        self.lease_ttl = lease_ttl
        self.refresh = refresh
        self.last_error: Optional[str] = None
        self._record = self.client.register_script(_RECORD_SCRIPT)
        self._count = self.client.register_script(_COUNT_SCRIPT)
        self._pending: Any = queue.SimpleQueue()  # ("start" | "finish", uuid)
        self._own: dict[str, Any] = collections.defaultdict(collections.deque)  # uuid -> our live lease ids (written)
        self._remote: dict[str, int] = {}  # replaced whole by the thread, then generation moves
        self.generation = 0
        self._known: set[str] = set()
        self._known_lock = threading.Lock()  # the loop adds, the thread copies; held for microseconds
        self._closed = threading.Event()
        self._renewed_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="redis-inflight-ledger", daemon=True)
        self._thread.start()

    # Called on the event loop: memory only.
    def track(self, container_uuids: Iterable[str]) -> None:
        with self._known_lock:
            self._known.update(container_uuids)

    def request_started(self, container_uuid: str) -> None:
        self._pending.put(("start", container_uuid))

    def request_finished(self, container_uuid: str) -> None:
        self._pending.put(("finish", container_uuid))

    def remote_counts(self) -> dict[str, int]:
        return self._remote

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=SOCKET_TIMEOUT_SECONDS)
        try:  # our leases end with us; leaving them would count against the replicas for lease_ttl
            pipe = self.client.pipeline(transaction=False)
            for uuid, leases in self._own.items():
                if leases:
                    pipe.zrem(self.keys.inflight(uuid), *leases)
            pipe.execute()
        except redis_errors():
            pass
        self.client.close()

    # The background thread.
    def _run(self) -> None:
        errors = redis_errors()
        while not self._closed.is_set():
            try:
                self._pending_item = self._pending.get(timeout=self.refresh)
            except queue.Empty:
                self._pending_item = None
            try:
                self._flush()
                self.last_error = None
            except errors as problem:  # counts go stale (local ones still work); retried next round
                self.last_error = f"Redis: {type(problem).__name__}: {problem}"
                self._closed.wait(RECONNECT_SECONDS)
            except Exception as problem:  # a bug must not silently stop the sharing: say it, keep going
                self.last_error = f"{type(problem).__name__}: {problem}"
                log.warning("shared in-flight ledger: %s", self.last_error)
                self._closed.wait(RECONNECT_SECONDS)

    def _flush(self) -> None:
        items = [self._pending_item] if self._pending_item else []
        self._pending_item = None
        while True:
            try:
                items.append(self._pending.get_nowait())
            except queue.Empty:
                break
        started: list[tuple[str, str]] = []
        finished: list[tuple[str, str]] = []
        with self._known_lock:
            self._known.update(uuid for _, uuid in items)
            known = sorted(self._known)
        for kind, uuid in items:
            if kind == "start":
                started.append((uuid, uuid_module.uuid4().hex))
            else:
                pending_start = next((i for i, (u, _) in enumerate(started) if u == uuid), None)
                if pending_start is not None:  # started and finished within one round: never written
                    started.pop(pending_start)
                elif self._own[uuid]:
                    finished.append((uuid, self._own[uuid].popleft()))
        renew = time.monotonic() - self._renewed_at >= self.lease_ttl / 3
        writes = [(u, lease) for u, leases in self._own.items() for lease in leases] if renew else []
        writes += started
        pipe = self.client.pipeline(transaction=False)
        if writes:
            _record(self._record, self.keys, writes, self.lease_ttl, client=pipe)
        for u, lease in finished:
            pipe.zrem(self.keys.inflight(u), lease)
        if known:
            self._count(keys=[self.keys.inflight(u) for u in known], client=pipe)
        results = pipe.execute() if (writes or finished or known) else []
        if renew:
            self._renewed_at = time.monotonic()
        for u, lease in started:
            self._own[u].append(lease)
        if known:
            # Every live lease minus the ones this gateway wrote: what the others have in flight.
            counts = results[-1]
            self._remote = {u: max(0, int(c) - len(self._own[u])) for u, c in zip(known, counts)}
            self.generation += 1
