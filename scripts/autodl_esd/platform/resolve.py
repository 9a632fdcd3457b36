"""Find the one deployment (or container) a command is about.

A deployment is named in one of three ways (see `cli.add_deployment_selector`):

- `--deployment-uuid UUID`: looked up with the list filter `deployment_uuid`;
- `--name NAME`: exact name, as the platform matches it;
- `--config FILE`: the `name` inside a deployment config file.

Names are not unique on the platform: re-deploying under the same name after a stop leaves
several deployments with one name. Such a name is ambiguous and an error that lists the
candidates (uuid, type, status, created_at), never a guess — the scripts that take a
deployment include stop and delete, where picking the wrong one is not recoverable. The
agent repeats the command with `--deployment-uuid`.

After a change (scale, stop, delete, ...) scripts read the object back with `read_back` and
say whether the platform shows the new state (`"verified": true`).
"""

from __future__ import annotations

import re
import time
from fnmatch import fnmatchcase
from typing import Any, Callable

from . import api
from ..core.cli import UsageError, confirmation_required
from .config import load_config
from ..core.errors import AutoDLError, ErrorType
from .units import gb_from_bytes, yuan_from_price_units

DEPLOYMENT_UUID_PATTERN = re.compile(r"^[0-9a-f]{15}$")
# `<deployment uuid: 15 hex>-<machine id>-<8 hex>`, e.g. da497aea1eb8343-f94411a60c-a394fb30
CONTAINER_UUID_PATTERN = re.compile(r"^(?P<deployment>[0-9a-f]{15})-(?P<machine>[0-9A-Za-z]+)-(?P<suffix>[0-9a-f]{8})$")

LIST_HINT = "用 list_deployments.py 查看账号下的部署 (名称须完全一致, 包括大小写和空格)。"


def deployment_summary(deployment: dict[str, Any]) -> dict[str, Any]:
    """The fields that tell deployments apart, as shown in candidates and results."""
    return {
        "deployment_uuid": deployment.get("uuid"),
        "name": deployment.get("name"),
        "deployment_type": deployment.get("deployment_type"),
        "status": deployment.get("status"),
        "replica_num": deployment.get("replica_num"),
        "running_num": deployment.get("running_num"),
        "created_at": deployment.get("created_at"),
    }


def is_record_not_found(error: AutoDLError) -> bool:
    """The platform's way of saying an id does not exist (RecordNotFoundError)."""
    return getattr(error, "code", None) == "RecordNotFoundError"


def deployment_view(deployment: dict[str, Any]) -> dict[str, Any]:
    """The list item as the API sent it, plus memory in GB and prices in yuan beside the raw values."""
    shown = {"deployment_uuid": deployment.get("uuid"), **deployment}
    if isinstance(deployment.get("price_estimates"), (int, float)):
        shown["price_estimates_yuan"] = yuan_from_price_units(deployment["price_estimates"])
    template = deployment.get("template")
    if isinstance(template, dict):
        template = dict(template)
        for key in ("memory_size_from", "memory_size_to"):
            if isinstance(template.get(key), int):
                template[f"{key}_gb"] = gb_from_bytes(template[key])
        for key in ("price_from", "price_to"):
            if isinstance(template.get(key), (int, float)):
                template[f"{key}_yuan"] = yuan_from_price_units(template[key])
        shown["template"] = template
    return shown


def deployment_by_uuid(client: Any, deployment_uuid: str) -> dict[str, Any] | None:
    """The list item for this uuid, or None (also checks the server honoured the filter)."""
    try:
        matches = api.list_deployments(client, deployment_uuid=deployment_uuid)
    except AutoDLError as error:
        if not is_record_not_found(error):
            raise
        matches = []
    return next((d for d in matches if d.get("uuid") == deployment_uuid), None)


def deployments_named(client: Any, name: str) -> list[dict[str, Any]]:
    return [d for d in api.list_deployments(client, name=name) if d.get("name") == name]


def deployments_matching(client: Any, pattern: str, status: str | None = None) -> list[dict[str, Any]]:
    """Deployments whose WHOLE name matches a shell-style pattern (`demo-*` never catches
    `mydemo-x`), case-sensitive like --name. The platform has no pattern filter: list all."""
    return [d for d in api.list_deployments(client, status=status)
            if isinstance(d.get("name"), str) and fnmatchcase(d["name"], pattern)]


def split_excluded(
    deployments: list[dict[str, Any]], exclude: list[str] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, excluded): `--exclude` patterns match the WHOLE name, like --name-glob."""
    patterns = exclude or []
    excluded = [d for d in deployments if any(fnmatchcase(str(d.get("name")), p) for p in patterns)]
    return [d for d in deployments if d not in excluded], excluded


# JSON type names as a user reads them in a message about a config file's top level.
JSON_TYPE_NAMES = {list: "数组", str: "字符串", int: "数字", float: "数字", bool: "布尔值", type(None): "null"}


def _name_from_config(config_path: str) -> str:
    config = load_config(config_path)
    if not isinstance(config, dict):
        kind = JSON_TYPE_NAMES.get(type(config), type(config).__name__)
        raise AutoDLError(
            ErrorType.CONFIG_ERROR,
            f"配置文件不是 JSON 对象 (顶层是{kind}): {config_path}",
            "部署配置的顶层必须是 {...} 对象 (含 name 等字段); 用 validate_config.py 检查该文件, "
            "或改用 --deployment-uuid / --name 指定部署。",
            {"path": str(config_path), "top_level_type": kind},
        )
    name = config.get("name")
    if not isinstance(name, str) or not name.strip():
        raise AutoDLError(
            ErrorType.CONFIG_ERROR,
            f"配置文件中没有部署名称 (name): {config_path}",
            "--config 按配置里的 name 查找部署; 改用 --deployment-uuid 或 --name。",
            {"path": str(config_path)},
        )
    return name


def resolve_deployment(
    client: Any,
    *,
    deployment_uuid: str | None = None,
    name: str | None = None,
    config_path: str | None = None,
    gone_hint: str = "",
) -> dict[str, Any]:
    """The deployment list item named by exactly one of uuid, name or config file.

    `gone_hint` is put before the not_found hint by scripts for which "not found" has a
    likely innocent reading (delete: a repeated delete after a timed-out one). not_found
    stays an error either way, so a mistyped name never looks like success.
    """
    if deployment_uuid:
        deployment_uuid = deployment_uuid.strip()
        if not DEPLOYMENT_UUID_PATTERN.match(deployment_uuid):
            # Bad input, not a missing deployment: say so before asking the platform.
            raise AutoDLError(
                ErrorType.USAGE_ERROR,
                f"--deployment-uuid 格式不对: {deployment_uuid!r}",
                "部署 UUID 是 15 位十六进制 (如 833f1cd5a764fa3), 不是部署名称或容器 UUID; "
                "按名称找请用 --name。" + LIST_HINT,
                {"deployment_uuid": deployment_uuid, "expected_format": DEPLOYMENT_UUID_PATTERN.pattern},
            )
        found = deployment_by_uuid(client, deployment_uuid)
        if found is None:
            raise AutoDLError(
                ErrorType.NOT_FOUND,
                f"没有找到部署 {deployment_uuid} (可能已删除)。",
                gone_hint + LIST_HINT,
                {"deployment_uuid": deployment_uuid},
            )
        return found

    source = "name"
    if config_path:
        name, source = _name_from_config(config_path), "config"
    if not name:
        raise UsageError("需要指定部署: --deployment-uuid、--name 或 --config 之一。")
    matches = deployments_named(client, name)
    if not matches:
        details: dict[str, Any] = {"name": name}
        if source == "config":
            details["config"] = str(config_path)
        raise AutoDLError(
            ErrorType.NOT_FOUND,
            f"没有名为 {name!r} 的部署。",
            gone_hint + LIST_HINT + (" 该配置可能还没有提交过。" if source == "config" else ""),
            details,
        )
    if len(matches) > 1:
        candidates = [deployment_summary(d) for d in matches]
        raise AutoDLError(
            ErrorType.USAGE_ERROR,
            f"有 {len(matches)} 个部署都叫 {name!r}, 无法确定是哪一个。",
            "从 details.candidates 中选一个, 改用 --deployment-uuid UUID 重新执行。",
            {"name": name, "candidates": candidates},
        )
    return matches[0]


def resolve_from_args(client: Any, args: Any, gone_hint: str = "") -> dict[str, Any]:
    """resolve_deployment for the flags added by cli.add_deployment_selector."""
    return resolve_deployment(
        client,
        deployment_uuid=getattr(args, "deployment_uuid", None),
        name=getattr(args, "name", None),
        config_path=getattr(args, "config", None),
        gone_hint=gone_hint,
    )


def deployment_uuid_of_container(container_uuid: str) -> str | None:
    """The deployment part of a container uuid, or None when it does not have that shape."""
    match = CONTAINER_UUID_PATTERN.match(container_uuid.strip())
    return match.group("deployment") if match else None


def owner_of_container(container_uuid: str) -> str:
    """The deployment uuid inside a container uuid; a malformed one is bad input.

    usage_error, not not_found: not_found is for a well-formed uuid the platform does not know.
    """
    deployment_uuid = deployment_uuid_of_container(container_uuid.strip())
    if not deployment_uuid:
        raise AutoDLError(
            ErrorType.USAGE_ERROR,
            f"--container-uuid 格式不对: {container_uuid!r}",
            "容器 UUID 形如 <部署UUID>-<主机ID>-<8位十六进制> (如 da497aea1eb8343-f94411a60c-a394fb30); "
            "用 list_containers.py 查看。",
            {"container_uuid": container_uuid, "expected_format": CONTAINER_UUID_PATTERN.pattern},
        )
    return deployment_uuid


def resolve_container(client: Any, container_uuid: str, deployment_uuid: str | None = None) -> dict[str, Any]:
    """The container record (released ones included), found through its deployment.

    The container list is per deployment; the deployment is taken from the container uuid
    (`<deployment>-<machine>-<8 hex>`) when not given.
    """
    container_uuid = container_uuid.strip()
    deployment_uuid = deployment_uuid or owner_of_container(container_uuid)
    try:
        containers = api.list_containers(client, deployment_uuid, container_uuid=container_uuid, released=True)
    except AutoDLError as error:
        if not is_record_not_found(error):
            raise
        containers = []
    found = next((c for c in containers if c.get("uuid") == container_uuid), None)
    if found is None:
        raise AutoDLError(
            ErrorType.NOT_FOUND,
            f"没有找到容器 {container_uuid} (部署 {deployment_uuid})。",
            "用 list_containers.py --deployment-uuid UUID --released 查看该部署的全部容器。",
            {"container_uuid": container_uuid, "deployment_uuid": deployment_uuid},
        )
    return found


def require_confirmation(yes: bool, verb: str, deployment: dict[str, Any], impact: dict[str, Any], action: str) -> None:
    """Without --yes, answer confirmation_required describing what `verb` would touch."""
    if yes:
        return
    raise confirmation_required(
        f"{verb}部署 {deployment.get('name')} ({deployment['uuid']}, {deployment.get('deployment_type')}, "
        f"状态 {deployment.get('status')}, {impact['live_container_count']} 个容器在运行或启动中)",
        {"action": action, **impact},
    )

# --- reading back after a change ------------------------------------------------------

# The platform applies changes asynchronously; five looks one second apart cover the lag
# seen in practice without making a script that changed something hang.
READ_BACK_ATTEMPTS = 5
READ_BACK_PAUSE_SECONDS = 1.0


def _sleep(seconds: float) -> None:
    """Indirection so tests can skip real waiting."""
    time.sleep(seconds)


def read_back(
    fetch: Callable[[], Any],
    done: Callable[[Any], bool],
    *,
    attempts: int = READ_BACK_ATTEMPTS,
    pause: float = READ_BACK_PAUSE_SECONDS,
) -> tuple[Any, dict[str, Any]]:
    """Re-read after a change until `done(value)`: (last value, {"verified": ...}).

    A failed read never raises: the change itself was accepted, and turning that into an
    error would invite the caller to repeat it. The report then carries `read_back_error`.
    """
    last: Any = None
    error: str | None = None
    for attempt in range(attempts):
        if attempt:
            _sleep(pause)
        try:
            last, error = fetch(), None
        except AutoDLError as failure:
            error = failure.message
            continue
        if done(last):
            return last, {"verified": True}
    report: dict[str, Any] = {"verified": False}
    if error:
        report["read_back_error"] = error
    return last, report


# What the platform applies when no expire_in_minutes is sent: 1440 min (24 h), the public
# cloud's default and the private cloud's only value (references/platform-endpoints.md, 设置调度黑名单).
BLACKLIST_DEFAULT_EXPIRE_MINUTES = 1440


def blacklist_expiry(expire_minutes: int | None) -> dict[str, Any]:
    """How long a blacklisting lasts, always as integer minutes, and whether that is the default.

    `expire_default: true` means --expire-minutes was not given (nothing sent, the platform's
    1440 applies). The private cloud ignores the field and always uses 24 h; that is said in
    a message, never as a value.
    """
    if expire_minutes is None:
        return {"expire_in_minutes": BLACKLIST_DEFAULT_EXPIRE_MINUTES, "expire_default": True}
    return {"expire_in_minutes": expire_minutes, "expire_default": False}


BLACKLIST_EXPIRY_NOTE = (
    "expire_default=true 表示没有指定 --expire-minutes, 平台默认 1440 分钟 (24 小时) 后解除; "
    "私有云固定 24 小时, 不看 --expire-minutes。"
)


def verify_blacklisted(client: Any, machine_ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One look at the blacklist after adding machines: ({machine_id: entry or None}, {"verified": ...}).

    One look only: the list endpoint exists on the public cloud only, so a failure is
    expected on a private cluster and is reported (read_back_error), not retried.
    """
    entries, verification = read_back(
        lambda: api.list_blacklist(client),
        lambda items: all(any(item.get("machine_id") == machine for item in items) for machine in machine_ids),
        attempts=1,
    )
    found = {machine: next((item for item in entries or [] if item.get("machine_id") == machine), None) for machine in machine_ids}
    return found, verification
