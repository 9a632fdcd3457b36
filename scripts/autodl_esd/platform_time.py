"""The platform's clock face: every timestamp this tool writes uses +08:00.

AutoDL runs on China Standard Time and stamps everything (created_at, started_at, events)
with +08:00. Our own stamps (generated_at, as_of, progress lines) use the same offset,
whatever this machine's zone, so a reader never compares 12:00+00:00 with 20:00+08:00.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

PLATFORM_TZ = timezone(timedelta(hours=8))


def now() -> datetime:
    return datetime.now(PLATFORM_TZ)


def now_timestamp() -> str:
    """Now, as the platform writes it: RFC 3339 seconds with +08:00."""
    return now().isoformat(timespec="seconds")


def clock_text() -> str:
    """HH:MM:SS+08:00 for a progress line."""
    return now().strftime("%H:%M:%S+08:00")


def in_platform_zone(moment: datetime) -> str:
    """An aware instant as RFC 3339 seconds in +08:00."""
    return moment.astimezone(PLATFORM_TZ).isoformat(timespec="seconds")
