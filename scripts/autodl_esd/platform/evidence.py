"""Is a deployment the platform lists the same as the config at hand? Evidence, not a guess.

A live deployment with the config's name may be the result of an earlier run of the same
command (do not buy a second one) or an unrelated deployment that happens to share the name.
`same_config` compares the config with the deployment's template after normalising what the
list endpoint changes (memory in bytes instead of GB, lists in another order); only fields
both sides carry are compared, and `compared_fields` says which.
"""

from __future__ import annotations

from typing import Any

from .units import BYTES_PER_GB, looks_like_bytes

# Template fields that decide what a deployment runs and where; the list shows them in
# `template` (or at the top level, e.g. image_uuid).
COMPARED_TEMPLATE_FIELDS = (
    "gpu_name_set", "gpu_num", "cuda_v", "cuda_v_from", "cuda_v_to", "cpu_num_from", "cpu_num_to",
    "memory_size_from", "memory_size_to", "price_from", "price_to", "image_uuid", "cmd", "dc_list",
)
COMPARED_TOP_FIELDS = ("deployment_type", "parallelism_num")
UNORDERED = {"gpu_name_set", "dc_list"}


def _normalised(field: str, value: Any) -> Any:
    if field.startswith("memory_size") and looks_like_bytes(value):
        return round(value / BYTES_PER_GB)
    if field in UNORDERED and isinstance(value, list):
        return sorted(str(item) for item in value)
    return value


def compare_config(config: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
    """{same_config: true|false|null, compared_fields, differences[{field, config, deployment}]}."""
    mine = config.get("container_template") or {}
    theirs = deployment.get("template") if isinstance(deployment.get("template"), dict) else {}
    pairs: list[tuple[str, Any, Any]] = []
    for field in COMPARED_TEMPLATE_FIELDS:
        listed = theirs[field] if field in theirs else deployment.get(field) if field in ("image_uuid", "dc_list", "gpu_name_set") else None
        if field in mine and listed is not None:
            pairs.append((field, mine[field], listed))
    for field in COMPARED_TOP_FIELDS:
        if field in config and deployment.get(field) is not None:
            pairs.append((field, config[field], deployment[field]))
    differences = [{"field": field, "config": ours, "deployment": listed} for field, ours, listed in pairs
                   if _normalised(field, ours) != _normalised(field, listed)]
    return {
        "same_config": (not differences) if pairs else None,
        "compared_fields": [field for field, _ours, _listed in pairs],
        "differences": differences,
    }


def existing_deployment(config: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
    """What tells an agent whether this live deployment is the one it meant to create."""
    return {
        "deployment_uuid": deployment.get("uuid"),
        "name": deployment.get("name"),
        "status": deployment.get("status"),
        "created_at": deployment.get("created_at"),
        **compare_config(config, deployment),
    }
