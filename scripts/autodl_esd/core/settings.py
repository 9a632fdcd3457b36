"""Token, host and timeout: environment first, then `.env` at the skill root.

The `.env` file is read with python-dotenv's `dotenv_values`, which parses the file without
touching `os.environ`, so a token from `.env` never leaks into child processes.
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .deps import SKILL_ROOT, require
from .errors import AutoDLError, ErrorType
from .output import register_secret

DEFAULT_HOST = "https://private.autodl.com"
# Matches common HTTP client defaults; list calls on a busy account answer within seconds.
DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
# Upper bound of AUTODL_HTTP_TIMEOUT: one request waiting longer than an hour is a hang.
MAX_HTTP_TIMEOUT_SECONDS = 3600.0
ENV_FILE = SKILL_ROOT / ".env"
PLACEHOLDER_TOKEN = "your_token_here"


@dataclass(frozen=True)
class Settings:
    host: str
    http_timeout: float
    token: str = field(repr=False)


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    dotenv = require("dotenv")
    return {key: value for key, value in dotenv.dotenv_values(path).items() if value is not None}


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


def load_settings(environ: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    # Resolved at call time, not bound as a default, so ENV_FILE can be redirected (tests).
    env_file = ENV_FILE if env_file is None else env_file
    file_values = _read_env_file(env_file)

    def lookup(name: str) -> str | None:
        value = environ.get(name) or file_values.get(name)
        return value.strip() if value and value.strip() else None

    token = lookup("AUTODL_TOKEN")
    if token is None or token == PLACEHOLDER_TOKEN:
        raise AutoDLError(
            ErrorType.TOKEN_MISSING,
            "没有找到 AutoDL 开发者令牌 (AUTODL_TOKEN)。",
            "向用户索取令牌 (AutoDL 控制台 → 设置 → 开发者Token), 然后把 .env.example "
            "复制为 .env 并把 your_token_here 替换为令牌; 或设置环境变量 AUTODL_TOKEN。"
            "只想试用: 给 queue_submit.py 加 --sim, 在本地模拟器上运行, 不需要令牌。",
            {"looked_in": ["环境变量 AUTODL_TOKEN", str(env_file)]},
        )
    register_secret(token)
    _check_token_characters(token, "环境变量 AUTODL_TOKEN" if environ.get("AUTODL_TOKEN", "").strip() else str(env_file))

    timeout_text = lookup("AUTODL_HTTP_TIMEOUT")
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

    return Settings(
        host=normalize_host(lookup("AUTODL_HOST") or DEFAULT_HOST),
        http_timeout=http_timeout,
        token=token,
    )
