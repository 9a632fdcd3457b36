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
from urllib.parse import urlsplit

from .deps import SKILL_ROOT, require
from .errors import AutoDLError, ErrorType
from .output import register_secret

DEFAULT_HOST = "https://private.autodl.com"
# Matches common HTTP client defaults; list calls on a busy account answer within seconds.
DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
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


def normalize_host(raw: str) -> str:
    """Validate AUTODL_HOST: https anywhere, plain http only to this machine."""
    host = raw.strip().rstrip("/")
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AutoDLError(
            ErrorType.CONFIG_ERROR,
            f"AUTODL_HOST 不是有效的地址: {raw!r}",
            "示例: https://private.autodl.com 或 https://api.autodl.com",
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

    timeout_text = lookup("AUTODL_HTTP_TIMEOUT")
    try:
        http_timeout = float(timeout_text) if timeout_text else DEFAULT_HTTP_TIMEOUT_SECONDS
        if not math.isfinite(http_timeout) or http_timeout <= 0:  # nan/inf break the socket layer
            raise ValueError
    except ValueError:
        raise AutoDLError(
            ErrorType.CONFIG_ERROR,
            f"AUTODL_HTTP_TIMEOUT 必须是正数 (秒): {timeout_text!r}",
            "删除该设置使用默认 30 秒, 或填写如 60。",
            {"path": "AUTODL_HTTP_TIMEOUT"},
        ) from None

    return Settings(
        host=normalize_host(lookup("AUTODL_HOST") or DEFAULT_HOST),
        http_timeout=http_timeout,
        token=token,
    )
