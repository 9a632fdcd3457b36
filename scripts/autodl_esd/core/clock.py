"""The platform's clock: its +08:00 face, its timestamps, and what time it is there.

AutoDL runs on China Standard Time and stamps everything (created_at, started_at, events)
with +08:00. Our own stamps (generated_at, as_of, progress lines) use the same offset,
whatever this machine's zone, so a reader never compares 12:00+00:00 with 20:00+08:00.

Run time and spend are measured between the platform's own timestamps and the platform's
"now", read from the HTTP `Date` header of the latest answer. So a local clock that is off
(or the simulator's accelerated time) never makes a container look longer or shorter-lived
than it is.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

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

def parse_timestamp(value: Any) -> datetime | None:
    """An API timestamp as an aware datetime; None for null, empty or unreadable values.

    Also accepts `{"Time": "...", "Valid": bool}` (a Go sql.NullTime some clients defend
    against) and a trailing `Z`.
    """
    if isinstance(value, dict):
        if value.get("Valid") is False:
            return None
        value = value.get("Time")
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.year <= 1:  # Go's zero time stands for "never"
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_since(text: str) -> datetime:
    """--since: an RFC 3339 / ISO time (a bare date or a time without zone is +08:00, the
    platform's zone). Raises ValueError with a Chinese message."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"不是 ISO 时间: {text!r} (示例: 2026-12-01 或 2026-12-01T08:00:00+08:00)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=PLATFORM_TZ)
    return parsed


def platform_now(client: Any = None) -> datetime:
    """The platform's current time: the last answer's Date header plus the time since; the
    local clock when no answer carried one."""
    header = getattr(client, "last_server_date", None)
    if header:
        try:
            seen = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            seen = None
        if seen is not None:
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=timezone.utc)
            elapsed = max(0.0, time.monotonic() - getattr(client, "last_server_date_at", time.monotonic()))
            return seen + timedelta(seconds=elapsed)
    return datetime.now(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    """A datetime shown in the platform's zone (+08:00), whole seconds."""
    if moment is None:
        return None
    return in_platform_zone(moment)
