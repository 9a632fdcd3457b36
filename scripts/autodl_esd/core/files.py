"""Files and directories the user names: read, check and write them safely.

A config, `--out`, `.env`, the state directory, a registry or cluster file: every such path
comes from a person or an agent, so every way it can fail (missing, a directory, a FIFO, a
name too long, no permission, not UTF-8, a read-only disk) is an input error that names the
path and the reason, a `config_error` or `usage_error`, never an OSError surfacing as
internal_error. Scripts call these helpers instead of wrapping each `open` themselves.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import AutoDLError, ErrorType

# The reason an OS call on a path failed, in the words a user acts on (errno -> text).
_REASONS = {
    errno.ENOENT: "不存在",
    errno.ENAMETOOLONG: "文件名过长",
    errno.ENOTDIR: "路径中的某一级不是目录",
    errno.EISDIR: "是一个目录",
    errno.EACCES: "没有权限",
    errno.EPERM: "没有权限",
    errno.EROFS: "所在的文件系统只读",
    errno.ENOSPC: "磁盘空间已满",
    errno.EDQUOT: "超出磁盘配额",
    errno.ELOOP: "符号链接层数过多 (可能是循环链接)",
    errno.EINVAL: "路径无效",
    errno.EIO: "读写出错 (I/O 错误)",
    errno.EBUSY: "设备或文件正忙",
}


def reason(error: OSError | ValueError) -> str:
    """Why a path failed, for a message; a NUL in the path is a ValueError in Python."""
    if isinstance(error, ValueError):
        return "路径含有 NUL 字符"
    return _REASONS.get(error.errno, error.strerror or type(error).__name__)


def path_error(what: str, path: str | os.PathLike, why: str, *, error_type: ErrorType = ErrorType.CONFIG_ERROR,
               hint: str = "", **details: Any) -> AutoDLError:
    """The one shape of these errors: what it is, the path, the reason; details.path and .reason."""
    return AutoDLError(error_type, f"{what}不可用: {os.fspath(path)} ({why})", hint or "检查路径后重新运行。",
                       {"path": os.fspath(path), "reason": why, **details})


def _open_regular(path: str | os.PathLike, what: str, error_type: ErrorType, hint: str, missing_ok: bool) -> int | None:
    """A read-only descriptor of a regular file (None when missing and `missing_ok`)."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang; it is refused below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise path_error(what, path, "不存在", error_type=error_type, hint=hint) from None
    except (OSError, ValueError) as error:
        raise path_error(what, path, reason(error), error_type=error_type, hint=hint) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "是一个目录" if stat.S_ISDIR(mode) else "不是普通文件, 是管道/设备等特殊文件"
        raise path_error(what, path, kind, error_type=error_type, hint=hint)
    return fd


def check_input_file(path: str | os.PathLike, what: str, *, error_type: ErrorType = ErrorType.USAGE_ERROR,
                     hint: str = "") -> None:
    """Refuse, before any work, a file that cannot be read: missing, a directory, a FIFO, no permission."""
    fd = _open_regular(path, what, error_type, hint, missing_ok=False)
    if fd is not None:
        os.close(fd)


def read_bytes(path: str | os.PathLike, what: str, max_bytes: int, *, error_type: ErrorType = ErrorType.CONFIG_ERROR,
               hint: str = "", missing_ok: bool = False) -> bytes | None:
    """The bytes of a regular file of at most `max_bytes` (None for a missing file when
    `missing_ok`). A FIFO, a device or a directory is refused without reading from it."""
    fd = _open_regular(path, what, error_type, hint, missing_ok)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as error:
            raise path_error(what, path, reason(error), error_type=error_type, hint=hint) from None
    if len(data) > max_bytes:
        raise path_error(what, path, f"超过 {max_bytes} 字节", error_type=error_type, hint=hint, max_bytes=max_bytes)
    return data


def decode_utf8(data: bytes, path: str | os.PathLike, what: str, *,
                error_type: ErrorType = ErrorType.CONFIG_ERROR) -> str:
    """UTF-8 text (a BOM some Windows editors write is dropped), else an error with the offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise path_error(what, path, f"不是 UTF-8 编码, 第 {error.start} 字节无法解码", error_type=error_type,
                         hint="用编辑器把文件另存为 UTF-8 编码。", byte_offset=error.start) from None


def _check_existing_parent(target: Path, what: str, error_type: ErrorType, hint: str) -> None:
    parent = target.parent
    try:
        parent_mode = os.stat(parent).st_mode
    except (OSError, ValueError) as error:
        why = "所在目录不存在" if isinstance(error, FileNotFoundError) else f"所在目录{reason(error)}"
        raise path_error(what, target, why, error_type=error_type, hint=hint) from None
    if not stat.S_ISDIR(parent_mode):
        raise path_error(what, target, f"上一级 {parent} 不是目录", error_type=error_type, hint=hint)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise path_error(what, target, f"所在目录 {parent} 不可写", error_type=error_type, hint=hint)


def check_output_file(path: str | os.PathLike, what: str, *, error_type: ErrorType = ErrorType.USAGE_ERROR,
                      hint: str = "") -> Path:
    """Refuse, before any work, a path `write_atomically` could not replace: a directory, a
    special file (replacing /dev/null would swap the device for a file), a name too long, a
    missing or read-only directory."""
    target = Path(path)
    hint = hint or "换一个已存在且可写的目录中的文件路径。"
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except (OSError, ValueError) as error:
        raise path_error(what, target, reason(error), error_type=error_type, hint=hint) from None
    if mode is not None and stat.S_ISDIR(mode):
        raise path_error(what, target, "是一个目录, 需要文件路径", error_type=error_type, hint=hint)
    if mode is not None and not stat.S_ISREG(mode):
        raise path_error(what, target, "不是普通文件, 是管道/设备等特殊文件", error_type=error_type, hint=hint)
    _check_existing_parent(target, what, error_type, hint)
    return target


def replace_file(path: str | os.PathLike, data: bytes, *, mode: int = 0o600, fsync: bool = False) -> None:
    """Write then rename in the same directory, so a reader (or a crash) sees the old file or
    the new one, never half of one. Raises OSError; `write_atomically` reports it instead."""
    target = Path(path)
    # A short prefix: the temporary name must fit NAME_MAX even when the target's name nearly does.
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:32]}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:  # also a signal mid-write: never leave the temporary file behind
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def write_atomically(path: str | os.PathLike, text: str, what: str, *, mode: int = 0o600,
                     error_type: ErrorType = ErrorType.USAGE_ERROR, hint: str = "") -> None:
    """`replace_file` with UTF-8 text, every failure an error naming the path and the reason."""
    target = check_output_file(path, what, error_type=error_type, hint=hint)
    try:
        replace_file(target, text.encode("utf-8"), mode=mode)
    except OSError as error:
        raise path_error(what, target, reason(error), error_type=error_type,
                         hint=hint or "换一个可写的位置, 或先腾出磁盘空间。") from None


def check_directory(path: str | os.PathLike, what: str, *, error_type: ErrorType = ErrorType.CONFIG_ERROR,
                    hint: str = "", **details: Any) -> Path:
    """Refuse a directory path that can never be used: the path or an existing ancestor is a
    file, the name is too long, a component cannot be searched. A directory not created
    yet is fine (`make_directory` creates it when something is written)."""
    directory = Path(path)
    probe = directory
    while True:
        try:
            mode = os.stat(probe).st_mode
        except FileNotFoundError:
            if probe.parent == probe:
                return directory
            probe = probe.parent
            continue
        except (OSError, ValueError) as error:
            raise path_error(what, directory, reason(error), error_type=error_type, hint=hint, **details) from None
        if not stat.S_ISDIR(mode):
            why = "是一个文件, 不是目录" if probe == directory else f"{probe} 是一个文件, 不是目录"
            raise path_error(what, directory, why, error_type=error_type, hint=hint, **details)
        return directory


def make_directory(path: str | os.PathLike, what: str, *, error_type: ErrorType = ErrorType.CONFIG_ERROR,
                   hint: str = "", **details: Any) -> Path:
    """`mkdir -p`, every failure an error naming the path and the reason."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:
        why = "是一个文件, 不是目录" if isinstance(error, FileExistsError) else reason(error)
        raise path_error(what, directory, why, error_type=error_type, hint=hint, **details) from None
    return directory
