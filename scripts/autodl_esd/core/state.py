"""Where the bundle keeps state that must outlive one run (guards, notification counts).

`$XDG_STATE_HOME/autodl-elastic-deploy` when XDG_STATE_HOME is set (an absolute path, as
the XDG spec requires), else `<skill root>/.state`, which .gitignore keeps out of the repo.
Nothing secret is ever written there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .deps import SKILL_ROOT

STATE_APP_DIR = "autodl-elastic-deploy"


def state_root(environ: Any = None) -> Path:
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / STATE_APP_DIR
    return SKILL_ROOT / ".state"


def write_json_atomically(path: Path, document: Any) -> None:
    """Write then rename: a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, ensure_ascii=False, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(temporary, path)
