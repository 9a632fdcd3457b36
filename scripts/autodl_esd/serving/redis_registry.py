"""The registry and the load counts in Redis, for a service called from more than one machine.

Keys of one deployment D under a prefix P (all in one Redis Cluster hash slot, `{P:D}`):

- `{P:D}:registry`   the registry document (schemas/registry.schema.json) as JSON, replaced
                     with one SET, so a reader gets the old set or the new one, never half.
- `{P:D}:changes`    pub/sub channel: the new document, published whenever the set of
                     replicas (or their health, or the stale flag) changes.
- `{P:D}:heartbeat`  the active watcher's name and time, with a TTL. A registry without a
                     heartbeat comes from a dead watcher: readers mark it stale, never empty it.
- `{P:D}:watcher`    the lock that makes one watcher of many poll the AutoDL API.
- `{P:D}:inflight:<container_uuid>`  the leases on that replica (sorted set, score = expiry).

Everything here talks to Redis through the `redis` package (never by hand); it is imported
lazily, so nothing on a --help path needs it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid as uuid_module
from typing import Any, Callable, Optional

from ..core.deps import require

DEFAULT_KEY_PREFIX = "autodl-esd"
# A Redis on the LAN answers in well under a millisecond; 5 s separates a slow one from a
# dead one without letting a blackholed connection stall a watcher cycle for long.
SOCKET_TIMEOUT_SECONDS = 5.0
# A live client renews its leases every third of this, so a long generation or stream keeps
# counting; a crashed client's leases stop counting within a minute.
DEFAULT_LEASE_TTL_SECONDS = 60.0
# A reader that lost Redis retries this often: quick to recover, yet a dead Redis costs one
# connection attempt per second per reader, not a busy loop.
RECONNECT_SECONDS = 1.0
# The reader checks the heartbeat this often between notifications (the watcher refreshes it
# every cycle); a dead watcher is noticed within this much after its heartbeat expires.
HEARTBEAT_CHECK_SECONDS = 1.0

log = logging.getLogger("service_pool")

STALE_HEARTBEAT_REASON = "注册表的 watcher 心跳已过期 (没有 watcher 在更新它): 这是最后一次的注册表, 副本可能已变化"


# An ended registry (deployment_stopped / deployment_gone) is kept this long, then Redis drops
# it: long enough for standbys, gateways and HAProxy syncs that were down a while to read the
# ended state and end too, short enough that a shared Redis does not collect one per deployment.
# (The heartbeat needs nothing extra: it always lapses one lock TTL after its last write.)
ENDED_REGISTRY_TTL_SECONDS = 3600


def connect(url: str) -> Any:
    """A Redis client for redis://, rediss:// or unix:// URLs (answers as str)."""
    redis = require("redis")
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_SECONDS,
                                socket_connect_timeout=SOCKET_TIMEOUT_SECONDS, health_check_interval=30)


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when the server is unreachable, slow or refuses."""
    redis = require("redis")
    return (redis.RedisError, OSError)


def describe_url(url: str) -> str:
    """The URL without a password (for output and logs)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


class RedisKeys:
    """The key names of one deployment (see the module docstring)."""

    def __init__(self, deployment_uuid: str, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        if not prefix or any(ch in prefix for ch in "{} \n"):
            raise ValueError(f"key prefix must be non-empty without braces or spaces: {prefix!r}")
        base = f"{{{prefix}:{deployment_uuid}}}"
        self.registry = f"{base}:registry"
        self.channel = f"{base}:changes"
        self.heartbeat = f"{base}:heartbeat"
        self.lock = f"{base}:watcher"
        self._inflight = f"{base}:inflight:"

    def inflight(self, container_uuid: str) -> str:
        return self._inflight + container_uuid


def watcher_name() -> str:
    """Who holds the lock / writes the heartbeat: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid_module.uuid4().hex[:8]}"


def membership(document: dict[str, Any]) -> Any:
    """What readers act on: the replicas, the stale flag and the end (not the timestamps)."""
    return (json.dumps(document.get("services"), sort_keys=True, allow_nan=False), bool(document.get("stale")), document.get("stale_reason"),
            document.get("ended"))


class LostLock(RuntimeError):
    """Another watcher holds the lock now: this one must not publish."""


# --- the one active watcher -------------------------------------------------------------


class WatcherLock:
    """A Redis lock with a TTL: held while renewed, free for another once it lapses.

    redis-py's Lock keeps a random token in the key and renews/releases with server-side
    scripts that check it, so a watcher never extends or frees a lock someone else took.
    """

    def __init__(self, client: Any, keys: RedisKeys, ttl: float) -> None:
        self.client = client
        self.name = keys.lock
        self.ttl = ttl
        self._lock = client.lock(keys.lock, timeout=ttl, blocking=False, thread_local=False)

    @property
    def token(self) -> Optional[str]:
        token = self._lock.local.token
        return token.decode() if isinstance(token, bytes) else token

    def try_acquire(self) -> bool:
        return bool(self._lock.acquire(blocking=False))

    def renew(self) -> bool:
        """Reset the TTL; False when the lock lapsed and is (or was) taken by another."""
        redis = require("redis")
        if self.token is None:
            return False
        try:
            self._lock.reacquire()
            return True
        except redis.exceptions.LockError:
            self._lock.local.token = None
            return False

    def release(self) -> None:
        redis = require("redis")
        if self.token is None:
            return
        try:
            self._lock.release()
        except redis.exceptions.LockError:
            pass  # lapsed already: nothing of ours to free
        self._lock.local.token = None

    def holder(self) -> Optional[str]:
        return self.client.get(self.name)


# --- writing the registry ---------------------------------------------------------------


class RegistryPublisher:
    """Writes each registry the watcher builds to Redis (a `WatchOptions.sinks` entry).

    One transaction sets the document and the heartbeat and, when the replica set changed,
    publishes it. With a `lock`, the transaction WATCHes the lock key and first checks that
    this watcher still holds it, so a watcher that lost the lock mid-cycle cannot overwrite
    what the new active one wrote.
    """

    def __init__(self, client: Any, keys: RedisKeys, heartbeat_ttl: float, name: str, lock: WatcherLock | None = None) -> None:
        self.client = client
        self.keys = keys
        self.heartbeat_ttl = heartbeat_ttl
        self.name = name
        self.lock = lock
        self.published = 0
        self.notifications = 0
        self.last_error: Optional[str] = None
        self._last_membership: Any = None

    def __call__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document, ensure_ascii=False, allow_nan=False)
        heartbeat = json.dumps({"watcher": self.name, "at": document.get("generated_at"), "ttl_seconds": self.heartbeat_ttl}, allow_nan=False)
        changed = membership(document) != self._last_membership
        ttl_ms = max(1, int(self.heartbeat_ttl * 1000))

        def write(pipe: Any) -> None:
            if self.lock is not None and pipe.get(self.lock.name) != self.lock.token:
                raise LostLock(f"lock {self.lock.name} is held by {pipe.get(self.lock.name)!r}")
            pipe.multi()
            # Live: no TTL (a dead watcher's last registry stays, marked stale by readers).
            pipe.set(self.keys.registry, body, ex=ENDED_REGISTRY_TTL_SECONDS if document.get("ended") else None)
            pipe.set(self.keys.heartbeat, heartbeat, px=ttl_ms)
            if changed:
                pipe.publish(self.keys.channel, body)

        watched = [self.lock.name] if self.lock is not None else []
        self.client.transaction(write, *watched)
        self.published += 1
        if changed:
            self.notifications += 1
        self._last_membership = membership(document)

    def forget(self) -> None:
        """The next document is announced even if unchanged (after a takeover)."""
        self._last_membership = None


def read_registry(client: Any, keys: RedisKeys) -> Optional[dict[str, Any]]:
    """The registry in Redis, marked stale when no watcher heartbeat is alive; None if absent."""
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.registry)
    pipe.exists(keys.heartbeat)
    body, alive = pipe.execute()
    if body is None:
        return None
    document = json.loads(body)
    # An ended registry is final: its watcher stopped on purpose, its heartbeat lapses.
    return document if alive or document.get("ended") else mark_stale(document, STALE_HEARTBEAT_REASON)


def mark_stale(document: dict[str, Any], reason: str) -> dict[str, Any]:
    if document.get("stale"):
        return document
    return {**document, "stale": True, "stale_reason": reason}


# --- following the registry (readers) ---------------------------------------------------


class RegistrySubscription:
    """Keeps a consumer (e.g. `ServicePool.update`) current from Redis, by notification.

    A background thread subscribes to the change channel first and then reads the key, so
    no change falls between the two; every notification is applied as it arrives. Between
    notifications it checks the heartbeat; a lapsed one marks the last registry stale (the
    replicas stay). A lost connection is retried every RECONNECT_SECONDS, keeping the last
    good set meanwhile.
    """

    def __init__(self, client: Any, keys: RedisKeys, consumer: Callable[[dict[str, Any]], None],
                 on_error: Callable[[Optional[str]], None] | None = None,
                 heartbeat_check_seconds: float = HEARTBEAT_CHECK_SECONDS) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.on_error = on_error or (lambda message: None)
        self.heartbeat_check_seconds = heartbeat_check_seconds
        self.notifications = 0
        self.document: Optional[dict[str, Any]] = None
        self._closed = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="registry-subscription", daemon=True)

    def start(self, wait: float = SOCKET_TIMEOUT_SECONDS) -> "RegistrySubscription":
        """Start following; wait up to `wait` s for the first read (so a pool can lease at once)."""
        self._thread.start()
        self._ready.wait(wait)
        return self

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=SOCKET_TIMEOUT_SECONDS)

    def _apply(self, document: dict[str, Any]) -> None:
        self.document = document
        self.consumer(document)

    def _follow(self) -> None:
        errors = redis_errors()
        while not self._closed.is_set():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.keys.channel)
                # Read the key only once the server confirmed the subscription: a change
                # published in between is then either in what we read or in a notification.
                confirmed = None
                while confirmed is None or confirmed.get("type") != "subscribe":
                    confirmed = pubsub.get_message(timeout=SOCKET_TIMEOUT_SECONDS)
                    if confirmed is None:
                        raise TimeoutError("no SUBSCRIBE confirmation from Redis")
                self._check_heartbeat(initial=True)
                self.on_error(None)
                self._ready.set()
                next_check = time.monotonic() + self.heartbeat_check_seconds
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=min(self.heartbeat_check_seconds, 0.5))
                    if message and message.get("type") == "message":
                        self.notifications += 1
                        self._apply(json.loads(message["data"]))  # a notification: the watcher is alive
                        next_check = time.monotonic() + self.heartbeat_check_seconds
                    elif time.monotonic() >= next_check:
                        self._check_heartbeat()
                        next_check = time.monotonic() + self.heartbeat_check_seconds
            except errors as problem:
                if self._closed.is_set():
                    break
                self.on_error(f"Redis: {type(problem).__name__}: {problem}")
                self._ready.set()  # the caller gets an empty pool with last_refresh_error, not a hang
                self._closed.wait(RECONNECT_SECONDS)
            except ValueError as problem:  # a non-JSON message on our channel: skip it, keep following
                if self._closed.is_set():
                    break
                self.on_error(f"bad registry in Redis: {problem}")
            finally:
                try:
                    pubsub.close()
                except errors:
                    pass

    def _check_heartbeat(self, initial: bool = False) -> None:
        # Between notifications only the heartbeat is looked at (one EXISTS); the document
        # is read again when the watcher died or came back, or at (re)subscription.
        alive = bool(self.client.exists(self.keys.heartbeat))
        if not initial and self.document is not None and alive != bool(self.document.get("stale_reason") == STALE_HEARTBEAT_REASON):
            return
        document = read_registry(self.client, self.keys)
        if document is None:
            return  # no watcher ever wrote this deployment: nothing to follow yet
        if initial or self.document is None or membership(document) != membership(self.document):
            self._apply(document)


# --- shared in-flight counts ------------------------------------------------------------

# Picks the candidate with the fewest live leases and records a lease on it, in one round
# trip. Server time (TIME), not the clients', dates the leases, so clients on machines with
# skewed clocks agree on what has expired.
_LEASE_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
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

_COUNT_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local counts = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  counts[i] = redis.call('ZCARD', key)
end
return counts
"""


# Records leases (or renews their expiry) without choosing: ARGV = ttl ms, then key index /
# lease id pairs; KEYS = the replicas' lease sets.
_RECORD_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #ARGV
"""


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
        index, _ = self._lease(keys=[self.keys.inflight(c) for c in candidates],
                               args=[lease_id, max(1, int(self.lease_ttl * 1000))])
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
                live = list(self._live.items())
                if not live:
                    continue
                uuids = sorted({uuid for _, uuid in live})
                index = {uuid: i + 1 for i, uuid in enumerate(uuids)}
                args: list[Any] = [max(1, int(self.lease_ttl * 1000))]
                for lease_id, uuid in live:
                    args += [index[uuid], lease_id]
                try:
                    self._record(keys=[self.keys.inflight(u) for u in uuids], args=args)
                except errors as problem:  # tried again in lease_ttl / 3; meanwhile they may lapse
                    log.warning("could not renew shared in-flight leases: %s: %s", type(problem).__name__, problem)

    def counts(self, container_uuids: list[str]) -> dict[str, int]:
        """Live leases per replica, as every client sees them."""
        if not container_uuids:
            return {}
        values = self._count(keys=[self.keys.inflight(c) for c in container_uuids])
        return dict(zip(container_uuids, (int(v) for v in values)))


# --- ServicePool.from_redis -------------------------------------------------------------


def pool_from_redis(pool_class: Any, url: str, deployment_uuid: str, key_prefix: str = DEFAULT_KEY_PREFIX,
                    shared_inflight: bool = False, lease_ttl: float = DEFAULT_LEASE_TTL_SECONDS, **kwargs: Any) -> Any:
    """A ServicePool following the Redis registry by notification (see ServicePool.from_redis)."""
    client = connect(url)
    keys = RedisKeys(deployment_uuid, key_prefix)
    shared = SharedInflight(client, keys, lease_ttl) if shared_inflight else None
    if shared is not None:
        kwargs["shared_inflight"] = shared
    pool = pool_class(**kwargs)

    def consume(document: dict[str, Any]) -> None:
        try:
            pool.update(document)
        except ValueError as problem:
            pool.last_refresh_error = f"ValueError: {problem}"

    def report(message: Optional[str]) -> None:
        pool.source_failed(message, "service registry in Redis unavailable")

    subscription = RegistrySubscription(client, keys, consume, report).start()
    pool.subscription = subscription
    pool.add_closer(client.close)  # closers run last-added first: stop following, then disconnect
    if shared is not None:
        pool.add_closer(shared.close)
    pool.add_closer(subscription.close)
    return pool


# --- discover_services --watch --redis --------------------------------------------------


class RedisWatch:
    """Runs a RegistryWatcher while this process holds the watcher lock; stands by otherwise.

    Active: each cycle polls AutoDL (through the watcher), renews the lock and publishes the
    registry to Redis (fenced by the lock) and to the local sinks (--out, --haproxy-socket).
    Standby: tries the lock each interval and meanwhile feeds the local sinks from the
    registry in Redis, so every machine's HAProxy follows while only one polls the API.
    A lapsed lock (the active one died or hung) is taken over on the next try.
    """

    def __init__(self, watcher: Any, client: Any, keys: RedisKeys, lock_ttl: float, local_sinks: list[Callable[[dict], None]],
                 progress: Any) -> None:
        self.watcher = watcher
        self.client = client
        self.keys = keys
        self.name = watcher_name()
        self.lock = WatcherLock(client, keys, lock_ttl)
        self.publisher = RegistryPublisher(client, keys, lock_ttl, self.name, self.lock)
        self.local_sinks = local_sinks
        self.progress = progress
        self.active = False
        self.rounds = self.active_cycles = self.standby_rounds = self.takeovers = self.lost = 0
        self.redis_error: Optional[str] = None
        self._followed: Any = None
        self._standby_said: Any = None  # the holder last named in a standby line (said once per holder)
        self._standby_since: Optional[float] = None
        watcher.options.sinks = [self._guard("Redis", self._publish)] + [self._guard("HAProxy/输出", sink) for sink in local_sinks]

    def _guard(self, what: str, sink: Callable[[dict], None]) -> Callable[[dict], None]:
        def guarded(document: dict) -> None:
            try:
                sink(document)
            except LostLock:
                raise
            except Exception as problem:  # a sink's outage must not stop the watcher
                self._note_error(f"{what}: {type(problem).__name__}: {problem}")
        return guarded

    def _publish(self, document: dict) -> None:
        try:
            self.publisher(document)
            self._note_error(None)
        except LostLock:
            self._step_down("发布时发现锁已被另一个 watcher 持有")

    def _note_error(self, message: Optional[str]) -> None:
        if message and message != self.redis_error:
            self.progress.log(f"写入失败 (继续运行): {message}")
        self.redis_error = message

    def _step_down(self, why: str) -> None:
        if self.active:
            self.lost += 1
            self.progress.log(f"不再是活动 watcher ({why}), 转为备用: 改为跟随 Redis 中的注册表")
        self.active = False
        self.watcher.forget_position()

    def _hold_or_try(self) -> None:
        errors = redis_errors()
        try:
            if self.active:
                if not self.lock.renew():
                    self._step_down("锁已过期")
            if not self.active and self.lock.try_acquire():
                self.active = True
                self.takeovers += 1
                self.watcher.forget_position()
                self.publisher.forget()
                self.progress.log(f"成为活动 watcher (锁 {self.keys.lock}, TTL {self.lock.ttl:g}s): 由本进程轮询 AutoDL"
                                  + self._takeover_note())
                self._standby_said, self._standby_since = None, None
            elif not self.active:
                self._say_standby()
            self._note_error(None)
        except errors as problem:
            # Redis unreachable: an active watcher keeps polling (its local sinks still need
            # the truth); a standby keeps standing by. Either way exactly one polls.
            self._note_error(f"Redis: {type(problem).__name__}: {problem}")

    def _active_holder(self) -> tuple[Optional[str], Optional[float]]:
        """Who is the active watcher (its heartbeat's name; the lock itself holds a random
        token) and in how many seconds its lock lapses unless renewed."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.heartbeat)
        pipe.pttl(self.keys.lock)
        body, pttl = pipe.execute()
        try:
            name = json.loads(body).get("watcher") if body else None
        except (ValueError, AttributeError):
            name = None
        return name, (round(pttl / 1000, 1) if isinstance(pttl, int) and pttl >= 0 else None)

    def _say_standby(self) -> None:
        """One line when this watcher is (or becomes) a standby, and again if the holder changes."""
        name, remaining = self._active_holder()
        if self._standby_since is None:
            self._standby_since = time.monotonic()
        # Said already for this holder, or its heartbeat just lapsed (a dying holder, not a new one).
        if self._standby_said is not None and ((name or "") == self._standby_said or name is None):
            return
        self._standby_said = name or ""
        holder = f"由 {name} 持有" if name else "已被另一个 watcher 持有 (它还没写心跳)"
        lapse = f", {remaining:g}s 后过期 (持有者每轮续期)" if remaining is not None else ""
        self.progress.log(f"本进程是备用 watcher ({self.name}): 锁 {self.keys.lock} {holder}{lapse}; "
                          f"不轮询 AutoDL, 跟随 Redis 中的注册表; 锁释放或过期 (TTL {self.lock.ttl:g}s) 后自动接管")

    def _takeover_note(self) -> str:
        if self._standby_since is None:
            return ""
        waited = time.monotonic() - self._standby_since
        before = f" {self._standby_said}" if self._standby_said else ""
        return f"; 接管: 之前的活动 watcher{before} 的锁已释放或过期, 本进程备用了 {waited:.1f}s"

    def _follow(self) -> None:
        try:
            document = read_registry(self.client, self.keys)
        except redis_errors() as problem:
            self._note_error(f"Redis: {type(problem).__name__}: {problem}")
            return
        except ValueError as problem:
            self._note_error(f"Redis 中的注册表不是 JSON: {problem}")
            return
        if document is None:
            return
        self.watcher.document = document  # what --serve answers on a standby
        if document.get("ended") and not self.watcher.ended:
            self.watcher.ended, self.watcher.ended_reason = document["ended"], document.get("ended_reason")
            self.progress.log(f"活动 watcher 已确认部署结束, 本 watcher 也结束: {document.get('ended_reason')}")
            self._followed = None  # feed the sinks the empty registry below
        if membership(document) != self._followed:
            self._followed = membership(document)
            for sink in self.watcher.options.sinks[1:]:
                sink(document)

    def run(self) -> str:
        import time as time_module

        from ..core.errors import Interrupted

        options = self.watcher.options
        started = time_module.monotonic()
        try:
            while True:
                self.rounds += 1
                if not self.active:
                    # Follow first: an ended registry (the active watcher's word) ends this
                    # watcher too, before it could take the released lock and start polling.
                    self._follow()
                    if self.watcher.ended:
                        return self.watcher.ended
                self._hold_or_try()
                if self.active:
                    self.active_cycles += 1
                    self.watcher.cycle()
                    if self.watcher.ended:
                        return self.watcher.ended
                else:
                    self.standby_rounds += 1
                self.watcher.first_round_done()
                if options.max_cycles and self.rounds >= options.max_cycles:
                    return "max_cycles"
                wait = options.interval
                if options.duration:
                    remaining = options.duration - (time_module.monotonic() - started)
                    if remaining <= 0:
                        return "duration"
                    wait = min(wait, remaining)
                if self.watcher.stop_event.wait(wait):
                    return "stopped"
        except (Interrupted, KeyboardInterrupt) as interruption:
            return getattr(interruption, "signal_name", "SIGINT")
        finally:
            try:
                self.lock.release()  # a standby takes over on its next try, not after the TTL
            except redis_errors():
                pass

    def summary(self, url: str, prefix: str) -> dict[str, Any]:
        return {
            "url": describe_url(url), "key_prefix": prefix, "registry_key": self.keys.registry, "channel": self.keys.channel,
            "watcher": self.name, "role": "active" if self.active else "standby", "lock_ttl_seconds": self.lock.ttl,
            "active_cycles": self.active_cycles, "standby_rounds": self.standby_rounds, "takeovers": self.takeovers,
            "lost_lock": self.lost, "published": self.publisher.published, "notifications": self.publisher.notifications,
            **({"last_error": self.redis_error} if self.redis_error else {}),
        }


# --- serve_gateway.py --registry-redis -------------------------------------------------


def redis_source(url: str, deployment_uuid: str, key_prefix: str = DEFAULT_KEY_PREFIX) -> Any:
    """A gateway replica source following the Redis registry by notification."""
    from .sources import ReplicaSource, view_from_document

    class RedisSource(ReplicaSource):
        """The registry discover_services.py --watch --redis keeps, applied as each change arrives.

        Staleness comes from the registry itself and from the watcher's heartbeat (a lapsed
        one marks it stale), not from the age of the last notification: a quiet deployment
        sends none, and that is not a fault.
        """

        stale_after = float("inf")

        def __init__(self) -> None:
            self.client = connect(url)
            self.keys = RedisKeys(deployment_uuid, key_prefix)
            self.description = f"Redis {describe_url(url)} {self.keys.registry}"
            self._view: Any = None
            self._error: Optional[str] = None
            self._subscription = RegistrySubscription(self.client, self.keys, self._consume, self._report)

        def _consume(self, document: dict[str, Any]) -> None:
            try:
                self._view = view_from_document(document, time.monotonic())
            except ValueError as problem:
                self._error = f"ValueError: {problem}"

        def _report(self, message: Optional[str]) -> None:
            self._error = message

        def start(self) -> None:
            self._subscription.start()

        def wait_first(self, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while self._view is None and time.monotonic() < deadline:
                time.sleep(0.02)
            return self._view is not None

        def stop(self) -> None:
            self._subscription.close()
            self.client.close()

        def current(self) -> Any:
            return self._view

        def last_error(self) -> Optional[str]:
            return self._error

    return RedisSource()


# --- serve_gateway.py --shared-inflight ------------------------------------------------

# The gateway's ledger refreshes other gateways' counts this often (and writes its own
# leases at once): a few round trips a second, while a burst of requests sees counts at
# most this old on top of its own exact ones.
LEDGER_REFRESH_SECONDS = 0.05


class RedisInflightLedger:
    """`replicas.InflightLedger` in Redis: in-flight counts shared by several gateways.

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
        import collections
        import queue

        self.client = connect(url)
        self.keys = RedisKeys(deployment_uuid, key_prefix)
        self.lease_ttl = lease_ttl
        self.refresh = refresh
        self.last_error: Optional[str] = None
        self._record = self.client.register_script(_RECORD_SCRIPT)
        self._count = self.client.register_script(_COUNT_SCRIPT)
        self._pending: Any = queue.SimpleQueue()  # ("start" | "finish", uuid)
        self._own: dict[str, Any] = collections.defaultdict(collections.deque)  # uuid -> our live lease ids (written)
        self._totals: dict[str, int] = {}
        self._own_written: dict[str, int] = {}
        self._known: set[str] = set()
        self._known_lock = threading.Lock()  # the loop adds, the thread copies; held for microseconds
        self._closed = threading.Event()
        self._renewed_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="redis-inflight-ledger", daemon=True)
        self._thread.start()

    # Called on the event loop: memory only.
    def request_started(self, container_uuid: str) -> None:
        self._pending.put(("start", container_uuid))

    def request_finished(self, container_uuid: str) -> None:
        self._pending.put(("finish", container_uuid))

    def remote_inflight(self, container_uuid: str) -> int:
        if container_uuid not in self._known:
            with self._known_lock:
                self._known.add(container_uuid)
        return max(0, self._totals.get(container_uuid, 0) - self._own_written.get(container_uuid, 0))

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
        import queue

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
        import queue

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
            index = {u: i + 1 for i, u in enumerate(sorted({u for u, _ in writes}))}
            args: list[Any] = [max(1, int(self.lease_ttl * 1000))]
            for u, lease in writes:
                args += [index[u], lease]
            self._record(keys=[self.keys.inflight(u) for u in sorted(index)], args=args, client=pipe)
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
            counts = results[-1]
            self._own_written = {u: len(self._own[u]) for u in known}
            self._totals = dict(zip(known, (int(c) for c in counts)))
