"""Fault injection for the /api routes (never /_sim or /svc).

SPEC is `key=value` pairs separated by commas, or the same keys in a dict:

    error_rate=0.2                 fraction of API calls answered 500/502/503 unprocessed
    slow_rate=0.1,slow_seconds=2   fraction of API calls delayed by slow_seconds (real s)
    create_slow_seconds=3          every create sleeps this long AFTER committing, so a
                                   client with a short timeout gives up on a create that
                                   in fact succeeded
    create_error_after_commit=1    the first N creates commit, then answer 503
    commit_delay_seconds=3         every write (create, stop, delete, scale, stop a container,
                                   blacklist) sleeps this long BEFORE committing: a client
                                   that gives up sooner and looks at once sees nothing yet,
                                   and the write lands later (the slow-platform race)
    commit_delay_rate=0.5          fraction of writes delayed that way (default 1 when
                                   commit_delay_seconds is set)

Decisions come from a seeded RNG, so a given seed fails the same calls every run.
Hosts whose containers crash are a cluster property (`faulty`), not part of SPEC.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, fields
from typing import Any

# Statuses an overloaded gateway or backend answers with; 502 comes as an HTML page, the
# way a proxy in front of a dead backend would answer.
ERROR_STATUSES = (500, 502, 503)
# A fault's delay is at most this long (real seconds): a test or a demo, not a hang.
MAX_FAULT_SECONDS = 3600.0
# Delay used when slow_rate is set without slow_seconds (real seconds): longer than a
# typical client's connect/read expectations for a list call, short enough for tests.
DEFAULT_SLOW_SECONDS = 2.0


@dataclass(frozen=True)
class FaultSpec:
    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = DEFAULT_SLOW_SECONDS
    create_slow_seconds: float = 0.0
    create_error_after_commit: int = 0
    commit_delay_seconds: float = 0.0
    commit_delay_rate: float = 1.0

    @classmethod
    def parse(cls, spec: str | dict | None) -> "FaultSpec":
        """Read a SPEC string or dict; ValueError names the offending key."""
        if spec is None or spec == "":
            return cls()
        if isinstance(spec, str):
            pairs: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in spec.split(","))):
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"故障 {part!r} 不是 key=value 形式")
                pairs[key.strip()] = value.strip()
            spec = pairs
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in spec.items():
            if key not in known:
                raise ValueError(f"未知故障 {key!r} (可用: {', '.join(known)})")
            try:
                value = int(raw) if key == "create_error_after_commit" else float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"故障 {key} 需要一个数字, 收到 {raw!r}") from None
            # nan/inf would make a delay sleep forever (or raise in the request's thread).
            limit = 1 if key.endswith("_rate") else MAX_FAULT_SECONDS if key.endswith("_seconds") else None
            if not math.isfinite(value) or value < 0 or (limit is not None and value > limit):
                allowed = f"0..{limit:g}" if limit is not None else ">= 0"
                raise ValueError(f"故障 {key}={raw} 超出范围 (应为 {allowed})")
            values[key] = value
        return cls(**values)


class FaultInjector:
    """Thread-safe decisions for one running simulator."""

    def __init__(self, spec: FaultSpec, seed: int) -> None:
        self.spec = spec
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._creates_failed = 0

    def error_status(self) -> int | None:
        """An HTTP status to fail this call with, or None."""
        with self._lock:
            if self.spec.error_rate and self._rng.random() < self.spec.error_rate:
                return self._rng.choice(ERROR_STATUSES)
        return None

    def delay_seconds(self) -> float:
        with self._lock:
            if self.spec.slow_rate and self._rng.random() < self.spec.slow_rate:
                return self.spec.slow_seconds
        return 0.0

    def commit_delay(self) -> float:
        """Real seconds this write waits before it commits (0: none)."""
        if not self.spec.commit_delay_seconds:
            return 0.0
        with self._lock:
            if self.spec.commit_delay_rate >= 1 or self._rng.random() < self.spec.commit_delay_rate:
                return self.spec.commit_delay_seconds
        return 0.0

    def fail_committed_create(self) -> bool:
        """True for the first `create_error_after_commit` creates."""
        with self._lock:
            if self._creates_failed < self.spec.create_error_after_commit:
                self._creates_failed += 1
                return True
        return False
