"""Simulated time: a monotonic clock that runs `speed` times faster than real time.

Simulated seconds are what every duration in the simulator is measured in (container
phases, Job run times, blacklist expiry). Tests jump ahead with `advance()` instead of
sleeping. Timestamps shown to API clients are wall-clock times in China Standard Time
(+08:00, like the platform's RFC 3339 strings), shifted by the simulated time elapsed.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime, timedelta, timezone

CHINA_STANDARD_TIME = timezone(timedelta(hours=8))


class SimClock:
    """Simulated seconds since start; thread-safe."""

    def __init__(self, speed: float) -> None:
        if not math.isfinite(speed) or speed <= 0:
            raise ValueError("speed must be a positive finite number")
        self.speed = speed
        self._lock = threading.Lock()
        self._real_start = time.monotonic()
        self._jumped = 0.0
        self._wall_start = datetime.now(CHINA_STANDARD_TIME).replace(microsecond=0)

    def now(self) -> float:
        """Simulated seconds elapsed since the clock was created."""
        with self._lock:
            return (time.monotonic() - self._real_start) * self.speed + self._jumped

    def advance(self, seconds: float) -> None:
        """Jump simulated time forward (never backwards)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("can only move simulated time forward by a finite number of seconds")
        with self._lock:
            self._jumped += seconds

    def timestamp(self, simulated_seconds: float) -> str:
        """RFC 3339 timestamp (+08:00, whole seconds) for a simulated instant."""
        instant = self._wall_start + timedelta(seconds=int(simulated_seconds))
        return instant.isoformat()

    def wall_time(self, simulated_seconds: float) -> datetime:
        """The wall-clock instant (UTC) of a simulated instant, e.g. for the Date header."""
        return (self._wall_start + timedelta(seconds=int(simulated_seconds))).astimezone(timezone.utc)
