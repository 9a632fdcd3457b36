"""serve_gateway.py's routes as the user wrote them: `--route MODEL=DEPLOYMENT`,
`--route-prefix PREFIX=DEPLOYMENT` (both repeatable) or `--routes-file FILE`, checked
before anything is contacted. Each becomes a `RouteSpec`; serve.py resolves its deployment
(a uuid or an exact name) and builds the `routes.Route`.

A routes file (schemas/routes.schema.json) may set per route what the flags set for all:
`policy`, `max_inflight_per_replica`, and `autoscale` (`false`: never; an object: this
route's autoscaler, its keys overriding the --autoscale flags of the same name, e.g. its
own `max_hourly_cost`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...core import strict_json
from ...core.errors import AutoDLError, ErrorType
from ...platform.config import SCHEMA_DIR

ROUTES_SCHEMA = SCHEMA_DIR / "routes.schema.json"
# Paths the gateway answers itself (or where model routes live): a prefix there would hide them.
RESERVED_PREFIXES = ("/_gateway", "/v1")


@dataclass(frozen=True)
class RouteSpec:
    deployment: str  # a deployment uuid or an exact deployment name
    model: str | None = None
    prefix: str | None = None
    policy: str | None = None  # None: --policy
    max_inflight_per_replica: int | None = None  # None: --max-inflight-per-replica
    autoscale: Any = None  # None: follow --autoscale; False: never; dict: on, these flag values
    origin: str = ""  # where it was written, for messages

    @property
    def name(self) -> str:
        return self.model if self.model is not None else str(self.prefix)

    @property
    def overrides(self) -> dict[str, Any]:
        return {key: value for key, value in (("policy", self.policy),
                                              ("max_inflight_per_replica", self.max_inflight_per_replica))
                if value is not None}


@dataclass
class _Problems:
    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.items.append({"path": where, "message": message})


def _usage(message: str, hint: str, details: dict[str, Any] | None = None) -> AutoDLError:
    return AutoDLError(ErrorType.USAGE_ERROR, message, hint, details or {})


def _split(text: str, flag: str, example: str) -> tuple[str, str]:
    key, sep, deployment = text.partition("=")
    if not sep or not key.strip() or not deployment.strip():
        raise _usage(f"{flag} 格式不对: {text!r}", f"格式是 {flag} {example}; DEPLOYMENT 是部署 UUID 或完整的部署名称。",
                     {"flag": flag, "value": text})
    return key.strip(), deployment.strip()


def normalize_prefix(prefix: str) -> str | None:
    """`/sd/` -> `/sd`; None when it is not a usable prefix."""
    trimmed = prefix.rstrip("/")
    if not trimmed.startswith("/") or any(part in ("", ".", "..") for part in trimmed[1:].split("/")) \
            or any(char in trimmed for char in "?#% "):
        return None
    return trimmed


def specs_from_flags(routes: list[str] | None, prefixes: list[str] | None) -> list[RouteSpec]:
    specs = [RouteSpec(deployment, model=model, origin=f"--route {text}")
             for text in routes or () for model, deployment in [_split(text, "--route", "MODEL=DEPLOYMENT")]]
    for text in prefixes or ():
        prefix, deployment = _split(text, "--route-prefix", "/PREFIX=DEPLOYMENT")
        normalized = normalize_prefix(prefix)
        if normalized is None:
            raise _usage(f"--route-prefix 的前缀不对: {prefix!r}",
                         "前缀以 / 开头, 由路径段组成 (如 /sd 或 /tts/v2), 不含 ? # % 与空格, 不能只是 /。",
                         {"flag": "--route-prefix", "value": text})
        specs.append(RouteSpec(deployment, prefix=normalized, origin=f"--route-prefix {text}"))
    check_specs(specs)
    return specs


def specs_from_file(path: str) -> list[RouteSpec]:
    """The routes of a routes file; config_error when unreadable, validation_error listing every problem."""
    # As strictly as a deployment config: a FIFO, a directory, 10**5000, NaN or deep nesting is a clear error.
    document = strict_json.loads(strict_json.read_small_file(path, what="路由文件", hint="确认 --routes-file 的路径。"),
                                 path, what="路由文件")
    import jsonschema  # heavy: only when a routes file is given

    schema = json.loads(ROUTES_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    problems = strict_json.unusable_value_problems(document)
    if not problems:  # a marker (NaN, 10**30, a lone surrogate) said once by path, not again by the schema
        problems = [{"path": "/" + "/".join(str(part) for part in error.absolute_path), "message": error.message,
                     "hint": "格式见 schemas/routes.schema.json"}
                    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]
    if problems:
        raise AutoDLError(ErrorType.VALIDATION_ERROR, f"路由文件 {path} 有 {len(problems)} 处错误。",
                          "按 details.errors 逐条修改。", {"path": path, "errors": problems})
    specs = []
    for index, entry in enumerate(document["routes"]):
        prefix = entry.get("prefix")
        normalized = normalize_prefix(prefix) if prefix is not None else None
        if prefix is not None and normalized is None:
            raise AutoDLError(ErrorType.VALIDATION_ERROR, f"路由文件 {path} 第 {index + 1} 个路由的前缀不对: {prefix!r}",
                              "前缀以 / 开头, 由路径段组成 (如 /sd), 不能只是 /。",
                              {"path": path, "errors": [{"path": f"/routes/{index}/prefix", "message": "不是可用的路径前缀",
                                                         "hint": "如 /sd"}]})
        specs.append(RouteSpec(entry["deployment"], model=entry.get("model"), prefix=normalized,
                               policy=entry.get("policy"), max_inflight_per_replica=entry.get("max_inflight_per_replica"),
                               autoscale=entry.get("autoscale"), origin=f"{path} routes[{index}]"))
    check_specs(specs)
    return specs


def check_specs(specs: list[RouteSpec]) -> None:
    """usage_error for a model or prefix named twice, or a prefix over the gateway's own paths."""
    seen: dict[str, RouteSpec] = {}
    for spec in specs:
        key = ("model:" + spec.model) if spec.model is not None else ("prefix:" + str(spec.prefix))
        if key in seen:
            what = f"模型 {spec.model!r}" if spec.model is not None else f"前缀 {spec.prefix!r}"
            raise _usage(f"{what} 出现了两次 ({seen[key].origin}; {spec.origin})。",
                         "每个模型名 / 前缀只能对应一个部署; 删去重复的一条。",
                         {"duplicate": spec.name, "routes": [seen[key].origin, spec.origin]})
        seen[key] = spec
        if spec.prefix is not None:
            reserved = next((r for r in RESERVED_PREFIXES if spec.prefix == r or spec.prefix.startswith(r + "/")), None)
            if reserved is not None:
                raise _usage(f"前缀 {spec.prefix!r} 与网关自己的路径 {reserved} 冲突 ({spec.origin})。",
                             f"{reserved} 下的请求由网关自己处理 (/_gateway/) 或按 model 路由 (/v1/); 换一个前缀, 如 /sd。",
                             {"prefix": spec.prefix})
