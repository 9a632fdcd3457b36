"""The closed set of error types the bundle reports, their exit codes, and the error document.

Every JSON error the bundle emits (a script's stdout, the gateway's and the registry
endpoint's HTTP answers) is built by `error_document` with an `ErrorType`; the same enum is
listed in schemas/result.schema.json. The exit-code text of every `--help` is generated
from EXIT_CODES, so the two cannot drift.
"""

from __future__ import annotations

from enum import Enum  # already loaded: `re` (which argparse imports) is built on enum

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any


class ErrorType(str, Enum):
    """Stable identifiers agents branch on; mirrored by schemas/result.schema.json."""

    VALIDATION_ERROR = "validation_error"
    CONFIG_ERROR = "config_error"
    USAGE_ERROR = "usage_error"
    TOKEN_MISSING = "token_missing"
    AUTH_ERROR = "auth_error"
    IMAGE_NOT_FOUND = "image_not_found"
    GPU_TYPE_NOT_FOUND = "gpu_type_not_found"
    DEPLOYMENT_EXISTS = "deployment_exists"
    NOT_FOUND = "not_found"
    CONFIRMATION_REQUIRED = "confirmation_required"
    DEPENDENCY_MISSING = "dependency_missing"
    TIMEOUT = "timeout"
    STARTUP_TIMEOUT = "startup_timeout"
    SUBMISSION_ERROR = "submission_error"
    API_ERROR = "api_error"
    INTERNAL_ERROR = "internal_error"
    INTERRUPTED = "interrupted"
    # Answered over HTTP by the serving gateway (never a script's exit; see SERVING_ONLY).
    NO_REPLICAS = "no_replicas"
    OVERLOADED = "overloaded"
    UPSTREAM_ERROR = "upstream_error"
    UNAUTHORIZED = "unauthorized"
    BAD_REQUEST = "bad_request"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self]


# Exit codes group error types: 1 = fix the input, 2 = waited too long,
# 3 = the platform failed, 4 = a bug of ours, 130 = stopped by a signal (shell convention).
EXIT_SUCCESS = 0
EXIT_CODES: dict[ErrorType, int] = {
    **{t: 1 for t in ErrorType},
    ErrorType.TIMEOUT: 2,
    ErrorType.STARTUP_TIMEOUT: 2,
    ErrorType.SUBMISSION_ERROR: 3,
    ErrorType.API_ERROR: 3,
    ErrorType.INTERNAL_ERROR: 4,
    ErrorType.INTERRUPTED: 130,
    # The gateway's answers, grouped as a script would be if it ever reported one.
    ErrorType.NO_REPLICAS: 3,
    ErrorType.OVERLOADED: 3,
    ErrorType.UPSTREAM_ERROR: 3,
}
# Types only the serving gateway answers (with an HTTP status); no script exits with them.
SERVING_ONLY = frozenset({ErrorType.NO_REPLICAS, ErrorType.OVERLOADED, ErrorType.UPSTREAM_ERROR,
                          ErrorType.UNAUTHORIZED, ErrorType.BAD_REQUEST})
EXIT_GROUPS = {EXIT_SUCCESS: "成功", 1: "输入有误", 2: "等待超时", 3: "平台错误", 4: "内部错误", 130: "被中断"}
# --help is read in a terminal: the list of types wraps before this width.
EPILOG_WIDTH = 88


def _exit_code_epilog() -> str:
    lines = ["退出码:", f"  {EXIT_SUCCESS:<4} {EXIT_GROUPS[EXIT_SUCCESS]}"]
    for code, label in EXIT_GROUPS.items():
        names = [t.value for t in ErrorType if EXIT_CODES[t] == code and t not in SERVING_ONLY]
        if not names:
            continue
        line = f"  {code:<4} {label} ("
        for index, name in enumerate(names):
            piece = name + (", " if index < len(names) - 1 else ")")
            if len(line) + len(piece.rstrip()) > EPILOG_WIDTH:
                lines.append(line.rstrip())
                line = " " * 7
            line += piece
        lines.append(line)
    return "\n".join(lines + [
        # The bounds of core.cli's shared types (tests/core/test_hostile_inputs.py checks them).
        "数值参数的取值范围写在各自的说明里: 秒数可为小数, 0.01..2592000 (30 天; 0 表示不限的也可为 0);",
        "金额、小时、分钟类是不超过 1e9 的有限正数; 计数类不超过 1000000 (副本数等有各自更小的上限)。",
        "stdout 永远只有一个 JSON 对象; 进度日志在 stderr。",
    ])


EXIT_CODE_EPILOG = _exit_code_epilog()


def error_document(error_type: ErrorType, message: str, hint: str = "", details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one shape of every JSON error the bundle emits (schemas/result.schema.json)."""
    return {"status": "error", "error_type": ErrorType(error_type).value, "message": message, "hint": hint,
            "details": details or {}}


# Whether this run has sent a change to the platform, or started a process that may: set where
# changes leave (platform.effects.apply_change, the submit engine's create, a detached start),
# reset and read by core.cli.run. A mutating script's error before any says took_effect: false.
_change_sent = False
NOTHING_SENT = "未发送任何改动请求, 平台上没有任何变化。"
# The keys by which a result or an error says what is known about a change's effect.
EFFECT_KEYS = ("took_effect", "may_have_been_created")


def mark_change_sent() -> None:
    """Called just before a change (or a process that may send one) leaves this process."""
    global _change_sent
    _change_sent = True


def change_sent(reset: bool = False) -> bool:
    """Whether a change was sent since the last reset (core.cli.run resets it per run)."""
    global _change_sent
    sent = _change_sent
    if reset:
        _change_sent = False
    return sent


class AutoDLError(Exception):
    """An error that becomes the script's single JSON error document."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        hint: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.hint = hint
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        return error_document(self.error_type, self.message, self.hint, self.details)

    def say_nothing_was_sent(self) -> None:
        """For a mutating script's error raised before any change was sent: took_effect false,
        and the message says nothing was sent, so no one has to infer it. An error that already
        says what is known about an effect (EFFECT_KEYS) is left as it is."""
        if any(key in self.details for key in EFFECT_KEYS):
            return
        self.details["took_effect"] = False
        if "未发送任何" not in self.message and "什么都没有做" not in self.message:
            self.message = f"{self.message.rstrip()} {NOTHING_SENT}"


class ApiError(AutoDLError):
    """The platform answered with an error, or could not be reached after retries.

    `ambiguous` is true when the request may have been carried out even though no
    success came back (timeout, reset connection, 5xx): a create in that state must be
    reconciled before it is retried.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        msg: str | None = None,
        http_status: int | None = None,
        retryable: bool = False,
        ambiguous: bool = False,
        hint: str = "",
        response: Any = None,
        request_id: str | None = None,
    ) -> None:
        details: dict[str, Any] = {
            "code": code,
            "msg": msg,
            "http_status": http_status,
            "retryable": retryable,
        }
        if request_id:
            # The platform's id of this call: what AutoDL support asks for.
            details["request_id"] = request_id
        if response is not None:
            details["api_response"] = response
        super().__init__(ErrorType.API_ERROR, message, hint, details)
        self.code = code
        self.msg = msg
        self.http_status = http_status
        self.retryable = retryable
        self.ambiguous = ambiguous
        self.response = response
        self.request_id = request_id or None


class Interrupted(BaseException):
    """Raised from the SIGINT/SIGTERM handler; a BaseException so broad handlers let it pass."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
