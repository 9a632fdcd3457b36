"""Config validation: schema + semantic rules, every problem at once, each with a fix."""

from __future__ import annotations

import copy
import json
import re

import pytest

from autodl_esd.platform import config as config_module
from autodl_esd.platform.config import build_request, dialect_of, load_config, validate_config
from autodl_esd.core.errors import AutoDLError, ErrorType
from helpers import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
PRIVATE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
TEMPLATE_KEYS = ("gpu_name_set", "gpu_num", "cuda_v", "image_uuid", "cmd")


def private(**top) -> dict:
    config = copy.deepcopy(PRIVATE)
    config.update(top)
    return config


def public() -> dict:
    config = private()
    template = config["container_template"]
    del template["cuda_v"]
    template.update(dc_list=["westDC2", "westDC3"], cuda_v_from=118, cuda_v_to=128)
    return config


def with_template(config: dict, **fields) -> dict:
    config["container_template"].update(fields)
    return config


def problems_at(problems: list[dict], path: str) -> list[dict]:
    return [problem for problem in problems if problem["path"] == path]


def only_problem(config: dict, path: str) -> dict:
    problems = validate_config(config)
    assert [p["path"] for p in problems] == [path], problems
    return problems[0]


def assert_well_formed(problems: list[dict]) -> None:
    for problem in problems:
        assert set(problem) == {"path", "message", "hint"}
        assert problem["path"] and problem["message"] and problem["hint"]


# --- examples -------------------------------------------------------------------------

def test_there_are_examples_of_every_type_and_both_dialects():
    configs = [json.loads(path.read_text(encoding="utf-8")) for path in EXAMPLES]
    assert {c["deployment_type"] for c in configs} == {"ReplicaSet", "Job", "Container"}
    assert {dialect_of(c) for c in configs} == {"private", "public"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_validates(path):
    assert validate_config(load_config(path)) == []


def _examples_md_configs() -> list[dict]:
    doc = ROOT / "references" / "examples.md"
    configs = []
    for block in re.findall(r"```json\s*\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.DOTALL):
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            continue  # output samples may be abridged; configs are checked below
        if isinstance(value, dict) and "container_template" in value:
            configs.append(value)
    return configs


def test_json_configs_in_examples_md_validate():
    configs = _examples_md_configs()
    assert configs, "references/examples.md shows no config"
    for config in configs:
        assert validate_config(config) == [], config.get("name")


# --- rules ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "stem,low,high",
    [("cpu_num", 32, 8), ("memory_size", 128, 64), ("price", 9000, 100)],
)
def test_reversed_ranges(stem, low, high):
    config = with_template(private(), **{f"{stem}_from": low, f"{stem}_to": high})
    problem = only_problem(config, f"container_template.{stem}_from")
    assert str(low) in problem["message"] and str(high) in problem["message"]


def test_reversed_cuda_range_public():
    config = with_template(public(), cuda_v_from=128, cuda_v_to=118)
    only_problem(config, "container_template.cuda_v_from")


def test_equal_range_bounds_are_fine():
    assert validate_config(with_template(private(), cpu_num_from=8, cpu_num_to=8)) == []


def test_replicaset_without_replica_num():
    config = private()
    del config["replica_num"]
    only_problem(config, "replica_num")


def test_job_without_parallelism_num():
    config = private(deployment_type="Job", replica_num=4)
    problem = only_problem(config, "parallelism_num")
    assert "parallelism_num" in problem["message"]


def test_job_without_both_counts():
    config = private(deployment_type="Job")
    del config["replica_num"]
    assert {p["path"] for p in validate_config(config)} == {"replica_num", "parallelism_num"}


def test_container_needs_no_counts():
    config = private(deployment_type="Container")
    del config["replica_num"]
    assert validate_config(config) == []


@pytest.mark.parametrize("gpu_num", [0, -1])
def test_gpu_num_must_be_positive(gpu_num):
    only_problem(with_template(private(), gpu_num=gpu_num), "container_template.gpu_num")


def test_empty_gpu_name_set():
    only_problem(with_template(private(), gpu_name_set=[]), "container_template.gpu_name_set")


def test_duplicate_gpu_names():
    only_problem(with_template(private(), gpu_name_set=["RTX 4090", "RTX 4090"]), "container_template.gpu_name_set")


@pytest.mark.parametrize("field,gb", [("memory_size_from", 64), ("memory_size_to", 256)])
def test_memory_in_bytes_hints_the_gb_value(field, gb):
    """One problem with the GB value, not also a 'reversed range' pointing at the byte count."""
    config = with_template(private(), **{field: gb * 1024**3})
    problem = only_problem(config, f"container_template.{field}")
    assert re.search(rf"\b{gb}\b", problem["hint"]), problem


def test_memory_ceiling_in_bytes_says_what_the_range_filters_and_warns_when_it_fits_no_host():
    """17179869184 bytes is 16 GB; as memory_size_to that is below every common per-GPU share."""
    problem = only_problem(with_template(private(), memory_size_to=17179869184), "container_template.memory_size_to")
    assert "16 GB" in problem["message"] and "gpu_num" in problem["hint"] and "挑主机" in problem["hint"]
    assert "排除几乎所有主机" in problem["message"]
    roomy = only_problem(with_template(private(), memory_size_to=256 * 1024**3), "container_template.memory_size_to")
    assert "排除几乎所有主机" not in roomy["message"] + roomy["hint"], "a generous ceiling gets no warning"


def recommended(problem):
    """The values the hint tells the user to write: exactly one, or the agent has to guess."""
    return [int(value) for value in re.findall(r"应写 [\w.]*:? ?(\d+)", problem["hint"])]


@pytest.mark.parametrize("gpu_num,expected", [(1, 256), (2, 512)])
def test_memory_ceiling_in_bytes_that_would_fit_no_host_gets_one_roomy_recommendation(gpu_num, expected):
    """Not "换算为 16 (GB)" followed by "16 GB excludes almost every host": one value to write."""
    config = with_template(private(), gpu_num=gpu_num, memory_size_to=17179869184)
    problem = only_problem(config, "container_template.memory_size_to")
    assert recommended(problem) == [expected], problem
    assert "换算为 16" not in problem["hint"]
    # The recommendation passes the lint that would otherwise warn about the converted value.
    from autodl_esd.platform.lint import lint_config

    fixed = with_template(private(), gpu_num=gpu_num, memory_size_to=expected)
    assert "low_memory_ceiling" not in {w["code"] for w in lint_config(fixed)}


@pytest.mark.parametrize("field,gb", [("memory_size_from", 16), ("memory_size_to", 64), ("memory_size_to", 256)])
def test_memory_in_bytes_that_converts_to_a_sensible_value_recommends_the_conversion(field, gb):
    problem = only_problem(with_template(private(), **{field: gb * 1024**3}), f"container_template.{field}")
    assert recommended(problem) == [gb], problem
    assert f"{gb} GB" in problem["message"]


def test_low_ceilings_are_lint_warnings():
    from autodl_esd.platform.lint import lint_config

    config = with_template(private(), memory_size_to=16, cpu_num_to=4)
    codes = {w["code"] for w in lint_config(config)}
    assert {"low_memory_ceiling", "low_cpu_ceiling"} <= codes
    assert not {"low_memory_ceiling", "low_cpu_ceiling"} & {w["code"] for w in lint_config(private())}


@pytest.mark.parametrize(
    "field,value,expected",
    [("price_to", 9.5, 9500), ("price_from", 0.1, 100), ("price_to", 9.0, 9000), ("price_from", 0.25, 250)],
)
def test_float_price_hints_the_times_1000_value(field, value, expected):
    config = with_template(private(), price_from=0, price_to=100000)
    config["container_template"][field] = value
    problem = only_problem(config, f"container_template.{field}")
    assert re.search(rf"\b{expected}\b", problem["hint"]), problem


@pytest.mark.parametrize("field", ["gpu_num", "cpu_num_from", "memory_size_to", "replica_num"])
def test_integral_floats_are_not_integers(field):
    """The API's Int fields reject 1.0; JSON Schema alone would accept it."""
    config = private()
    target = config if field == "replica_num" else config["container_template"]
    target[field] = float(target[field])
    only_problem(config, field if field == "replica_num" else f"container_template.{field}")


@pytest.mark.parametrize(
    "value,expected",
    [("11.8", 118), ("12.0", 120), (11.5, 116), (11.8, 118), (119, 120), (125, 126), ("118", 118)],
)
def test_cuda_mistakes_hint_the_code(value, expected):
    problem = only_problem(with_template(private(), cuda_v=value), "container_template.cuda_v")
    assert re.search(rf"\b{expected}\b", problem["hint"]), problem


def test_cuda_code_beyond_every_known_code_lists_known_codes():
    problem = only_problem(with_template(private(), cuda_v=135), "container_template.cuda_v")
    assert "118" in problem["hint"] and "128" in problem["hint"]


def test_cuda_zero_means_any_on_private_only():
    assert validate_config(with_template(private(), cuda_v=0)) == []
    only_problem(with_template(public(), cuda_v_from=0), "container_template.cuda_v_from")


@pytest.mark.parametrize(
    "mutate,path,suggestion",
    [
        (lambda c: c["container_template"].__setitem__("gpu_nmae", c["container_template"].pop("gpu_name_set")),
         "container_template.gpu_nmae", "gpu_name_set"),
        (lambda c: c["container_template"].__setitem__("image_uid", c["container_template"].pop("image_uuid")),
         "container_template.image_uid", "image_uuid"),
        (lambda c: c.__setitem__("replicas_num", c.pop("replica_num")), "replicas_num", "replica_num"),
        (lambda c: c.__setitem__("deploymet_type", c.pop("deployment_type")), "deploymet_type", "deployment_type"),
    ],
    ids=["gpu_nmae", "image_uid", "replicas_num", "deploymet_type"],
)
def test_unknown_keys_get_did_you_mean(mutate, path, suggestion):
    config = private()
    mutate(config)
    problems = validate_config(config)
    typo = problems_at(problems, path)
    assert len(typo) == 1
    assert suggestion in typo[0]["hint"]


def test_unknown_key_far_from_everything_lists_allowed_fields():
    config = with_template(private(), zzz=1)
    problem = only_problem(config, "container_template.zzz")
    assert "gpu_name_set" in problem["hint"]


@pytest.mark.parametrize("key,value", [("gpu_num", 1), ("cmd", "sleep 1"), ("dc_list", ["westDC2"])])
def test_template_key_at_top_level_is_misplaced(key, value):
    config = private()
    config[key] = value
    problem = only_problem(config, key)
    assert "container_template" in problem["hint"]


@pytest.mark.parametrize("key,value", [("replica_num", 2), ("name", "x"), ("reuse_container", True)])
def test_top_level_key_in_template_is_misplaced(key, value):
    config = with_template(private(), **{key: value})
    problem = only_problem(config, f"container_template.{key}")
    assert "顶层" in problem["hint"] or "top" in problem["hint"].lower()


def test_public_dialect_with_cuda_v():
    config = with_template(public(), cuda_v=118)
    only_problem(config, "container_template.cuda_v")


def test_public_dialect_with_region_sign():
    config = with_template(public(), region_sign="westDC2")
    only_problem(config, "container_template.region_sign")


def test_dc_list_with_only_cuda_v_reports_missing_range_and_forbidden_field():
    config = with_template(private(), dc_list=["westDC2"])
    paths = {p["path"] for p in validate_config(config)}
    assert paths == {"container_template.cuda_v", "container_template.cuda_v_from", "container_template.cuda_v_to"}


def test_cuda_range_without_dc_list():
    config = public()
    del config["container_template"]["dc_list"]
    paths = {p["path"] for p in validate_config(config)}
    assert paths == {"container_template.cuda_v", "container_template.cuda_v_from", "container_template.cuda_v_to"}
    for problem in validate_config(config):
        assert "dc_list" in problem["hint"]


def test_public_dialect_is_valid_and_detected():
    assert validate_config(public()) == []
    assert dialect_of(public()) == "public"
    assert dialect_of(private()) == "private"


def test_image_name_instead_of_uuid():
    problem = only_problem(with_template(private(), image_uuid="llm-serve-vllm"), "container_template.image_uuid")
    assert "image-" in problem["hint"]


def test_bad_deployment_type_suggests_the_close_one():
    problem = only_problem(private(deployment_type="Replicaset"), "deployment_type")
    assert "ReplicaSet" in problem["hint"]


def test_all_problems_are_reported_at_once():
    config = {
        "name": "",
        "deployment_type": "Job",
        "replica_num": 2,
        "gpu_num": 1,
        "container_template": {
            "gpu_nmae": ["RTX 4090"],
            "gpu_num": 0,
            "cuda_v": "11.8",
            "cpu_num_from": 32,
            "cpu_num_to": 8,
            "memory_size_from": 1,
            "memory_size_to": 256 * 1024**3,
            "price_from": 100,
            "price_to": 9.5,
            "image_uuid": "image-db8346e037",
            "cmd": "python app.py",
        },
    }
    problems = validate_config(config)
    assert_well_formed(problems)
    paths = {p["path"] for p in problems}
    expected = {
        "name",
        "parallelism_num",
        "gpu_num",
        "container_template.gpu_nmae",
        "container_template.gpu_name_set",
        "container_template.gpu_num",
        "container_template.cuda_v",
        "container_template.cpu_num_from",
        "container_template.memory_size_to",
        "container_template.price_to",
    }
    assert expected <= paths, sorted(paths)
    assert len(problems) >= 10


@pytest.mark.parametrize("config", [[], "x", 5, None, {}, {"container_template": 5}, {"container_template": []}])
def test_not_an_object_is_a_problem_not_a_crash(config):
    problems = validate_config(config)
    assert problems
    assert_well_formed(problems)


def test_valid_configs_validate_repeatedly_without_state():
    assert validate_config(private()) == []
    assert validate_config(with_template(private(), gpu_num=0))
    assert validate_config(private()) == []


def test_build_request_drops_editor_keys_and_copies():
    config = private(**{"$schema": "../schemas/deployment.schema.json"})
    assert validate_config(config) == []
    request = build_request(config)
    assert "$schema" not in request
    request["container_template"]["gpu_num"] = 8
    assert config["container_template"]["gpu_num"] == 1


# --- loading --------------------------------------------------------------------------

def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(AutoDLError) as caught:
        load_config(tmp_path / "nope.json")
    assert caught.value.error_type is ErrorType.CONFIG_ERROR
    assert caught.value.details["path"].endswith("nope.json")


def test_bad_json_reports_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  "deployment_type": "Job",\n}\n', encoding="utf-8")
    with pytest.raises(AutoDLError) as caught:
        load_config(path)
    assert caught.value.error_type is ErrorType.CONFIG_ERROR
    assert caught.value.details["line"] == 4
    assert caught.value.details["column"] == 1


# --- validate_config.py end to end ----------------------------------------------------

@pytest.fixture
def offline(monkeypatch, mocked):
    """No token, and any HTTP call would fail the strict mock."""
    monkeypatch.delenv("AUTODL_TOKEN", raising=False)
    return mocked


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_validate_script_success(run, offline, result_validator, path):
    code, document, _ = run("validate_config.py", str(path), "--quiet")
    result_validator.validate(document)
    assert code == 0
    assert document["status"] == "success"
    assert document["valid"] is True
    assert document["dialect"] == dialect_of(load_config(path))
    assert document["request"] == build_request(load_config(path))
    assert isinstance(document["warnings"], list)
    assert len(offline.calls) == 0


def test_validate_script_shows_the_debug_container_warning(run, offline):
    _, document, _ = run("validate_config.py", str(ROOT / "examples" / "container-debug.json"))
    assert [w["code"] for w in document["warnings"]] == ["sleep_infinity_in_job"]


def test_validate_script_invalid_config(run, offline, result_validator, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(with_template(private(), gpu_num=0, cuda_v="11.8", price_to=9.5)), encoding="utf-8")
    code, document, _ = run("validate_config.py", str(path))
    result_validator.validate(document)
    assert code == 1
    assert document["error_type"] == "validation_error"
    assert {e["path"] for e in document["details"]["errors"]} == {
        "container_template.gpu_num",
        "container_template.cuda_v",
        "container_template.price_to",
    }
    assert len(offline.calls) == 0


def test_validate_script_missing_file(run, offline, result_validator, tmp_path):
    code, document, _ = run("validate_config.py", str(tmp_path / "missing.json"))
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "config_error")
    assert document["details"]["path"].endswith("missing.json")


def test_validate_script_bad_json(run, offline, result_validator, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x",, }', encoding="utf-8")
    code, document, _ = run("validate_config.py", str(path))
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "config_error")
    assert document["details"]["line"] == 1
    assert document["details"]["column"] == 14


def test_validate_script_without_arguments_is_usage_error(run, offline, result_validator):
    code, document, _ = run("validate_config.py")
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "usage_error")


def test_queue_submit_validates_before_any_network_call(run, offline, result_validator, tmp_path):
    """Invalid config -> validation_error even with no token and no network."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(with_template(private(), gpu_num=0)), encoding="utf-8")
    code, document, _ = run("queue_submit.py", str(path), "--dry-run")
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "validation_error")


def test_schema_is_loaded_from_the_skill_folder_not_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert config_module.DEPLOYMENT_SCHEMA.is_file()
    assert validate_config(private()) == []


def test_an_empty_config_file_says_it_is_empty(run, tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("  \n", encoding="utf-8")

    code, out, _ = run("validate_config.py", str(path))

    assert code == 1 and out["error_type"] == "config_error"
    assert "空" in out["message"] and out["details"]["path"] == str(path)
