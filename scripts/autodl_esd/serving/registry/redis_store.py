"""The registry in Redis, for a service called from more than one machine: its storage.

Keys of one deployment D under a prefix P (all in one Redis Cluster hash slot, `{P:D}`):

- `{P:D}:registry`   the registry document (schemas/registry.schema.json) as JSON, replaced
                     with one SET, so a reader gets the old set or the new one, never half.
- `{P:D}:changes`    pub/sub channel: the new document, published whenever the set of
                     replicas (or their health, or the stale flag) changes.
- `{P:D}:heartbeat`  the active watcher's name and time, with a TTL. A registry without a
                     heartbeat comes from a dead watcher: readers mark it stale, never empty it.
- `{P:D}:watcher`    the lock that makes one watcher of many poll the AutoDL API.
- `{P:D}:inflight:<container_uuid>`  the leases on that replica (sorted set, score = expiry;
                     written by `routing.ledgers`).

Here: the keys, the connection, the lock (`WatcherLock`), writing (`RegistryPublisher`),
reading (`read_registry`) and following by notification (`RegistrySubscription`). The
watcher that keeps it current is `registry.redis_watcher`; who follows it, `routing.sources`.
Everything talks to Redis through the `redis` package (never by hand), imported when first
used, so nothing on a --help path needs it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from ...core.deps import require
from ...core.output import register_secret
from .document import mark_stale, membership

DEFAULT_KEY_PREFIX = "autodl-esd"
# A Redis on the LAN answers in well under a millisecond; 5 s separates a slow one from a
# dead one without letting a blackholed connection stall a watcher cycle for long.
SOCKET_TIMEOUT_SECONDS = 5.0
# The Redis password for URLs written without one.
PASSWORD_ENV = "AUTODL_REDIS_PASSWORD"
# A reader that lost Redis retries this often: quick to recover, yet a dead Redis costs one
# connection attempt per second per reader, not a busy loop.
RECONNECT_SECONDS = 1.0
# The reader checks the heartbeat this often between notifications (the watcher refreshes it
# every cycle); a dead watcher is noticed within this much after its heartbeat expires.
HEARTBEAT_CHECK_SECONDS = 1.0

STALE_HEARTBEAT_REASON = "注册表的 watcher 心跳已过期 (没有 watcher 在更新它): 这是最后一次的注册表, 副本可能已变化"


# An ended registry (deployment_stopped / deployment_gone) is kept this long, then Redis drops
# it: long enough for standbys, gateways and HAProxy syncs that were down a while to read the
# ended state and end too, short enough that a shared Redis does not collect one per deployment.
# (The heartbeat needs nothing extra: it always lapses one lock TTL after its last write.)
ENDED_REGISTRY_TTL_SECONDS = 3600


def connect(url: str) -> Any:
    """A Redis client for redis://, rediss:// or unix:// URLs (answers as str). A URL without
    a password takes the one in PASSWORD_ENV, if set: a command line (a detached job's record,
    `ps`) then never holds it."""
    redis = require("redis")
    password = None if urlsplit(url).password is not None else os.environ.get(PASSWORD_ENV) or None
    register_secret(password)
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_SECONDS,
                                socket_connect_timeout=SOCKET_TIMEOUT_SECONDS, health_check_interval=30,
                                **({"password": password} if password else {}))


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when the server is unreachable, slow or refuses."""
    redis = require("redis")
    return (redis.RedisError, OSError)


def describe_url(url: str) -> str:
    """The URL without a password (for output and logs)."""
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
