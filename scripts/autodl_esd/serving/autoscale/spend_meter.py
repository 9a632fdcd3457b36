"""The autoscaler's spend: the hourly rate it observes, integrated over the platform's clock.

The platform bills on its own clock (containers' `started_at`/`stopped_at`), which is what
cost_report.py and the guard measure; the simulator runs it `--speed` times faster than this
machine's, so seconds of local time would under-count by that factor. The platform's "now"
comes from the HTTP `Date` header of the latest answer (timeline.platform_now), which has
whole-second resolution:

- readings are kept monotone (a later one never counts as earlier), so no gap is negative;
- consecutive gaps charged at the same rate telescope: their sum is the platform time
  between the run's first and last reading, short by less than one second (the last
  reading's truncated fraction), never by a second per gap;
- so each run of gaps at one rate is charged one `DATE_RESOLUTION_SECONDS` extra, and the
  total is never under what the platform billed at those rates.

A gap is charged at the dearer of its two ends' rates (a container that started between
two readings is charged for the whole gap). Without a Date header (a client that got none)
the local clock measures the gap and `clock` says "local".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from ...core.clock import iso, platform_now

# The HTTP Date header (RFC 9110 5.6.7) carries whole seconds.
DATE_RESOLUTION_SECONDS = 1.0
# The platform clock's pace is only told once this many platform seconds have passed: over
# fewer, the header's one-second steps make the measured rate off by more than 5 %
# (guard.py measures its rate the same way).
RATE_MIN_PLATFORM_SECONDS = 20.0
# A pace this far from 1 is worth a note (the simulator's --speed, or a skewed clock); the
# guard's threshold.
RATE_NOTE_THRESHOLD = 1.5


def platform_seconds(client: Any) -> Optional[float]:
    """The platform's now (POSIX seconds) from the client's latest Date header; None without one."""
    if not getattr(client, "last_server_date", None):
        return None
    return platform_now(client).timestamp()


@dataclass
class _Reading:
    at: float
    rate: float  # yuan per hour at this reading


class SpendMeter:
    def __init__(self) -> None:
        self.integrated = 0.0  # yuan over the gaps so far
        self.allowance_settled = 0.0  # yuan: one resolution step per finished run of equal rates
        self.charging = 0.0  # yuan per hour charged in the current run of gaps
        self.clock: Optional[str] = None  # "platform" or "local": what measured the latest gap
        self.since_platform: Optional[float] = None  # platform seconds of the first reading
        self._platform: Optional[_Reading] = None
        self._local: Optional[_Reading] = None
        self._first_real: Optional[tuple[float, float]] = None  # (real seconds, platform seconds)
        self.platform_clock_rate: Optional[float] = None

    def observe(self, hourly_rate: float, platform_at: Optional[float], local_at: float, real_at: float) -> None:
        """One observation: the rate paid now, the platform's time (None: no Date header), the
        local clock and real seconds (time.monotonic) for the platform clock's pace."""
        rate = max(float(hourly_rate), 0.0)
        # Both ends on the platform's clock, or else the gap is measured on the local one.
        use_platform = platform_at is not None and self._platform is not None
        previous = self._platform if use_platform else self._local
        if previous is not None:
            gap = max((platform_at if use_platform else local_at) - previous.at, 0.0)
            charged = max(rate, previous.rate)
            if charged != self.charging:
                self.allowance_settled += self.charging * DATE_RESOLUTION_SECONDS / 3600.0  # the run that ended
                self.charging = charged
            self.integrated += charged * gap / 3600.0
            self.clock = "platform" if use_platform else "local"
        self._local = _Reading(max(local_at, self._local.at) if self._local else local_at, rate)
        if platform_at is None:
            self._platform = None  # the next gap cannot be measured on it
            return
        self._platform = _Reading(max(platform_at, self._platform.at) if self._platform else platform_at, rate)
        if self.since_platform is None:
            self.since_platform = platform_at
        self._measure_rate(real_at, self._platform.at)

    def _measure_rate(self, real_at: float, platform_at: float) -> None:
        if self._first_real is None:
            self._first_real = (real_at, platform_at)
            return
        real_elapsed = real_at - self._first_real[0]
        platform_elapsed = platform_at - self._first_real[1]
        if real_elapsed > 0 and platform_elapsed >= RATE_MIN_PLATFORM_SECONDS:
            self.platform_clock_rate = platform_elapsed / real_elapsed

    @property
    def spent(self) -> float:
        """Yuan so far, never under the platform's bill at the observed rates."""
        return self.integrated + self.allowance_settled + self.charging * DATE_RESOLUTION_SECONDS / 3600.0

    def clock_note(self) -> Optional[str]:
        """Chinese note when the platform clock runs at another pace than this machine's."""
        rate = self.platform_clock_rate
        if self.clock != "platform" or rate is None or (1 / RATE_NOTE_THRESHOLD) < rate < RATE_NOTE_THRESHOLD:
            return None
        return (f"平台时钟约是本机的 {rate:.3g} 倍速 (模拟器 --speed?): 花费 (spent_yuan, --budget) 按平台时间计, 与 cost_report.py 一致; "
                "--upscale-delay / --downscale-delay / --look-back / --scale-to-zero-after 是本机的真实秒数。")

    def shown(self) -> dict:
        """The fields status and the summary show about the spend and its clock."""
        shown: dict[str, Any] = {"spent_yuan": round(self.spent, 4), "spend_clock": self.clock}
        if self.since_platform is not None:
            # cost_report.py --since <this> covers the same window (its start, whole seconds down).
            shown["spent_since"] = iso(datetime.fromtimestamp(self.since_platform, timezone.utc))
        if self.platform_clock_rate is not None:
            shown["platform_clock_rate"] = round(self.platform_clock_rate, 3)
        note = self.clock_note()
        if note:
            shown["clock_note"] = note
        return shown
