"""The output contract: exactly one JSON document on stdout, progress on stderr.

Every script ends through `emit_success` or `emit_error`; nothing else in the bundle writes
to stdout. Known secrets (the API token) are scrubbed from everything written, as a last
line of defence behind the code that never puts them there in the first place.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from .errors import EXIT_SUCCESS, AutoDLError
from .platform_time import clock_text

REDACTED = "***"

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a value that must never appear in stdout or stderr."""
    # Very short strings would scrub innocent text; real tokens are long.
    if value and len(value) >= 6:
        _secrets.add(value)


def scrub(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


def _write_json(document: dict[str, Any], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(scrub(json.dumps(document, ensure_ascii=False, indent=2, default=str)) + "\n")
    stream.flush()


def emit_success(payload: dict[str, Any]) -> int:
    if payload.get("status", "success") != "success":
        # It would silently replace "success"; name the field after what it is instead.
        raise ValueError(f"a success payload carries status={payload['status']!r}")
    _write_json({"status": "success", **payload})
    return EXIT_SUCCESS


def emit_line(document: dict[str, Any]) -> None:
    """One compact JSON line on stdout before the final document, for long-running servers
    (the gateway's "ready" line, like the simulator's): a reader can act on it at once."""
    sys.stdout.write(scrub(json.dumps(document, ensure_ascii=False, allow_nan=False)) + "\n")
    sys.stdout.flush()


def emit_error(error: AutoDLError) -> int:
    _write_json(error.to_dict())
    return error.error_type.exit_code


class Progress:
    """Progress and log lines on stderr.

    On a terminal the waiting status is one live line rewritten in place; elsewhere (CI,
    an agent capturing stderr) each update is a plain line so logs stay readable. Lines are
    stamped in the platform's zone (+08:00), like every timestamp in the JSON output.
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._live_line_open = False

    @property
    def _is_tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def log(self, message: str) -> None:
        if self.quiet:
            return
        self._close_live_line()
        self.stream.write(f"[{clock_text()}] {scrub(message)}\n")
        self.stream.flush()

    def status(self, message: str) -> None:
        """A frequently repeated status (e.g. each stock poll)."""
        if self.quiet:
            return
        if not self._is_tty:
            self.log(message)
            return
        self.stream.write(f"\r\x1b[2K[{clock_text()}] {scrub(message)}")
        self.stream.flush()
        self._live_line_open = True

    def _close_live_line(self) -> None:
        if self._live_line_open:
            self.stream.write("\n")
            self._live_line_open = False

    def close(self) -> None:
        self._close_live_line()
