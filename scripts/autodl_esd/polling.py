"""Shared rule for long waits that poll the API: survive blips, give up on a dead API."""

from __future__ import annotations

from .errors import ApiError
from .output import Progress

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
