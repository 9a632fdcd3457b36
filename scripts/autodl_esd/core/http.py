"""The one HTTP client of the bundle: auth header, envelope parsing, retries.

Envelope: `{"code": "Success", "msg": "", "data": ..., "request_id": ...}`. The platform
reports business errors with HTTP 200 and `code != "Success"`, so the HTTP status alone
never says a call worked.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from .deps import require
from .errors import ApiError, AutoDLError, ErrorType
from .output import Progress
from .settings import Settings

USER_AGENT = "autodl-elastic-deploy/1.0"

# One try plus three retries rides out a short blip (a gateway restart, a dropped
# connection) without letting a call that keeps failing hang for minutes.
MAX_ATTEMPTS = 4
# Exponential backoff 0.5 s, 1 s, 2 s ... with full jitter so many clients retrying at once
# spread out instead of hammering the API in lock-step.
BACKOFF_BASE_SECONDS = 0.5
# No single wait longer than this between retries: beyond it the caller's own polling
# (queue_submit's --interval) is the better place to wait.
BACKOFF_CAP_SECONDS = 8.0
# Honour a server's Retry-After, but never sleep longer than this on its word.
RETRY_AFTER_CAP_SECONDS = 60.0
# Connecting should be quick; a slow connect means the host is unreachable.
CONNECT_TIMEOUT_CAP_SECONDS = 10.0

RETRYABLE_STATUS = {429, 500, 502, 503, 504}
SUCCESS_CODE = "Success"
# Codes and message fragments that mean "this token may not do this". No recording shows a
# rejected token (api facts section 15), so codes are matched case-insensitively, exactly or by
# the words an auth code is made of, and English texts count as much as Chinese ones.
AUTH_CODES = {"Unauthorized", "AuthorizationFailed", "AuthorizeFailed", "AuthFailed", "InvalidToken", "TokenInvalid",
              "TORealName"}
AUTH_CODE_WORDS = ("auth", "token", "login")
AUTH_MESSAGE_FRAGMENTS = ("无当前资源访问权限", "未登录", "登录超时", "重新登录", "鉴权", "认证失败", "令牌无效", "token无效",
                          "unauthorized", "unauthenticated", "forbidden", "permission denied", "access denied",
                          "invalid token", "token invalid", "token expired", "token is invalid", "token has expired",
                          "authorization failed", "authorize failed", "authentication failed", "not logged in")


def _sleep(seconds: float) -> None:
    """Indirection so tests can skip real waiting."""
    time.sleep(seconds)


def backoff_seconds(attempt: int, rng: random.Random = random.Random()) -> float:
    """Full-jitter exponential backoff for the given 1-based retry number."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return rng.uniform(0, ceiling)


def _retry_after_seconds(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP_SECONDS)
    except ValueError:
        return None  # an HTTP-date; fall back to our own backoff


def is_auth_failure(code: str | None, msg: str | None) -> bool:
    """Whether a non-success answer says the token was rejected or may not do this."""
    if isinstance(code, str) and code:
        folded = code.casefold()
        if folded in {known.casefold() for known in AUTH_CODES} or any(word in folded for word in AUTH_CODE_WORDS):
            return True
    if not isinstance(msg, str) or not msg:
        return False
    folded_msg = msg.casefold()
    return any(fragment.casefold() in folded_msg for fragment in AUTH_MESSAGE_FRAGMENTS)


def auth_error(code: str | None, msg: str | None, http_status: int | None, request_id: str | None = None) -> AutoDLError:
    details: dict[str, Any] = {"code": code, "msg": msg, "http_status": http_status}
    if request_id:
        details["request_id"] = request_id  # what AutoDL support asks for
    return AutoDLError(
        ErrorType.AUTH_ERROR,
        f"令牌被拒绝或无权访问该接口: {msg or code or http_status}",
        "检查 AUTODL_TOKEN 是否正确、未过期; 弹性部署接口需要企业认证账号; "
        "确认 AUTODL_HOST 指向令牌所属的平台 (私有云/公有云)。",
        details,
    )


def _request_id(envelope: Any) -> str | None:
    """The platform's id of the call (32 hex) when the envelope carried one."""
    value = envelope.get("request_id") if isinstance(envelope, dict) else None
    return value if isinstance(value, str) and value.strip() else None


class ApiClient:
    def __init__(self, settings: Settings, progress: Progress | None = None, session: Any = None) -> None:
        self.settings = settings
        self.progress = progress or Progress(quiet=True)
        self._session = session
        self.last_server_date: str | None = None
        self.last_server_date_at = 0.0

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def session(self) -> Any:
        if self._session is None:
            requests = require("requests")
            self._session = requests.Session()
            self._session.headers.update(
                {
                    "Authorization": self.settings.token,  # raw token, no "Bearer"
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                }
            )
        return self._session

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None, *, idempotent: bool = True) -> Any:
        return self.request("POST", path, body=body, idempotent=idempotent)

    def put(self, path: str, body: dict[str, Any], *, idempotent: bool = True) -> Any:
        return self.request("PUT", path, body=body, idempotent=idempotent)

    def delete(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("DELETE", path, body=body)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool = True,
    ) -> Any:
        """Send one API call and return its `data`.

        Idempotent calls retry transient failures; a non-idempotent call (create) raises
        at once with `ambiguous` set when it may nevertheless have been carried out. The
        error of a retried call is `ambiguous` when ANY attempt may have been carried out:
        a delete whose first answer was lost and whose retry says "not found" did happen.
        """
        attempts = MAX_ATTEMPTS if idempotent else 1
        maybe_done = False
        for attempt in range(1, attempts + 1):
            try:
                return self._send_once(method, path, params, body)
            except ApiError as error:
                retry_after = error.details.pop("retry_after", None)
                maybe_done = maybe_done or error.ambiguous
                if not error.retryable or attempt == attempts:
                    error.ambiguous = maybe_done
                    raise
                wait = backoff_seconds(attempt) if retry_after is None else retry_after
                self.progress.log(
                    f"{method} {path} 失败 ({error.msg or error.http_status}), "
                    f"{wait:.1f} 秒后重试 ({attempt + 1}/{attempts})"
                )
                _sleep(wait)
        raise AssertionError("unreachable")

    def _send_once(self, method: str, path: str, params: dict[str, Any] | None, body: dict[str, Any] | None) -> Any:
        requests = require("requests")
        url = self.host + path
        timeout = (min(CONNECT_TIMEOUT_CAP_SECONDS, self.settings.http_timeout), self.settings.http_timeout)
        try:
            response = self.session.request(
                method,
                url,
                params=params,
                data=None if body is None else json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8"),
                timeout=timeout,
            )
        except requests.exceptions.ConnectTimeout:
            raise self._transport_error(path, "连接超时", ambiguous=False) from None
        except requests.exceptions.Timeout:
            raise self._transport_error(path, "等待响应超时", ambiguous=True) from None
        except requests.exceptions.ConnectionError as error:
            # A refused connection never reached the server; a reset may have.
            sent = "Connection refused" not in str(error) and "NewConnectionError" not in str(error)
            raise self._transport_error(path, "网络连接失败", ambiguous=sent) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader, ValueError) as error:
            # Refused while preparing the request, before anything was sent. The library's
            # message may quote a header value (the token), so only the type is reported.
            raise ApiError(
                f"请求 {path} 无法构造 ({type(error).__name__}), 未发送。",
                msg=type(error).__name__,
                hint=f"检查 AUTODL_HOST ({self.host}) 与 AUTODL_TOKEN 是否含有空格、换行等非法字符。",
            ) from None
        return self._parse(method, path, response)

    def _transport_error(self, path: str, what: str, *, ambiguous: bool) -> ApiError:
        return ApiError(
            f"无法完成对 {path} 的请求: {what}。",
            msg=what,
            retryable=True,
            ambiguous=ambiguous,
            hint=f"检查网络与 AUTODL_HOST ({self.host}); 可调大 AUTODL_HTTP_TIMEOUT 后重试。",
        )

    def _parse(self, method: str, path: str, response: Any) -> Any:
        status = response.status_code
        # The platform's clock (HTTP Date): run times and spend are measured on it.
        self.last_server_date = (response.headers or {}).get("Date")
        self.last_server_date_at = time.monotonic()
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        code = envelope.get("code") if isinstance(envelope, dict) else None
        msg = envelope.get("msg") if isinstance(envelope, dict) else None
        request_id = _request_id(envelope)

        if status in (401, 403):
            # Rejected whatever the body says (an English text, HTML, nothing at all).
            text = msg if isinstance(envelope, dict) else (response.text or "").strip()[:200] or None
            raise auth_error(code, text, status, request_id)
        if code is not None and code != SUCCESS_CODE and is_auth_failure(code, msg):
            raise auth_error(code, msg, status, request_id)
        if status in RETRYABLE_STATUS:
            error = ApiError(
                f"平台暂时不可用: {method} {path} 返回 HTTP {status}。",
                code=code,
                msg=msg or f"HTTP {status}",
                http_status=status,
                retryable=True,
                ambiguous=status != 429,  # 429 is a refusal before any work was done
                hint="平台繁忙或故障, 稍后重试。",
                request_id=request_id,
            )
            retry_after = _retry_after_seconds(response.headers)
            if retry_after is not None:
                error.details["retry_after"] = retry_after
            raise error
        if not isinstance(envelope, dict) or "code" not in envelope:
            raise ApiError(
                f"平台返回了无法解析的响应: {method} {path} (HTTP {status})。",
                msg=(response.text or "")[:200],
                http_status=status,
                ambiguous=200 <= status < 300,
                hint="确认 AUTODL_HOST 指向 AutoDL 弹性部署 API。",
            )
        if status == 404 and code != SUCCESS_CODE:
            raise ApiError(
                f"平台没有这个接口: {method} {path}。",
                code=code,
                msg=msg,
                http_status=status,
                hint="私有云与公有云的接口不完全相同 (见 references/platform-api.md 的方言对比); 确认 AUTODL_HOST。",
                request_id=request_id,
            )
        if code != SUCCESS_CODE:
            raise ApiError(
                f"平台拒绝了请求 {method} {path}: {msg or code}",
                code=code,
                msg=msg,
                http_status=status,
                hint="根据 details.msg 修正参数后重试。",
                response={key: envelope.get(key) for key in ("code", "msg", "request_id")},
                request_id=request_id,
            )
        return envelope.get("data")
