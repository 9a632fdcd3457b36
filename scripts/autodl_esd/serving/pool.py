"""Client-side load balancing across the replicas of an AutoDL deployment.

AutoDL gives every ReplicaSet container its own service URL and no load
balancer: containers come and go, and nginx-style policies cannot steer GPU
load (few replicas, long heavy requests). This module picks a replica per
request from the registry that ``discover_services.py`` keeps, using the
least in-flight policy with power-of-two choices by default.

Standard library only. Put the bundle's ``scripts/`` directory on ``sys.path`` and
import ``service_pool`` (a thin alias of this module), or copy this one file next to
your code.

Usage::

    import urllib.request
    from service_pool import ServicePool, NoReplicaAvailable

    pool = ServicePool.from_file("registry.json")      # or from_endpoint("http://127.0.0.1:8765")

    with pool.lease() as svc:                          # svc.container_uuid, .url, .machine_id, .gpu_name
        body = urllib.request.urlopen(svc.url + "/predict", data=b"...", timeout=60).read()
    # An exception escaping the block marks the replica failed: it is ejected
    # for ``eject_seconds`` and the exception propagates unchanged.

    def predict(svc):
        return urllib.request.urlopen(svc.url + "/predict", data=b"...", timeout=60).read()

    body = pool.call(predict, retries=1)               # a failure is retried once on a DIFFERENT replica
    print(pool.stats())                                # per replica: inflight, completed, failed, ...

Sources:

* ``ServicePool.from_file(path)``: re-reads the registry file when it changes
  (inode, mtime or size), checking at most every ``refresh_interval`` seconds.
* ``ServicePool.from_endpoint(url)``: ``GET <url>/services`` on the
  ``discover_services.py`` endpoint, at most every ``refresh_interval`` seconds.
* ``ServicePool.from_services(items)``: a fixed list of registry items; push
  later changes with ``pool.update(items_or_registry)``.
* ``ServicePool.from_redis(url, deployment_uuid)``: the registry that
  ``discover_services.py --watch --redis URL`` keeps in Redis, followed by
  pub/sub notification (each change applied as it arrives). With
  ``shared_inflight=True`` the in-flight counts live in Redis too, and
  ``least_inflight`` takes the replica with the fewest requests in flight from
  ALL clients (chosen atomically in Redis), at one Redis round trip per lease
  and one per release. Needs the ``redis`` package
  and this module inside the bundle (``scripts/`` on ``sys.path``); call
  ``pool.close()`` when done.
* ``ServicePool(source=fn)``: any callable returning a registry dict (see
  ``schemas/registry.schema.json``) or a bare list of items, or ``None`` for
  "unchanged". Use it for your own discovery.

A refresh that fails (file briefly missing, endpoint down, bad JSON) keeps the
last good set of replicas; ``pool.last_refresh_error`` says what went wrong.
Replicas are identified by ``container_uuid``, never by URL. Only replicas
whose ``healthy`` is true, null (not probed) or missing are picked. If every healthy replica is
ejected, the one ejected longest ago is used rather than failing; an empty
registry raises ``NoReplicaAvailable``. All methods are thread-safe.

This file is also where the rest of the bundle reads a registry: ``parse_registry`` is the
one parser of a registry document, ``RegistryFileReader`` / ``RegistryUrlReader`` the one
file and endpoint reader (the gateway's replica sources wrap them). They live here because
this file must stand alone: it imports nothing from the bundle.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, TypeVar

__all__ = ["ServicePool", "Service", "Lease", "NoReplicaAvailable", "POLICIES"]

# Named for the import users write (`from service_pool import ...`), not this module path.
log = logging.getLogger("service_pool")

POLICIES = ("least_inflight", "round_robin", "random")

# Long enough to stop sending work to a crashed container until the watcher
# (which polls every few seconds) drops it from the registry; short enough
# that a replica hit by a one-off error is back within half a minute.
DEFAULT_EJECT_SECONDS = 30.0
# The watcher rewrites the registry about once a second at most; a 2 s old view
# costs at most one failed (then retried) request per departed container.
DEFAULT_REFRESH_INTERVAL = 2.0
# The endpoint is on loopback and answers in milliseconds; a hung endpoint must
# not stall the request that happens to trigger the refresh for long.
DEFAULT_ENDPOINT_TIMEOUT = 2.0
# A registry is a few KB per replica; a file or an answer larger than this is not one.
MAX_REGISTRY_BYTES = 16 * 1024 * 1024
# An endpoint's error answer is a short JSON error document; this much of it says why.
ERROR_BODY_BYTES = 2000

# Shared counts compare at most this many replicas per lease: a server-side scan of a few
# dozen small sets costs microseconds; beyond that a random sample is as good.
MAX_SHARED_CANDIDATES = 32

T = TypeVar("T")
Registry = Any  # a registry dict, or a bare list of service items


class NoReplicaAvailable(RuntimeError):
    """No replica can take a request: the registry is empty, every replica is
    marked unhealthy, or every remaining one was excluded."""


@dataclass(frozen=True)
class Service:
    """The replica a lease hands out (a snapshot; safe to keep). ``url`` has
    no trailing slash, so ``svc.url + "/predict"`` is always well formed."""

    container_uuid: str
    url: str
    machine_id: Optional[str]
    gpu_name: Optional[str]


class _Replica:
    """Mutable per-container state; only touched under ServicePool._lock."""

    def __init__(self, container_uuid: str):
        self.container_uuid = container_uuid
        self.service: Service = Service(container_uuid, "", None, None)
        self.healthy = True
        self.inflight = 0
        self.completed = 0
        self.failed = 0
        self.ejected_at: Optional[float] = None
        self.ejected_until: Optional[float] = None

    def is_ejected(self, now: float) -> bool:
        return self.ejected_until is not None and now < self.ejected_until


class Lease:
    """One request's hold on a replica. Use as a context manager (``with
    pool.lease() as svc``) or call ``release(failed=...)`` once done (e.g. at
    the end of a streamed response). A lease never released counts as in
    flight forever; releasing twice is harmless."""

    def __init__(self, pool: "ServicePool", replica: _Replica):
        self._pool = pool
        self._replica = replica
        self._released = False
        self._shared_id: Optional[str] = None  # the lease in the shared counts, if any
        self.service = replica.service

    def release(self, failed: bool = False) -> None:
        self._pool._release(self, failed)

    def __enter__(self) -> Service:
        return self.service

    def __exit__(self, exc_type, exc, tb) -> bool:
        # KeyboardInterrupt and friends say nothing about the replica.
        failed = isinstance(exc, Exception) and self._pool._is_failure(exc)
        self.release(failed=failed)
        return False  # never swallow the exception


class ServicePool:
    """Picks a replica per request; see the module docstring for usage.

    policy: "least_inflight" (power-of-two choices on in-flight leases),
        "round_robin" (what nginx would do) or "random".
    seed: seeds the policy's random choices (reproducible tests).
    eject_seconds: how long a replica that failed a request is skipped.
    refresh_interval: minimum seconds between looks at the source.
    source: callable returning a registry (dict or list of items) or None for
        "unchanged"; raising keeps the last good set.
    is_failure: decides whether an exception from a request means the replica
        failed (default: every Exception). Return False e.g. for an HTTP 400
        caused by the caller's own bad input.
    clock: monotonic clock in seconds (injectable for tests).
    logger: where refresh warnings go (default: the ``service_pool`` logger).
    shared_inflight: an object keeping in-flight counts shared with other
        clients (``acquire(candidates) -> (index, lease_id)``,
        ``release(container_uuid, lease_id)``), e.g. from_redis's; when it
        fails the pool falls back to its own counts and logs a warning.
    """

    def __init__(
        self,
        policy: str = "least_inflight",
        seed: Optional[int] = None,
        eject_seconds: float = DEFAULT_EJECT_SECONDS,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        source: Optional[Callable[[], Optional[Registry]]] = None,
        is_failure: Optional[Callable[[BaseException], bool]] = None,
        clock: Callable[[], float] = time.monotonic,
        logger: Optional[logging.Logger] = None,
        shared_inflight: Any = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; valid policies: {', '.join(POLICIES)}")
        if eject_seconds < 0 or refresh_interval < 0:
            raise ValueError("eject_seconds and refresh_interval must be >= 0")
        self.policy = policy
        self.eject_seconds = float(eject_seconds)
        self.refresh_interval = float(refresh_interval)
        self.last_refresh_error: Optional[str] = None
        self.registry_info: dict = {}  # top-level registry fields except services
        self._source = source
        self._is_failure = is_failure or (lambda exc: True)
        self._clock = clock
        self._log = logger or log
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # selection, counters, replica maps
        self._refresh_lock = threading.Lock()  # one refresh at a time, never under _lock
        self._replicas: dict[str, _Replica] = {}  # in the registry, registry order
        self._draining: dict[str, _Replica] = {}  # left the registry, leases still out
        self._round_robin_next = 0
        self._next_refresh_at = float("-inf")
        self._shared = shared_inflight
        self._shared_error: Optional[str] = None
        self._closers: list[Callable[[], Any]] = []
        if source is not None:
            self.refresh(force=True)

    # ---- constructors -------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> "ServicePool":
        """Pool fed by a registry file, re-read whenever it changes."""
        return cls(source=RegistryFileReader(path), **kwargs)

    @classmethod
    def from_endpoint(
        cls, url: str, timeout: float = DEFAULT_ENDPOINT_TIMEOUT, **kwargs
    ) -> "ServicePool":
        """Pool fed by the discover_services endpoint (``GET <url>/services``)."""
        return cls(source=RegistryUrlReader(url, timeout), **kwargs)

    @classmethod
    def from_services(cls, services: Iterable[dict], **kwargs) -> "ServicePool":
        """Pool over a fixed list of registry items; ``update()`` changes it."""
        pool = cls(**kwargs)
        pool.update(list(services))
        return pool

    @classmethod
    def from_redis(cls, url: str, deployment_uuid: str, **kwargs) -> "ServicePool":
        """Pool following the Redis registry by notification; see the module
        docstring. ``key_prefix``, ``shared_inflight`` (bool), ``lease_ttl``
        (seconds a crashed client's lease keeps counting; live leases are
        renewed) plus the usual keyword arguments."""
        try:  # absolute, so a copy of this file works too while the bundle is on sys.path
            from autodl_esd.serving.routing.redis_pool import pool_from_redis
        except ImportError as exc:  # a copied pool.py without the bundle
            raise ImportError(
                "ServicePool.from_redis needs this module inside the autodl-elastic-deploy "
                "bundle (scripts/ on sys.path) and the redis package "
                "(pip install -r requirements-scaleout.txt)"
            ) from exc
        return pool_from_redis(cls, url, deployment_uuid, **kwargs)

    def add_closer(self, closer: Callable[[], Any]) -> None:
        """Run ``closer`` on ``close()`` (background followers, connections)."""
        self._closers.append(closer)

    def close(self) -> None:
        """Stop following the source (from_redis); the pool keeps its last set."""
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> "ServicePool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- registry -----------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Look at the source now if ``refresh_interval`` has passed (or
        ``force``). Never raises for a source failure: the last good set stays."""
        if self._source is None:
            return
        if not force and self._clock() < self._next_refresh_at:
            return
        # Another thread refreshing already: use the current set rather than wait.
        if not self._refresh_lock.acquire(blocking=force):
            return
        try:
            now = self._clock()
            if not force and now < self._next_refresh_at:
                return
            self._next_refresh_at = now + self.refresh_interval
            try:
                registry = self._source()  # I/O: outside self._lock on purpose
                if registry is not None:
                    self.update(registry)
                self.last_refresh_error = None
            except Exception as exc:  # any source failure: keep the last good set
                self.source_failed(f"{type(exc).__name__}: {exc}")
        finally:
            self._refresh_lock.release()

    def source_failed(self, message: Optional[str], what: str = "service registry refresh failed") -> None:
        """Say why the source failed (logged once per new reason; the last good set stays),
        or with None that it works again. Sources that push (from_redis) call it too."""
        self.last_refresh_error = _say_once(self._log, self.last_refresh_error, message, f"{what}, keeping last good set")

    def update(self, registry: Registry) -> None:
        """Replace the set of replicas with a registry dict or a list of items.

        Raises ValueError for a document that is not a registry (the current
        set is then kept). Items without a usable container_uuid/url are skipped.
        """
        items, info = parse_registry(registry)
        services = []
        for item in items:
            parsed = _parse_item(item)
            if parsed is None:
                self._log.warning("skipping malformed registry item: %r", item)
            else:
                services.append(parsed)
        if info.get("stale") and not self.registry_info.get("stale"):
            self._log.warning("service registry is stale: %s", info.get("stale_reason", "no reason given"))
        with self._lock:
            replicas: dict[str, _Replica] = {}
            for service, healthy in services:
                uuid = service.container_uuid
                if uuid in replicas:
                    continue  # duplicate item: first one wins
                # A container that left and came back while its leases are still
                # out keeps that (real) in-flight count; otherwise it starts fresh.
                replica = self._replicas.get(uuid) or self._draining.pop(uuid, None) or _Replica(uuid)
                replica.service = service  # a changed URL keeps the counters
                replica.healthy = healthy
                replicas[uuid] = replica
            for uuid, replica in self._replicas.items():
                if uuid not in replicas and replica.inflight > 0:
                    self._draining[uuid] = replica
            self._replicas = replicas
            self.registry_info = info

    # ---- leasing ------------------------------------------------------

    def lease(self, exclude: Iterable[str] = ()) -> Lease:
        """Pick a replica and hold it until the lease is released.

        ``exclude``: container UUIDs not to pick (e.g. ones that just failed).
        Raises NoReplicaAvailable when nothing can be picked.
        """
        self.refresh()
        excluded = set(exclude)
        if self._shared is not None:
            return self._lease_shared(excluded)
        with self._lock:
            replica = self._pick(excluded)
            replica.inflight += 1
            return Lease(self, replica)

    def _lease_shared(self, excluded: set[str]) -> Lease:
        # Choose the candidates locally, let the shared counts pick among them
        # (one round trip, outside the lock), then count the lease here as well.
        with self._lock:
            if self.policy == "least_inflight":
                candidates = self._pick(excluded, candidates=True)
            else:
                candidates = [self._pick(excluded)]
        lease_id = None
        index = 0
        try:
            index, lease_id = self._shared.acquire([r.container_uuid for r in candidates])
            self._shared_error = None
        except Exception as exc:  # shared counts unreachable: balance on our own counts
            self._shared_error = _say_once(self._log, self._shared_error, f"{type(exc).__name__}: {exc}",
                                           "shared in-flight counts unavailable, using this client's own")
            index = min(range(len(candidates)), key=lambda i: candidates[i].inflight)
        with self._lock:
            replica = candidates[index]
            replica.inflight += 1
            lease = Lease(self, replica)
            lease._shared_id = lease_id
            return lease

    def call(self, fn: Callable[[Service], T], retries: int = 1) -> T:
        """Run ``fn(service)`` under a lease; when it raises a replica failure,
        retry up to ``retries`` times, each on a replica not tried yet. The last
        error is re-raised when retries (or untried replicas) run out."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        tried: set[str] = set()
        last_error: Optional[Exception] = None
        for attempt in range(retries + 1):
            try:
                lease = self.lease(exclude=tried)
            except NoReplicaAvailable:
                if last_error is None:
                    raise
                break  # no untried replica left: the request's own error says more
            tried.add(lease.service.container_uuid)
            try:
                with lease as service:
                    return fn(service)
            except Exception as exc:
                if attempt == retries or not self._is_failure(exc):
                    raise
                last_error = exc
        raise last_error

    def stats(self) -> list[dict]:
        """Per replica (registry order, then draining ones): counters and state.

        ``ejected_until`` is on the pool's clock (time.monotonic by default),
        None when not ejected; ``in_registry`` is false for a container that
        left the registry while leases on it are still out.
        """
        with self._lock:
            now = self._clock()
            rows = []
            for in_registry, replicas in ((True, self._replicas), (False, self._draining)):
                for replica in replicas.values():
                    ejected = replica.is_ejected(now)
                    rows.append({
                        "container_uuid": replica.container_uuid,
                        "url": replica.service.url,
                        "machine_id": replica.service.machine_id,
                        "gpu_name": replica.service.gpu_name,
                        "inflight": replica.inflight,
                        "completed": replica.completed,
                        "failed": replica.failed,
                        "ejected_until": replica.ejected_until if ejected else None,
                        "healthy": replica.healthy,
                        "in_registry": in_registry,
                    })
            return rows

    def services(self) -> list[Service]:
        """The replicas currently in the registry (any health)."""
        with self._lock:
            return [replica.service for replica in self._replicas.values()]

    # ---- internals (called with self._lock held unless noted) ---------

    def _pick(self, excluded: set[str], candidates: bool = False):
        """The replica to use; with ``candidates``, the replicas for the shared
        counts to choose the least loaded of (every ready one, in random order)."""
        now = self._clock()
        healthy = [r for uuid, r in self._replicas.items() if r.healthy and uuid not in excluded]
        if not healthy:
            raise NoReplicaAvailable(self._why_none())
        ready = [r for r in healthy if not r.is_ejected(now)]
        if not ready:
            # Every replica failed recently; the one ejected longest ago is the
            # best bet, and trying beats failing the request outright.
            fallback = min(healthy, key=lambda r: r.ejected_at)
            return [fallback] if candidates else fallback
        if len(ready) == 1:
            return [ready[0]] if candidates else ready[0]
        if self.policy == "round_robin":
            replica = ready[self._round_robin_next % len(ready)]
            self._round_robin_next += 1
            return replica
        if self.policy == "random":
            return self._rng.choice(ready)
        # Power of two choices: nearly as good as scanning for the global
        # minimum, without herding every concurrent caller onto the same replica.
        # sample() returns the pair in random order, so min() breaks ties randomly.
        if candidates:
            # The shared counts pick atomically on fresh numbers, so no herding: the
            # global minimum beats two random choices (capped: one script call each).
            return self._rng.sample(ready, min(len(ready), MAX_SHARED_CANDIDATES))
        first, second = self._rng.sample(ready, 2)
        return min((first, second), key=lambda r: r.inflight)

    def _why_none(self) -> str:
        total = len(self._replicas)
        if total == 0:
            reason = "the service registry is empty (no running container registered)"
            if self.last_refresh_error:
                reason += f"; last refresh failed: {self.last_refresh_error}"
            return reason
        unhealthy = sum(1 for r in self._replicas.values() if not r.healthy)
        if unhealthy == total:
            return f"all {total} registered replicas are marked unhealthy"
        return f"all {total - unhealthy} healthy replicas were excluded (already tried)"

    def _release(self, lease: Lease, failed: bool) -> None:
        with self._lock:
            if lease._released:
                return
            lease._released = True
            replica = lease._replica
            replica.inflight = max(0, replica.inflight - 1)
            if failed:
                now = self._clock()
                replica.failed += 1
                replica.ejected_at = now
                replica.ejected_until = now + self.eject_seconds
            else:
                replica.completed += 1
            if replica.inflight == 0 and self._draining.get(replica.container_uuid) is replica:
                del self._draining[replica.container_uuid]
        shared_id = lease._shared_id
        if shared_id is not None:
            try:  # outside the lock: a network round trip
                self._shared.release(replica.container_uuid, shared_id)
            except Exception as exc:  # the lease expires on its own (lease_ttl)
                self._log.warning("could not release shared in-flight lease (it expires on its own): %s: %s",
                                  type(exc).__name__, exc)


# ---- reading a registry (the bundle's one parser and readers) ------------


def _say_once(log: logging.Logger, said: Optional[str], message: Optional[str], what: str) -> Optional[str]:
    """Log ``what: message`` unless it is what was said last; returns the message to remember."""
    if message and message != said:
        log.warning("%s: %s", what, message)
    return message


def parse_registry(registry: Registry) -> tuple[list, dict]:
    """(items, top-level info) from a registry dict or a bare list of items; ValueError
    for anything else (an error document, no ``services`` list)."""
    if isinstance(registry, list):
        return registry, {}
    if not isinstance(registry, dict):
        raise ValueError(f"registry must be a JSON object, got {type(registry).__name__}")
    if registry.get("status", "success") != "success":
        raise ValueError(f"registry source reported an error: {registry.get('message') or registry.get('status')}")
    items = registry.get("services")
    if not isinstance(items, list):
        raise ValueError("registry has no 'services' list")
    info = {key: value for key, value in registry.items() if key != "services"}
    return items, info


def _parse_item(item: Any) -> Optional[tuple[Service, bool]]:
    """(Service, healthy) from one registry item, or None if unusable."""
    if not isinstance(item, dict):
        return None
    uuid, url, healthy = item.get("container_uuid"), item.get("url"), item.get("healthy", True)
    if not isinstance(uuid, str) or not uuid:
        return None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    if healthy is None:
        healthy = True  # null: nobody probed it (one-shot discover_services), not known bad
    if not isinstance(healthy, bool):
        return None  # "false" as a string must not read as healthy
    machine_id = item.get("machine_id")
    if machine_id is None and uuid.count("-") == 2:
        machine_id = uuid.split("-")[1]  # <deployment>-<machine>-<suffix>
    return Service(uuid, url.rstrip("/"), machine_id, item.get("gpu_name")), healthy


class RegistryFileReader:
    """A registry file, read only when its inode, mtime or size changed (the writer
    replaces it atomically, so a rewrite is always a new inode). Calling it returns the
    registry, None when unchanged since the last good read, or raises (missing, too large,
    not a registry). ``modified_at``: the file's mtime (``time.time()``) at that read."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.modified_at: Optional[float] = None
        self._seen: Optional[tuple[int, int, int]] = None

    def __call__(self) -> Optional[Registry]:
        stat = os.stat(self.path)
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == self._seen:
            return None
        if stat.st_size > MAX_REGISTRY_BYTES:
            raise ValueError(f"{self.path} is larger than {MAX_REGISTRY_BYTES} bytes")
        with open(self.path, encoding="utf-8") as handle:
            registry = json.load(handle)
        parse_registry(registry)  # raises for a non-registry before we remember the file
        # Remember the file only once it parsed, so a half-written one is read again.
        self._seen = signature
        self.modified_at = stat.st_mtime
        return registry


class RegistryUrlReader:
    """GET <base>/services on a registry endpoint (``discover_services.py --serve``)."""

    def __init__(self, url: str, timeout: float = DEFAULT_ENDPOINT_TIMEOUT):
        url = url.rstrip("/")
        self.url = url if url.endswith("/services") else url + "/services"
        self.timeout = timeout

    def __call__(self) -> Registry:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read(MAX_REGISTRY_BYTES).decode("utf-8"))
        except urllib.error.HTTPError as exc:
            # Say what the endpoint said (e.g. "no registry yet"), not just the code.
            body = exc.read(ERROR_BODY_BYTES).decode("utf-8", "replace")
            try:
                body = json.loads(body).get("message") or body
            except (ValueError, AttributeError):
                pass
            raise OSError(f"GET {self.url}: HTTP {exc.code}: {body.strip()}") from None
