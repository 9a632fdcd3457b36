"""Where the bundle keeps state that must outlive one run (guards, notification counts).

In this order: `$XDG_STATE_HOME/autodl-elastic-deploy` when XDG_STATE_HOME is set (an
absolute path, as the XDG spec requires); else `<skill root>/.state` (kept out of git by
.gitignore) when the skill folder is writable; else, for a skill installed read-only, the
XDG default `~/.local/state/autodl-elastic-deploy`. Every result of a script that used it
names the directory (`state_dir`, added by `core.cli.run` from `last_state_root`), so an
agent that set XDG_STATE_HOME for one call sees why the next call lists nothing. A directory
that can never be used (a file on the way, a name too long) is a config_error naming it the
first time it is asked for; one that cannot be created is, when something is first written.
Nothing secret is ever written there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import files
from .deps import SKILL_ROOT

STATE_APP_DIR = "autodl-elastic-deploy"
# The last directory state_root() answered in this process; core.cli.run reads and resets it.
last_state_root: Path | None = None
STATE_DIR_HINT = ("把 XDG_STATE_HOME 设为一个可写目录的绝对路径 (或取消设置, 使用技能目录下的 .state) 后重新运行; "
                  "换目录后, 原目录中的后台任务与记录不会出现在新目录里。")


def skill_dir_writable(path: Path = SKILL_ROOT) -> bool:
    """Whether the skill folder may hold `.state` (its own, if it exists). os.access, not a
    permission-bit check: a read-only mount says no even to root. Tests patch this."""
    state = path / ".state"
    return os.access(state if state.exists() else path, os.W_OK)


def state_root(environ: Any = None) -> Path:
    global last_state_root
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        root = Path(xdg) / STATE_APP_DIR
    elif skill_dir_writable():
        root = SKILL_ROOT / ".state"
    else:
        home = environ.get("HOME") or os.path.expanduser("~")
        root = Path(home) / ".local" / "state" / STATE_APP_DIR
    last_state_root = root
    return files.check_directory(root, "状态目录", hint=STATE_DIR_HINT)


def make_state_dir(directory: Path) -> Path:
    """`mkdir -p` of a directory under the state root; config_error naming it when it cannot be."""
    return files.make_directory(directory, "状态目录", hint=STATE_DIR_HINT)


def write_json_atomically(path: Path, document: Any) -> None:
    """Write then rename: a reader (or a crash) never sees half a file. Readable by this user
    only: a submission's record keeps its config, whose `cmd` or env may hold a key."""
    make_state_dir(path.parent)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    text = json.dumps(document, ensure_ascii=False, indent=2, allow_nan=False)
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, path)
