"""Token, host and timeout: environment first, then `.env` at the skill root.

The `.env` file is read with python-dotenv's `dotenv_values`, which parses the file without
touching `os.environ`, so a token from `.env` never leaks into child processes. A blank
value counts as unset (the next source applies); whitespace only with nothing after it is an
error, never the default (`resolve`).
"""

from __future__ import annotations

import io
import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import files
from .deps import SKILL_ROOT, require
from .errors import AutoDLError, ErrorType
from .output import register_secret

DEFAULT_HOST = "https://private.autodl.com"
# Matches common HTTP client defaults; list calls on a busy account answer within seconds.
DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
# Upper bound of AUTODL_HTTP_TIMEOUT: one request waiting longer than an hour is a hang.
MAX_HTTP_TIMEOUT_SECONDS = 3600.0
ENV_FILE = SKILL_ROOT / ".env"
# A `.env` holds a few lines; past this it is not one (and is not read into memory).
MAX_ENV_FILE_BYTES = 64 * 1024
PLACEHOLDER_TOKEN = "your_token_here"


@dataclass(frozen=True)
class Settings:
    host: str
    http_timeout: float
    token: str = field(repr=False)


def _read_env_file(path: Path) -> dict[str, str]:
    """The `.env` values; a missing file is none, an unreadable or non-UTF-8 one config_error."""
    data = files.read_bytes(path, ".env 文件", MAX_ENV_FILE_BYTES, missing_ok=True,
                            hint="修正或删除这个 .env (格式见 .env.example), 也可以改用环境变量 AUTODL_TOKEN。")
    if data is None:
        return {}
    text = files.decode_utf8(data, path, ".env 文件")
    dotenv = require("dotenv")
    return {key: value for key, value in dotenv.dotenv_values(stream=io.StringIO(text)).items() if value is not None}


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether a host URL (e.g. AUTODL_HOST) points at this machine, like the simulator."""
    return _is_loopback(urlsplit(host).hostname or "")


def _port_is_valid(parts: Any) -> bool:
    try:
        port = parts.port  # raises ValueError outside 0..65535
    except ValueError:
        return False
    return port is None or port > 0


def normalize_host(raw: str) -> str:
    """Validate AUTODL_HOST: https anywhere, plain http only to this machine."""
    host = raw.strip().rstrip("/")
    parts = urlsplit(host)
    printable = all(33 <= ord(char) <= 126 for char in host)  # a URL has no spaces or controls
    if not printable or parts.scheme not in ("http", "https") or not parts.hostname or not _port_is_valid(parts):
        raise AutoDLError(
            ErrorType.CONFIG_ERROR,
            f"AUTODL_HOST 不是有效的地址: {raw!r}",
            "示例: https://private.autodl.com 或 https://api.autodl.com; 端口须在 1..65535, 地址中不能有空格。",
            {"path": "AUTODL_HOST"},
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise AutoDLError(
            ErrorType.CONFIG_ERROR,
            "AUTODL_HOST 使用明文 http, 令牌会在网络上明文传输。",
            "改用 https:// ; 明文 http 只允许本机地址 (如本地模拟器 http://127.0.0.1:PORT)。",
            {"path": "AUTODL_HOST", "host": host},
        )
    return host


def _describe_character(char: str) -> str:
    names = {"\n": "换行符", "\r": "回车符", "\t": "制表符", " ": "空格"}
    return f"{names.get(char, '不可见或非 ASCII 字符')} (U+{ord(char):04X})"


def _check_token_characters(token: str, where: str) -> None:
    """A token travels in an HTTP header: visible ASCII only. A stray newline from a
    copy-paste would otherwise fail inside the HTTP library, with the token in the message."""
    for position, char in enumerate(token):
        if not 33 <= ord(char) <= 126:
            raise AutoDLError(
                ErrorType.AUTH_ERROR,
                "令牌格式不对 (token is malformed): 含有不能放进 HTTP 请求头的字符, 未发送任何请求。",
                "令牌只由可见的 ASCII 字符组成: 从 AutoDL 控制台 → 设置 → 开发者Token 重新复制, "
                "确认中间没有换行、空格或全角字符, 再写入 .env 或 AUTODL_TOKEN。",
                {
                    "code": "TokenMalformed",
                    "msg": f"第 {position + 1} 个字符是{_describe_character(char)}",
                    "http_status": None,
                    "where": where,
                },
            )


def resolve(name: str, sources: list[tuple[str, dict[str, str]]]) -> tuple[str | None, list[str]]:
    """(the first non-blank value of `name` in `sources`, stripped; where it was whitespace only).

    `sources` are (where, values) in order of precedence: the environment, then `.env`. An
    empty or whitespace-only value counts as unset, so the next source still applies (an
    empty `AUTODL_HOST=` in the environment never hides `.env`); the caller refuses a
    whitespace-only value that nothing after it replaced (`blank_setting_error`).
    """
    blank = []
    for where, values in sources:
        value = values.get(name)
        if value and value.strip():
            return value.strip(), blank
        if value:
            blank.append(where)
    return None, blank


def blank_setting_error(name: str, places: list[str], hint: str) -> AutoDLError:
    """A setting given as whitespace only: it meant to say something, so the default is not assumed."""
    return AutoDLError(
        ErrorType.CONFIG_ERROR,
        f"{name} 只有空白字符 ({', '.join(places)}), 没有使用默认值, 未发送任何请求。",
        hint,
        {"path": name, "blank_in": places},
    )


def load_settings(environ: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    # Resolved at call time, not bound as a default, so ENV_FILE can be redirected (tests).
    env_file = ENV_FILE if env_file is None else env_file
    file_values = _read_env_file(env_file)

    def sources(name: str) -> list[tuple[str, dict[str, str]]]:
        return [(f"环境变量 {name}", environ), (str(env_file), file_values)]

    token, blank = resolve("AUTODL_TOKEN", sources("AUTODL_TOKEN"))
    if token is None or token == PLACEHOLDER_TOKEN:
        raise AutoDLError(
            ErrorType.TOKEN_MISSING,
            "没有找到 AutoDL 开发者令牌 (AUTODL_TOKEN)" + (f": {', '.join(blank)} 只有空白字符。" if blank else "。"),
            "向用户索取令牌 (AutoDL 控制台 → 设置 → 开发者Token), 然后把 .env.example "
            "复制为 .env 并把 your_token_here 替换为令牌; 或设置环境变量 AUTODL_TOKEN。"
            "只想试用: 给 queue_submit.py 加 --sim, 在本地模拟器上运行, 不需要令牌。",
            {"looked_in": ["环境变量 AUTODL_TOKEN", str(env_file)], **({"blank_in": blank} if blank else {})},
        )
    register_secret(token)
    _check_token_characters(token, "环境变量 AUTODL_TOKEN" if environ.get("AUTODL_TOKEN", "").strip() else str(env_file))

    timeout_text, blank = resolve("AUTODL_HTTP_TIMEOUT", sources("AUTODL_HTTP_TIMEOUT"))
    if timeout_text is None and blank:
        raise blank_setting_error("AUTODL_HTTP_TIMEOUT", blank, "删除该设置使用默认 30 秒, 或填写如 60。")
    try:
        http_timeout = float(timeout_text) if timeout_text else DEFAULT_HTTP_TIMEOUT_SECONDS
        # nan/inf/1e300 break the socket layer (OverflowError); no sane call waits an hour.
        if not math.isfinite(http_timeout) or not 0 < http_timeout <= MAX_HTTP_TIMEOUT_SECONDS:
            raise ValueError
    except ValueError:
        raise AutoDLError(
            ErrorType.CONFIG_ERROR,
            f"AUTODL_HTTP_TIMEOUT 必须是有限正数 (秒), 0 < T <= {MAX_HTTP_TIMEOUT_SECONDS:g}: {timeout_text!r}",
            "删除该设置使用默认 30 秒, 或填写如 60。",
            {"path": "AUTODL_HTTP_TIMEOUT", "maximum": MAX_HTTP_TIMEOUT_SECONDS},
        ) from None

    host, blank = resolve("AUTODL_HOST", sources("AUTODL_HOST"))
    if host is None and blank:
        # A blank host must not quietly mean production: the user meant some address.
        raise blank_setting_error("AUTODL_HOST", blank, f"填写平台地址 (如 {DEFAULT_HOST} 或本地模拟器 http://127.0.0.1:PORT), "
                                  "或删除该设置使用默认地址。")
    return Settings(host=normalize_host(host or DEFAULT_HOST), http_timeout=http_timeout, token=token)
