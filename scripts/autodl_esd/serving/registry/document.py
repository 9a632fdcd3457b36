"""The registry document (schemas/registry.schema.json): build one, check it, write it.

A registry lists the running containers of one deployment with the URL a client calls. The
watcher builds one per cycle (`registry_document`, an item per container from
`service_entry`), checks it against the schema before publishing (`validate_registry`) and
writes it for file readers (`write_atomically`). Reading one is `serving.pool.parse_registry`,
the bundle's single parser: it lives in the client library because that file stands alone.

What readers act on is its `membership` (replicas, stale flag, end), not its timestamps. A
registry the watcher kept through an outage says so with `stale` (`mark_stale`); one whose
deployment ended says `ended` (`DEPLOYMENT_STOPPED` / `DEPLOYMENT_GONE`, the guard's names).
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Any

from ...core import files
from ...core.clock import now_timestamp
from ...core.deps import SKILL_ROOT, require
from ...platform.containers import primary_service_url

REGISTRY_SCHEMA = SKILL_ROOT / "schemas" / "registry.schema.json"
# The registry's timestamp format (RFC 3339 with an explicit offset), as the schema says.
TIMESTAMP_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
MACHINE_ID_PATTERN = re.compile(r"^[0-9a-f]{10}$")
# Why a watch ended with its deployment (the guard's names for the same ends).
DEPLOYMENT_STOPPED, DEPLOYMENT_GONE = "deployment_stopped", "deployment_gone"


def _timestamp_or_now(value: Any) -> str:
    return value if isinstance(value, str) and TIMESTAMP_PATTERN.match(value) else now_timestamp()


# --- building -------------------------------------------------------------------------


def service_entry(container: dict[str, Any], port: int | None = None) -> dict[str, Any] | None:
    """The registry item of a running container, or None when it has no usable URL."""
    url = primary_service_url(container, port)
    uuid = container.get("uuid")
    if not isinstance(uuid, str) or not uuid or not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None  # a record we cannot use (missing or odd fields) is not registered
    machine_id = container.get("machine_id")
    if not isinstance(machine_id, str) or not MACHINE_ID_PATTERN.match(machine_id):
        machine_id = uuid.split("-")[1] if uuid.count("-") == 2 else machine_id
    return {
        "container_uuid": uuid,
        "url": url,
        "machine_id": machine_id,
        "gpu_name": container.get("gpu_name") or None,
        "since": _timestamp_or_now(container.get("started_at")),
        "healthy": None,  # unknown until a health probe says otherwise (see watcher.HealthTracker)
    }


def registry_document(
    deployment_uuid: str,
    services: list[dict[str, Any]],
    *,
    resynced_at: str | None = None,
    stale_reason: str | None = None,
    ended: str | None = None,
    ended_reason: str | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {"status": "success", "deployment_uuid": deployment_uuid, "generated_at": now_timestamp()}
    if resynced_at:
        document["resynced_at"] = resynced_at
    if stale_reason:
        document["stale"] = True
        document["stale_reason"] = stale_reason
    if ended:
        document["ended"] = ended
        document["ended_reason"] = ended_reason or ended
    document["services"] = services
    return document


@lru_cache(maxsize=1)
def _registry_validator() -> Any:
    jsonschema = require("jsonschema")
    schema = json.loads(REGISTRY_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def validate_registry(document: dict[str, Any]) -> None:
    """Raise ValueError when a document we are about to publish breaks the schema (a bug)."""
    errors = sorted(_registry_validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(part) for part in errors[0].absolute_path)
        raise ValueError(f"registry breaks registry.schema.json at '{where}': {errors[0].message}")


# --- what readers act on --------------------------------------------------------------


def membership(document: dict[str, Any]) -> Any:
    """What readers act on: the replicas, the stale flag and the end (not the timestamps)."""
    return (json.dumps(document.get("services"), sort_keys=True, allow_nan=False), bool(document.get("stale")), document.get("stale_reason"),
            document.get("ended"))


def mark_stale(document: dict[str, Any], reason: str) -> dict[str, Any]:
    if document.get("stale"):
        return document
    return {**document, "stale": True, "stale_reason": reason}


# --- writing --------------------------------------------------------------------------


def write_atomically(path: str | os.PathLike, document: dict[str, Any]) -> None:
    """Replace `path` with the JSON document so a reader sees the old file or the new one,
    fsynced first so a crash cannot leave a renamed but empty file (raises OSError; the
    watcher logs it and keeps the last good file)."""
    text = json.dumps(document, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
    files.replace_file(path, text.encode("utf-8"), fsync=True)
