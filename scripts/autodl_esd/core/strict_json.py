"""Reading JSON files the user hands us, where every hostile input is a clear error.

The standard `json` module accepts things no AutoDL field can hold: `NaN`/`Infinity`,
`1e400` (becomes inf), integers of any length (over 4,300 digits `int()` refuses them),
strings with lone surrogates (cannot be encoded), and nesting deep enough to exhaust the
recursion limit. A file path may also name a FIFO (reading blocks forever) or `/dev/zero`
(never ends). `read_small_file` (through `core.files`) and `loads` turn each into a
`config_error`; values that parse but cannot be sent are kept as markers so
`unusable_value_problems` can name the path at fault, the way the validator names every
other problem.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import files
from .errors import AutoDLError, ErrorType

# A deployment config is a few KB; 1 MiB leaves room for long commands and is still small
# enough that a wrong path (a log, /dev/zero) is refused instead of read into memory.
MAX_CONFIG_BYTES = 1024 * 1024
# Configs nest three levels deep; deeper nesting is never a config.
MAX_JSON_DEPTH = 32
# The widest integer the platform decodes is int64 (19 digits); a longer literal is never a
# valid value, and keeping it as text avoids int()'s 4,300-digit limit.
MAX_INT_DIGITS = 19
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class UnusableNumber:
    """A number JSON can spell but no field can hold (NaN, Infinity, 1e400, 10**30)."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text if len(text) <= 40 else text[:20] + "..." + text[-8:]
        self.reason = reason

    def __repr__(self) -> str:
        return self.text


def _constant(name: str) -> UnusableNumber:
    return UnusableNumber(name, "不是有限数字 (JSON 标准不允许 NaN/Infinity)")


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else UnusableNumber(text, "超出浮点数范围")


def _int(text: str) -> Any:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return UnusableNumber(text, f"整数超过 {MAX_INT_DIGITS} 位, 超出平台 int64 范围")
    return int(text)


def _config_error(message: str, hint: str, path: str | Path, **details: Any) -> AutoDLError:
    return AutoDLError(ErrorType.CONFIG_ERROR, message, hint, {"path": str(path), **details})


def read_small_file(path: str | Path, max_bytes: int = MAX_CONFIG_BYTES, what: str = "配置文件",
                    hint: str = "检查路径; 示例配置在 examples/ 目录。") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else is config_error."""
    return files.read_bytes(path, what, max_bytes, hint=hint)


def loads(data: bytes, path: str | Path, what: str = "配置文件") -> Any:
    """Parse UTF-8 JSON; unusable numbers become UnusableNumber markers. `what` names the file
    in messages (a deployment config, a routes file)."""
    text = files.decode_utf8(data, path, what)
    if not text.strip():
        raise _config_error(f"{what}是空的: {path}", "从 examples/ 复制一个示例再修改。", path)
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as error:
        raise _config_error(
            f"{what}不是合法 JSON: 第 {error.lineno} 行第 {error.colno} 列: {error.msg}",
            "JSON 不允许注释和末尾逗号, 字符串必须用双引号。",
            path,
            line=error.lineno,
            column=error.colno,
        ) from None
    except RecursionError:
        raise _config_error(
            f"{what}嵌套过深, 无法解析: {path}",
            f"这类 JSON 只有几层嵌套 (上限 {MAX_JSON_DEPTH} 层); 确认传入的文件没错。",
            path,
            max_depth=MAX_JSON_DEPTH,
        ) from None


def _path_text(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(根)"


def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def unusable_value_problems(document: Any) -> list[dict[str, str]]:
    """Values no request can carry, each as {path, message, hint}; walks without recursion."""
    problems: list[dict[str, str]] = []
    stack: list[tuple[list[Any], Any]] = [([], document)]
    while stack:
        parts, value = stack.pop()
        path = _path_text(parts)
        if len(parts) > MAX_JSON_DEPTH:
            problems.append({"path": path, "message": f"嵌套超过 {MAX_JSON_DEPTH} 层", "hint": "部署配置只有几层嵌套; 删除多余的嵌套。"})
            continue
        if isinstance(value, UnusableNumber):
            problems.append({"path": path, "message": f"数值无效: {value.text} ({value.reason})", "hint": "写一个具体的整数, 取值范围见 schemas/deployment.schema.json。"})
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append({"path": path, "message": f"数值无效: {value} (不是有限数字)", "hint": "写一个具体的整数。"})
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            problems.append({"path": path, "message": "整数超出平台 int64 范围", "hint": "写一个合理的整数, 取值范围见 schemas/deployment.schema.json。"})
        elif isinstance(value, str) and _has_lone_surrogate(value):
            problems.append({"path": path, "message": "字符串含有无效的 Unicode 代理字符 (如 \\ud800), 无法发送", "hint": "删除该转义序列, 写正常的文字。"})
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if isinstance(key, str) and _has_lone_surrogate(key):
                    problems.append({"path": path, "message": "字段名含有无效的 Unicode 代理字符", "hint": "修正字段名。"})
                    continue
                stack.append((parts + [key], item))
        elif isinstance(value, list):
            for index in range(len(value) - 1, -1, -1):
                stack.append((parts + [index], value[index]))
    return problems
