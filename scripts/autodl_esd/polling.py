"""Shared rule for long waits that poll the API: survive blips, give up on a dead API."""

from __future__ import annotations

from .errors import ApiError
from .output import Progress
from .settings import is_loopback_host

# The platform publishes no rate limit; one poll a second per waiting script is far below
# anything a shared API should mind, and nothing changes faster than that (a container
# phase takes seconds). The local simulator is exempt: tests poll it every 0.05 s.
MIN_REMOTE_POLL_SECONDS = 1.0

# A wait survives API blips; this many failed polls in a row (each already retried by the
# HTTP client) means the API is down for good and waiting on is pointless.
MAX_CONSECUTIVE_POLL_FAILURES = 10


class PollFailures:
    """Counts failed polls in a row; `record` re-raises once the limit is reached."""

    def __init__(self, progress: Progress, what: str, limit: int = MAX_CONSECUTIVE_POLL_FAILURES) -> None:
        self.progress = progress
        self.what = what
        self.limit = limit
        self.in_a_row = 0

    def reset(self) -> None:
        self.in_a_row = 0

    def record(self, error: ApiError) -> None:
        self.in_a_row += 1
        self.progress.log(f"{self.what}失败 ({self.in_a_row}/{self.limit}): {error.message} 继续等待。")
        if self.in_a_row >= self.limit:
            raise error


def floor_interval(interval: float, host: str, progress: Progress) -> float:
    """The polling interval to use against `host`: at least MIN_REMOTE_POLL_SECONDS unless local."""
    if interval >= MIN_REMOTE_POLL_SECONDS or is_loopback_host(host):
        return interval
    progress.log(f"--interval {interval:g} 秒太短, 对平台轮询改用 {MIN_REMOTE_POLL_SECONDS:g} 秒 (避免压垮接口)。")
    return MIN_REMOTE_POLL_SECONDS
