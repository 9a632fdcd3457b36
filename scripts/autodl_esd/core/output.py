"""The output contract: exactly one JSON document on stdout, progress on stderr.

Every script ends through `emit_success` or `emit_error`; nothing else in the bundle writes
to stdout. Known secrets (the API token) are scrubbed from everything written, as a last
line of defence behind the code that never puts them there in the first place.
"""

from __future__ import annotations

import math
import sys

from .errors import EXIT_SUCCESS, AutoDLError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any, TextIO


def clock_text() -> str:
    """The time shown in log lines, in the platform's zone (imported on first use: --help
    never logs, and core.clock loads datetime and email.utils: more than a bare start)."""
    from .clock import clock_text as platform_clock_text

    return platform_clock_text()

REDACTED = "***"

_secrets: set[str] = set()


def _spellings(secret: str) -> set[str]:
    """The ways a secret can appear in text: as written, as repr() and JSON escape it
    (a token holding a newline shows up as `abc\\ndef` in an exception message), and each
    of those JSON-escaped again (that message inside our JSON document)."""
    import json  # here, not at the top: --help registers no secret

    forms = {
        secret,
        repr(secret)[1:-1],
        secret.encode("unicode_escape").decode("ascii"),
        json.dumps(secret, allow_nan=False)[1:-1],
        repr(secret.encode("utf-8", "surrogatepass"))[2:-1],
    }
    return forms | {json.dumps(form, ensure_ascii=False, allow_nan=False)[1:-1] for form in forms} | {
        json.dumps(form, allow_nan=False)[1:-1] for form in forms
    }


def register_secret(value: str | None) -> None:
    """Remember a value that must never appear in stdout or stderr."""
    # Very short strings would scrub innocent text; real tokens are long.
    if value and len(value) >= 6:
        _secrets.update(_spellings(value))


def scrub(text: str) -> str:
    # Longest first, so a short spelling never leaves part of a longer one behind.
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _finite(value: Any) -> Any:
    """The document with NaN/Infinity replaced by null: stdout stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def to_json(document: Any, **options: Any) -> str:
    """Strict JSON (never NaN/Infinity, which JSON does not have) of an output document."""
    import json  # here, not at the top: --help never writes JSON

    try:
        return json.dumps(document, allow_nan=False, default=str, **options)
    except ValueError:
        # Inputs are checked to be finite, so this is a bug upstream; keep the document
        # (it may carry a deployment_uuid) rather than lose it to an internal_error.
        return json.dumps(_finite(document), allow_nan=False, default=str, **options)


def _write_json(document: dict[str, Any], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    text = scrub(to_json(document, ensure_ascii=False, indent=2)) + "\n"
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        # A lone surrogate (or a stream that cannot take Chinese): \u escapes are still
        # the same JSON, and writing them cannot fail half-way through the document.
        text = scrub(to_json(document, ensure_ascii=True, indent=2)) + "\n"
    stream.write(text)
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
    sys.stdout.write(scrub(to_json(document, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


def emit_error(error: AutoDLError) -> int:
    _write_json(error.to_dict())
    return error.error_type.exit_code


class Progress:
    """Progress and log lines on stderr.

    On a terminal the waiting status is one live line rewritten in place; elsewhere (CI,
    an agent capturing stderr) each update is a plain line so logs stay readable. Lines are
    stamped with this machine's clock written in the platform's zone (+08:00), like every
    timestamp in the JSON output; the first line says so (本机时间).
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._live_line_open = False
        self._clock_named = False

    def _stamp(self) -> str:
        """The line's time. The first line says it is this machine's clock (本机时间), once:
        beside platform times (created_at, the simulator's fast clock) it is not theirs."""
        if self._clock_named:
            return f"[{clock_text()}]"
        self._clock_named = True
        return f"[{clock_text()} 本机时间]"

    @property
    def _is_tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def log(self, message: str) -> None:
        if self.quiet:
            return
        self._close_live_line()
        self.stream.write(f"{self._stamp()} {scrub(message)}\n")
        self.stream.flush()

    def status(self, message: str) -> None:
        """A frequently repeated status (e.g. each stock poll)."""
        if self.quiet:
            return
        if not self._is_tty:
            self.log(message)
            return
        self.stream.write(f"\r\x1b[2K{self._stamp()} {scrub(message)}")
        self.stream.flush()
        self._live_line_open = True

    def _close_live_line(self) -> None:
        if self._live_line_open:
            self.stream.write("\n")
            self._live_line_open = False

    def close(self) -> None:
        self._close_live_line()
