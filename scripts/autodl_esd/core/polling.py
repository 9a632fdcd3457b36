"""Shared rules for long waits that poll the API.

Two kinds of wait, two rules:

- waiting before anything exists (queue_submit waiting for GPU stock): survive blips, but
  sustained failure ends the wait (`PollFailures`): nothing has been bought yet, and a
  dead API is better reported than waited on;
- following something that exists (a deployment's containers coming up, a Job finishing,
  events): a failed read (ApiError: transport, 5xx, 429) is counted and logged, never fatal
  before the follow's own deadline (`ReadErrors`). Giving up early would report an error
  about a deployment that exists and is billed, inviting a resubmit; at the deadline the
  follow ends `startup_timeout` with the deployment and the last read error.
"""

from __future__ import annotations

from .errors import ApiError
from .output import Progress
from .settings import is_loopback_host

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

# The platform publishes no rate limit; one poll a second per waiting script is far below
# anything a shared API should mind, and nothing changes faster than that (a container
# phase takes seconds). The local simulator is exempt: tests poll it every 0.05 s.
MIN_REMOTE_POLL_SECONDS = 1.0

# queue_submit's stock polls and follow-ups without --interval: every 30 s against the
# platform (a wait for stock takes minutes to hours; finer gains nothing and costs calls), but
# every second against a loopback host (the simulator): at --speed 60 a silent 30 s sleep is
# 30 simulated minutes in which cards can free and be taken again.
DEFAULT_REMOTE_INTERVAL_SECONDS = 30.0
DEFAULT_LOOPBACK_INTERVAL_SECONDS = 1.0

# A wait for stock survives API blips; this many failed polls in a row (each already
# retried by the HTTP client) means the API is down for good and waiting on is pointless.
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


class ReadErrors:
    """Failed reads of a follow-up: counted and logged, never fatal before the deadline."""

    def __init__(self, progress: Progress, what: str) -> None:
        self.progress = progress
        self.what = what  # Chinese, the read: "查询容器"
        self.failures = 0  # total failed reads
        self.in_a_row = 0
        self.last_error: str | None = None

    def record(self, error: ApiError) -> None:
        if not isinstance(error, ApiError):  # auth, not_found: nothing to wait out
            raise error
        self.failures += 1
        self.in_a_row += 1
        self.last_error = error.message
        self.progress.log(f"{self.what}失败 (第 {self.failures} 次): {error.message} 继续等待。")

    def reset(self) -> None:
        """A read succeeded: the run of failures ends (the total is kept for the report)."""
        self.in_a_row = 0

    def warning(self) -> dict[str, Any] | None:
        if not self.failures:
            return None
        return {
            "code": "follow_read_errors",
            "path": "",
            "message": f"跟踪期间{self.what}失败 {self.failures} 次 (最近一次: {self.last_error}), 每次都继续等待, 结果来自之后成功的读取。",
            "hint": "平台或网络不稳定, 但结果可用; 经常出现时检查网络与 AUTODL_HOST, 或加大 --interval。",
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def details(self) -> dict[str, Any]:
        """For an error's details: how many reads failed and the last failure; {} if none."""
        if not self.failures:
            return {}
        return {"read_errors": self.failures, "last_read_error": self.last_error}


def failed_reads_text(errors: ReadErrors) -> str:
    """The end of a follow-up's timeout message when reads failed on the way ("" if none)."""
    if not errors.failures:
        return ""
    return f" 期间有 {errors.failures} 次读取失败, 最近一次: {errors.last_error}"


def default_interval(host: str) -> float:
    """The polling interval when none was given: DEFAULT_LOOPBACK_INTERVAL_SECONDS against this
    machine (the simulator), else DEFAULT_REMOTE_INTERVAL_SECONDS."""
    return DEFAULT_LOOPBACK_INTERVAL_SECONDS if is_loopback_host(host) else DEFAULT_REMOTE_INTERVAL_SECONDS


def floor_interval(interval: float, host: str, progress: Progress) -> float:
    """The polling interval to use against `host`: at least MIN_REMOTE_POLL_SECONDS unless local."""
    if interval >= MIN_REMOTE_POLL_SECONDS or is_loopback_host(host):
        return interval
    progress.log(f"--interval {interval:g} 秒太短, 对平台轮询改用 {MIN_REMOTE_POLL_SECONDS:g} 秒 (避免压垮接口)。")
    return MIN_REMOTE_POLL_SECONDS
