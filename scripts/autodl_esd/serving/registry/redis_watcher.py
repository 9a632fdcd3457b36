"""`discover_services.py --watch --redis`: one watcher of many polls AutoDL, the others stand by.

The lock in Redis (`redis_store.WatcherLock`) picks the active watcher: it runs the
`RegistryWatcher` cycle and publishes each registry to Redis (fenced by the lock) and to its
local sinks (--out, --haproxy-socket). A standby follows the registry in Redis into its own
local sinks, so every machine's HAProxy follows while only one polls the API, and takes
over when the lock is released or lapses.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid as uuid_module
from typing import Any, Callable, Optional

from ...core.errors import Interrupted
from .document import membership
from .redis_store import (
    LostLock,
    RedisKeys,
    RegistryPublisher,
    WatcherLock,
    describe_url,
    read_registry,
    redis_errors,
)


def watcher_name() -> str:
    """Who holds the lock / writes the heartbeat: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid_module.uuid4().hex[:8]}"


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
        self._was_standby = False  # a lock taken after standing by is a takeover; the first one is not
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
        self._was_standby = True
        self.watcher.forget_position()

    def _hold_or_try(self) -> None:
        errors = redis_errors()
        try:
            if self.active:
                if not self.lock.renew():
                    self._step_down("锁已过期")
            if not self.active and self.lock.try_acquire():
                self.active = True
                if self._was_standby:  # from another watcher, or back after losing the lock
                    self.takeovers += 1
                self._was_standby = False
                self.watcher.forget_position()
                self.publisher.forget()
                self.progress.log(f"成为活动 watcher (锁 {self.keys.lock}, TTL {self.lock.ttl:g}s): 由本进程轮询 AutoDL"
                                  + self._takeover_note())
                self._standby_said, self._standby_since = None, None
            elif not self.active:
                self._was_standby = True
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
        options = self.watcher.options
        started = time.monotonic()
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
                    remaining = options.duration - (time.monotonic() - started)
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
