"""Where replicas come from: one small interface, several sources, all reading the registry
through the one parser (`pool.parse_registry`).

A gateway's `ReplicaSource` runs on its own thread(s) and keeps the last good registry. The
gateway's event loop calls `current()` every tick; it must return at once (no I/O) with a
`RegistryView`, or None before the first good read. A source never empties the replica set on
a failure: it keeps the last good services and says why they are stale.

- `WatcherSource`: the in-process `RegistryWatcher` (events offset, resync, health probes),
  the same one `discover_services.py --watch` runs.
- `FileSource`: a registry file another watcher keeps (`--out`), re-read when it changes.
- `UrlSource`: a registry endpoint (`discover_services.py --serve`), `GET <url>/services`.
- `RedisSource`: the registry `discover_services.py --watch --redis` keeps, by notification.
- `StaticSource`: a fixed list, replaced with `set()` (tests, your own discovery).

The client pool reads files and endpoints with the same readers (`pool.RegistryFileReader`,
`pool.RegistryUrlReader`) and follows Redis through the same `RegistrySubscription`
(`redis_pool`, behind `ServicePool.from_redis`; apart from here because the pool imports it).

Staleness is noticed when reads are merely slow, not only when they fail: a view whose last
good read (or, for a file, its last write) is older than `stale_after` seconds is stale. A
new source subclasses `PollingSource` and implements `fetch()`, or implements
`start`/`stop`/`current` itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..pool import RegistryFileReader, RegistryUrlReader, parse_registry
from ..registry.redis_store import DEFAULT_KEY_PREFIX, RedisKeys, RegistrySubscription, connect, describe_url

# How often `wait_first` looks for the first registry: the gateway's start-up waits on it,
# and 20 ms is below anything a person notices while costing nothing.
FIRST_VIEW_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class RegistryView:
    """The replicas as a source last saw them."""

    services: tuple[dict[str, Any], ...]
    deployment_uuid: str | None
    read_at: float  # time.monotonic() of the last good read (file: of its last write)
    stale_reason: str | None = None  # what the registry itself says (e.g. the API failed)
    generated_at: str | None = None
    ended: str | None = None  # deployment_stopped / deployment_gone: the watcher ended with its deployment
    ended_reason: str | None = None


class ReplicaSource:
    """Interface. `current()` is called on the event loop: it must not block."""

    description = ""
    stale_after = float("inf")
    # True when this source's watch belongs to the gateway (in-process): when the registry
    # ends with its deployment, the gateway ends too. A follower of someone else's watcher
    # keeps listening and answers 503 no_replicas with the reason.
    ends_with_deployment = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def current(self) -> RegistryView | None:
        raise NotImplementedError

    def last_error(self) -> str | None:
        """Why the last read failed, or None."""
        return None


def view_from_document(document: dict[str, Any], read_at: float, previous: RegistryView | None = None) -> RegistryView:
    """A RegistryView of a registry document; raises ValueError when it is not one.

    When the replicas are those of `previous`, the view carries `previous.services` itself,
    so the gateway sees by identity that there is nothing to apply."""
    items, info = parse_registry(document)
    stale_reason = (info.get("stale_reason") or "注册表标记为 stale") if info.get("stale") else None
    ended = info.get("ended") if isinstance(info.get("ended"), str) else None
    services = tuple(item for item in items if isinstance(item, dict))
    if previous is not None and previous.services == services:
        services = previous.services
    return RegistryView(services, info.get("deployment_uuid"), read_at, None if ended else stale_reason,
                        info.get("generated_at"), ended, (info.get("ended_reason") or ended) if ended else None)


class PollingSource(ReplicaSource):
    """Calls `fetch()` on a daemon thread every `interval` seconds and keeps the last good view.

    `fetch()` returns a RegistryView, None for "unchanged since the last read", or raises.
    """

    def __init__(self, interval: float, stale_after: float) -> None:
        self.interval = interval
        self.stale_after = stale_after
        self._view: RegistryView | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fetch(self) -> RegistryView | None:
        raise NotImplementedError

    def poll_once(self) -> None:
        try:
            view = self.fetch()
            if view is not None:
                self._view = view
            self._error = None
        except Exception as error:  # any failure: keep the last good view and say why
            self._error = f"{type(error).__name__}: {error}"

    def start(self) -> None:
        self.poll_once()  # so the gateway starts with replicas when the source is up
        self._thread = threading.Thread(target=self._loop, name=f"registry-{type(self).__name__}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()

    def current(self) -> RegistryView | None:
        return self._view

    def last_error(self) -> str | None:
        return self._error


class FileSource(PollingSource):
    def __init__(self, path: str, interval: float, stale_after: float) -> None:
        super().__init__(interval, stale_after)
        self.path = path
        self.description = f"registry file {path}"
        self._read = RegistryFileReader(path)

    def fetch(self) -> RegistryView | None:
        document = self._read()
        if document is None:
            return None
        # The file's age is the writer's heartbeat: the watcher rewrites it every cycle.
        written_at = time.monotonic() - max(0.0, time.time() - self._read.modified_at)
        return view_from_document(document, written_at, self._view)


class UrlSource(PollingSource):
    def __init__(self, url: str, interval: float, stale_after: float) -> None:
        super().__init__(interval, stale_after)
        self._read = RegistryUrlReader(url)
        self.url = self._read.url
        self.description = f"registry endpoint {self.url}"

    def fetch(self) -> RegistryView:
        return view_from_document(self._read(), time.monotonic(), self._view)


class WatcherSource(ReplicaSource):
    """Runs a `registry.RegistryWatcher` on a daemon thread; its document is the view, read on
    that thread as each one is published (a sink), so the gateway's loop never parses it."""

    ends_with_deployment = True

    def __init__(self, watcher: Any, stale_after: float) -> None:
        self.watcher = watcher
        self.stale_after = stale_after
        self.description = f"in-process watcher of deployment {watcher.deployment_uuid}"
        self._thread: threading.Thread | None = None
        self._view: RegistryView | None = None
        watcher.options.sinks.append(self._consume)

    def _consume(self, document: dict[str, Any]) -> None:
        published_at = getattr(self.watcher, "published_at", None)
        self._view = view_from_document(document, published_at if published_at is not None else time.monotonic(), self._view)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.watcher.run, name="registry-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.watcher.stop_event.set()

    def wait_first(self, timeout: float) -> bool:
        return _wait_for(lambda: self._view is not None, timeout)

    def current(self) -> RegistryView | None:
        return self._view


class RedisSource(ReplicaSource):
    """The registry discover_services.py --watch --redis keeps, applied as each change arrives
    (serve_gateway.py --registry-redis).

    Staleness comes from the registry itself and from the watcher's heartbeat (a lapsed
    one marks it stale), not from the age of the last notification: a quiet deployment
    sends none, and that is not a fault.
    """

    def __init__(self, url: str, deployment_uuid: str, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self.client = connect(url)
        self.keys = RedisKeys(deployment_uuid, key_prefix)
        self.description = f"Redis {describe_url(url)} {self.keys.registry}"
        self._view: RegistryView | None = None
        self._error: Optional[str] = None
        self._subscription = RegistrySubscription(self.client, self.keys, self._consume, self._report)

    def _consume(self, document: dict[str, Any]) -> None:
        try:
            self._view = view_from_document(document, time.monotonic(), self._view)
        except ValueError as problem:
            self._error = f"ValueError: {problem}"

    def _report(self, message: Optional[str]) -> None:
        self._error = message

    def start(self) -> None:
        self._subscription.start()

    def wait_first(self, timeout: float) -> bool:
        return _wait_for(lambda: self._view is not None, timeout)

    def stop(self) -> None:
        self._subscription.close()
        self.client.close()

    def current(self) -> RegistryView | None:
        return self._view

    def last_error(self) -> Optional[str]:
        return self._error


class StaticSource(ReplicaSource):
    """A fixed list of registry items, replaced with `set()` (tests, or your own discovery)."""

    description = "static list"

    def __init__(self, services: list[dict[str, Any]] | None = None, deployment_uuid: str | None = None) -> None:
        self.deployment_uuid = deployment_uuid
        self._view: RegistryView | None = None
        if services is not None:
            self.set(services)

    def set(self, services: list[dict[str, Any]], stale_reason: str | None = None) -> None:
        self._view = RegistryView(tuple(services), self.deployment_uuid, time.monotonic(), stale_reason)

    def current(self) -> RegistryView | None:
        return self._view


def _wait_for(ready: Callable[[], bool], timeout: float) -> bool:
    """Wait up to `timeout` seconds for the first registry (start-up only, never on the loop)."""
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        time.sleep(FIRST_VIEW_POLL_SECONDS)
    return ready()
