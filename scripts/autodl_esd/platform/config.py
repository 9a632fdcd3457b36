"""Deployment config: load, validate (schema + semantic rules), normalize.

Validation reports every problem at once, each as `{path, message, hint}`, before any
network call. The schema (schemas/deployment.schema.json) is the single description of
the fields; this module adds what JSON Schema cannot say well: did-you-mean for typos,
unit mistakes with the corrected value, and rules across fields.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..core import strict_json
from ..core.deps import SKILL_ROOT, require
from ..core.errors import AutoDLError, ErrorType
from .units import (
    KNOWN_CUDA_CODES,
    ROOMY_MEMORY_GB_PER_GPU,
    TYPICAL_MEMORY_GB_PER_GPU,
    cuda_code_for,
    gb_hint_for_bytes,
    looks_like_bytes,
    price_units_for_yuan,
)

SCHEMA_DIR = SKILL_ROOT / "schemas"
DEPLOYMENT_SCHEMA = SCHEMA_DIR / "deployment.schema.json"
RANGES = ("cpu_num", "memory_size", "price", "cuda_v")
TEMPLATE = "container_template"
# The schema's pattern for strings that must hold something besides whitespace.
NOT_BLANK = "\\S"

Problem = dict[str, str]


@lru_cache(maxsize=None)
def load_schema(path: Path = DEPLOYMENT_SCHEMA) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def load_config(path: str | Path) -> Any:
    """Read a config file: a small regular UTF-8 JSON file, else config_error.

    Numbers no field can hold (NaN, 1e400, 30-digit integers) come back as markers that
    `validate_config` reports with their path.
    """
    return strict_json.loads(strict_json.read_small_file(path), path)


def dialect_of(config: dict[str, Any]) -> str:
    """`public` when the template names regions (dc_list), else `private`."""
    template = config.get(TEMPLATE)
    return "public" if isinstance(template, dict) and "dc_list" in template else "private"


def _path_text(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _field_name(parts: list[Any]) -> str:
    names = [part for part in parts if isinstance(part, str)]
    return names[-1] if names else ""


# --- schema errors, explained --------------------------------------------------------

def _unknown_key_problems(error: Any, schema_properties: dict[str, Any]) -> list[Problem]:
    instance = error.instance if isinstance(error.instance, dict) else {}
    parent = list(error.absolute_path)
    template_keys = set(load_schema()["$defs"]["container_template"]["properties"])
    top_keys = set(load_schema()["properties"])
    problems = []
    for key in sorted(set(instance) - set(schema_properties)):
        in_template = bool(parent) and parent[-1] == TEMPLATE
        if not in_template and key in template_keys:
            hint = f"'{key}' 应放在 container_template 里。"
        elif in_template and key in top_keys:
            hint = f"'{key}' 应放在顶层, 不在 container_template 里。"
        else:
            # Prefer fields the config does not have yet: a typo stands in for a missing key.
            candidates = [name for name in schema_properties if name not in instance] or list(schema_properties)
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
            hint = f"你是否想写 '{close[0]}'?" if close else f"允许的字段: {', '.join(sorted(schema_properties))}"
        problems.append({"path": _path_text(parent + [key]), "message": f"未知字段 '{key}'", "hint": hint})
    return problems


def _cuda_hint(value: Any) -> str:
    code = cuda_code_for(value)
    known = ", ".join(str(c) for c in KNOWN_CUDA_CODES)
    if isinstance(value, str) and code is not None:
        return f"CUDA 要写整数代码, 不是字符串: 应写 {code} (不低于 {value.strip()} 的最小已知代码)。"
    if code is not None and code != value:
        return f"应写 {code} (不低于该版本的最小已知代码)。已知代码: {known}"
    return f"已知代码: {known} (118 = CUDA 11.8; 私有云 cuda_v 另可用 0 表示不限)"


def _memory_bytes_problem(path: str, field: str, value: int, gpu_num: int) -> Problem:
    """Memory written in bytes: ONE value to write, the same in message and hint.

    The conversion when it is a sensible value; for a ceiling that, converted, would fit
    almost no host (the range filters the container's share, not what it needs), a roomy
    ceiling instead: offering the conversion and then warning against it leaves the choice
    to an agent that has to guess.
    """
    gb = gb_hint_for_bytes(value)
    what = ("memory_size_from/to 筛选的是容器分到的内存 (主机每卡内存份额 × gpu_num), 只用来挑主机, "
            "不是容器的内存上限")
    if field.endswith("_to") and gb < TYPICAL_MEMORY_GB_PER_GPU * gpu_num:
        roomy = ROOMY_MEMORY_GB_PER_GPU * gpu_num
        return {
            "path": path,
            "message": f"内存 {value} 看起来是字节数 (= {gb} GB), 这里的单位是 GB; 但 {gb} GB 作为上限也不合适: "
                       f"低于常见主机给 {gpu_num} 张卡的份额 (每卡 {TYPICAL_MEMORY_GB_PER_GPU} GB 起), 会排除几乎所有主机 "
                       "(创建报 当前算力规格暂无库存)",
            "hint": f"应写 {field}: {roomy} (宽松上限 = {ROOMY_MEMORY_GB_PER_GPU} × gpu_num {gpu_num})。{what}; "
                    f"容器至少要 {gb} GB 时, 那是下限, 属于 memory_size_from。",
        }
    return {"path": path, "message": f"内存 {value} 看起来是字节数 (= {gb} GB), 这里的单位是 GB",
            "hint": f"应写 {field}: {gb}。注意: {what}。"}


def _gpu_num_at(config: Any, parts: list[Any]) -> int:
    """gpu_num of the template holding the field at `parts` (1 when absent or not a count)."""
    node = config
    for part in parts[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return 1
    gpu_num = node.get("gpu_num") if isinstance(node, dict) else None
    return gpu_num if isinstance(gpu_num, int) and not isinstance(gpu_num, bool) and gpu_num > 0 else 1


def _explain(error: Any, config: Any) -> list[Problem]:
    """Turn one jsonschema error into problems with Chinese messages and a fix."""
    parts = list(error.absolute_path)
    path = _path_text(parts) or "(根)"
    field = _field_name(parts)
    value = error.instance
    kind = error.validator

    if kind == "additionalProperties":
        return _unknown_key_problems(error, error.schema.get("properties", {}))
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        full_path = _path_text(parts + [missing])
        hint = {
            "replica_num": "ReplicaSet 需要 replica_num (副本数); Job 需要 replica_num (完成总数) 和 parallelism_num (并行数)。",
            "parallelism_num": "Job 需要 parallelism_num (同时运行的容器数)。",
            "cuda_v": "私有云方言用 cuda_v (如 118); 若是公有云, 请加 dc_list 并改用 cuda_v_from/cuda_v_to。",
            "cuda_v_from": "公有云方言 (有 dc_list) 用 cuda_v_from/cuda_v_to 表示 CUDA 范围。",
            "cuda_v_to": "公有云方言 (有 dc_list) 用 cuda_v_from/cuda_v_to 表示 CUDA 范围。",
        }.get(missing, "补上该字段; 字段说明见 references/platform-endpoints.md 的创建部署。")
        return [{"path": full_path, "message": f"缺少必填字段 '{missing}'", "hint": hint}]
    if kind == "not":  # fields that belong to the other dialect
        if not isinstance(value, dict):
            return []  # a template that is not an object is reported by its type error
        forbidden = [key for branch in error.validator_value["anyOf"] for key in branch["required"] if key in value]
        problems = []
        for key in forbidden:
            hint = (
                "公有云方言 (有 dc_list) 不用 cuda_v/region_sign, 改用 cuda_v_from/cuda_v_to。"
                if key in ("cuda_v", "region_sign")
                else "私有云方言 (无 dc_list) 只用 cuda_v; 若是公有云请补 dc_list。"
            )
            problems.append({"path": _path_text(parts + [key]), "message": f"字段 '{key}' 不属于这种方言", "hint": hint})
        return problems
    if field.startswith("cuda_v") and kind in ("type", "enum"):
        return [{"path": path, "message": f"CUDA 代码无效: {value!r}", "hint": _cuda_hint(value)}]
    if field.startswith("memory_size") and looks_like_bytes(value):
        return [_memory_bytes_problem(path, field, value, _gpu_num_at(config, parts))]
    if field.startswith("price") and kind == "type" and isinstance(value, float):
        return [{
            "path": path,
            "message": f"价格必须是整数 (单位 元×1000/小时), 收到 {value}",
            "hint": f"若想表示 {value} 元/小时, 应写 {price_units_for_yuan(value)}。",
        }]
    if kind == "type":
        expected = {"integer": "整数", "string": "字符串", "array": "数组", "object": "对象", "boolean": "true/false"}
        wanted = error.validator_value
        wanted_text = expected.get(wanted, str(wanted)) if isinstance(wanted, str) else str(wanted)
        hint = "去掉引号, 写成数字。" if isinstance(value, str) and wanted == "integer" else f"改为{wanted_text}。"
        return [{"path": path, "message": f"类型错误: 应为{wanted_text}, 收到 {json.dumps(value, ensure_ascii=False, allow_nan=False)}", "hint": hint}]
    if kind == "enum":
        options = ", ".join(json.dumps(option, ensure_ascii=False, allow_nan=False) for option in error.validator_value)
        close = difflib.get_close_matches(str(value), [str(option) for option in error.validator_value], n=1, cutoff=0.6)
        hint = f"你是否想写 {close[0]!r}? 可选值: {options}" if close else f"可选值: {options}"
        return [{"path": path, "message": f"取值无效: {json.dumps(value, ensure_ascii=False, allow_nan=False)}", "hint": hint}]
    if kind == "minimum":
        return [{"path": path, "message": f"不能小于 {error.validator_value}, 收到 {value}", "hint": f"改为 >= {error.validator_value} 的整数。"}]
    if kind == "maximum":
        return [{"path": path, "message": f"不能大于 {error.validator_value}, 收到 {value}", "hint": f"改为 <= {error.validator_value} 的整数。字段说明: {error.schema.get('description', '')}".rstrip(": ")}]
    if kind == "minItems":
        return [{"path": path, "message": "列表不能为空", "hint": "至少填写一项; GPU 型号用 gpu_stock.py 查看。"}]
    if kind == "uniqueItems":
        return [{"path": path, "message": "列表中有重复项", "hint": "删除重复的值。"}]
    if kind == "minLength":
        return [{"path": path, "message": "不能为空字符串", "hint": "填写有效内容。"}]
    if kind == "pattern" and error.validator_value == NOT_BLANK:
        return [{"path": path, "message": "不能只有空白字符", "hint": "填写实际内容; 平台会拒绝空白的值。"}]
    if kind == "pattern":
        return [{"path": path, "message": f"格式不对: {json.dumps(value, ensure_ascii=False, allow_nan=False)}", "hint": "镜像 UUID 形如 image-db8346e037 或 base-image-l2t43iu6uk (前后不能有空格或换行); 用 list_images.py 查看 (不要填镜像名称)。"}]
    return [{"path": path, "message": error.message, "hint": "对照 schemas/deployment.schema.json 修正。"}]


def _is_strict_integer(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _ecma_pattern(_validator: Any, pattern: str, instance: Any, _schema: Any) -> Any:
    """`pattern` with ECMA-262 semantics, as JSON Schema specifies: `$` is the end of the
    string. Python's `$` also matches before a final newline, so "image-x\\n" would pass."""
    if not isinstance(instance, str):
        return
    match = _compiled(pattern).search(instance)
    if match is None or (pattern.endswith("$") and match.end() != len(instance)):
        jsonschema = require("jsonschema")
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=None)
def _compiled(pattern: str) -> Any:
    return re.compile(pattern)


def _validator() -> Any:
    jsonschema = require("jsonschema")
    base = jsonschema.Draft202012Validator
    # JSON Schema counts 9.0 as an integer; the API's Int fields reject it, and a price of
    # 9.0 is the classic "yuan instead of yuan x 1000" mistake, so integers must be ints.
    strict = jsonschema.validators.extend(
        base,
        validators={"pattern": _ecma_pattern},
        type_checker=base.TYPE_CHECKER.redefine("integer", _is_strict_integer),
    )
    return strict(load_schema())


def _schema_problems(config: Any) -> list[Problem]:
    validator = _validator()
    problems: list[Problem] = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        # if/then/else and allOf wrap the interesting errors; report the leaves.
        leaves = [error] if not error.context else list(error.context)
        for leaf in leaves:
            for problem in _explain(leaf, config):
                if problem not in problems:
                    problems.append(problem)
    return problems


# --- rules across fields --------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _semantic_problems(config: dict[str, Any], flagged: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """Rules across fields; a field the schema already flagged (e.g. bytes) is not compared."""
    problems: list[Problem] = []
    template = config.get(TEMPLATE)
    if not isinstance(template, dict):
        return problems
    for stem in RANGES:
        if {f"{TEMPLATE}.{stem}_from", f"{TEMPLATE}.{stem}_to"} & flagged:
            continue
        low, high = template.get(f"{stem}_from"), template.get(f"{stem}_to")
        if _is_int(low) and _is_int(high) and low > high:
            problems.append({
                "path": f"{TEMPLATE}.{stem}_from",
                "message": f"范围反了: {stem}_from={low} 大于 {stem}_to={high}",
                "hint": f"交换两值, 或把 {stem}_to 调到不小于 {low}。",
            })
    return problems


def validate_config(config: Any) -> list[Problem]:
    """Every problem of the config, empty when it is valid."""
    # Values no request can carry (NaN, huge numbers, lone surrogates, deep nesting) are
    # reported alone: the schema checks below would trip over them.
    unusable = strict_json.unusable_value_problems(config)
    if unusable:
        return unusable
    problems = _schema_problems(config)
    if isinstance(config, dict):
        flagged = {problem["path"] for problem in problems}
        problems += [p for p in _semantic_problems(config, flagged) if p not in problems]
    return problems


def raise_if_invalid(config: Any, source: str | Path | None = None) -> None:
    problems = validate_config(config)
    if problems:
        raise AutoDLError(
            ErrorType.VALIDATION_ERROR,
            f"配置有 {len(problems)} 处问题" + (f" ({source})" if source else "") + "。",
            "逐条查看 details.errors, 按 hint 修正后重新运行; 此时尚未调用任何接口。",
            {"errors": problems},
        )


def build_request(config: dict[str, Any]) -> dict[str, Any]:
    """The create-deployment request body: the config minus editor-only keys."""
    request = copy.deepcopy(config)
    request.pop("$schema", None)
    return request


def load_and_validate(path: str | Path) -> dict[str, Any]:
    config = load_config(path)
    raise_if_invalid(config, path)
    return config

