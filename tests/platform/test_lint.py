"""Lint warnings: each fires on its trap and stays quiet on the safe form.

Assertions are on warning codes and paths, not on the wording of messages.
"""

from __future__ import annotations

import copy
import json

import pytest

from autodl_esd.platform.config import validate_config
from autodl_esd.platform.lint import CMD_PATH, lint_cmd, lint_config
from helpers import ROOT

PRIVATE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
PY = "/root/miniconda3/bin/python"


def codes(warnings: list[dict]) -> list[str]:
    return [warning["code"] for warning in warnings]


def cmd_codes(cmd: str, deployment_type: str = "ReplicaSet") -> list[str]:
    return codes(lint_cmd(cmd, deployment_type))


def config_with(cmd: str | None = None, template: dict | None = None, **top) -> dict:
    config = copy.deepcopy(PRIVATE)
    config.update(top)
    if cmd is not None:
        config["container_template"]["cmd"] = cmd
    config["container_template"].update(template or {})
    assert validate_config(config) == [], "lint runs on valid configs only"
    return config


def config_codes(**kwargs) -> list[str]:
    return codes(lint_config(config_with(**kwargs)))


# --- cmd traps ------------------------------------------------------------------------

TRAPS = [
    ("and_or_chain", "ls /data && python /root/run.py || echo failed", "ls /data ; python /root/run.py ; true"),
    ("and_or_chain", "cd /root && python app.py || true", "cd /root && python app.py"),
    ("background_without_keepalive", f"{PY} /root/app.py &", f"{PY} /root/app.py & sleep infinity"),
    ("background_without_keepalive", f"nohup {PY} /root/app.py > /root/app.log 2>&1 &", f"nohup {PY} /root/app.py > /root/app.log 2>&1 & wait"),
    ("background_without_keepalive", f"{PY} /root/a.py & {PY} /root/b.py", f"{PY} /root/a.py > /root/a.log 2>&1"),
    ("conda_activate", f"conda activate vllm && {PY} /root/app.py", f"/root/miniconda3/envs/vllm/bin/python /root/app.py"),
    ("conda_activate", "source activate vllm; python /root/app.py", "source /root/.bashrc; python /root/app.py"),
    ("relative_path_without_cd", "python app.py", "cd /root && python app.py"),
    ("relative_path_without_cd", f"{PY} -u serve.py --port 6006", f"{PY} -u /root/app/serve.py --port 6006"),
    ("relative_path_without_cd", "bash start.sh", "bash /root/start.sh"),
    ("relative_path_without_cd", "./start.sh", "cd /root/app && ./start.sh"),
    ("relative_path_without_cd", "python app.py ; cd /root", "cd /root ; python app.py"),
    ("bare_python3", "python3 /root/app.py", f"{PY} /root/app.py"),
    ("bare_python3", "cd /root && python3 app.py", "cd /root && /usr/bin/python3 app.py"),
    ("bare_python", "cd /root && python app.py --port 6006", f"cd /root && {PY} app.py --port 6006"),
    ("bare_python", "nohup python /root/app.py > /root/log 2>&1 & sleep infinity", f"nohup {PY} /root/app.py > /root/log 2>&1 & sleep infinity"),
    ("service_binds_loopback", f"{PY} /root/app.py --host 127.0.0.1 --port 6006", f"{PY} /root/app.py --host 0.0.0.0 --port 6006"),
    ("service_binds_loopback", f"{PY} -m vllm.entrypoints.openai.api_server --host=localhost --port 6006", f"{PY} -m vllm.entrypoints.openai.api_server --port 6006"),
    ("service_binds_loopback", "/root/miniconda3/bin/gunicorn -b 127.0.0.1:6006 app:app", "/root/miniconda3/bin/gunicorn -b 0.0.0.0:6006 app:app"),
    ("network_without_turbo", f"pip install vllm && {PY} /root/app.py", f"source /etc/network_turbo ; pip install vllm && {PY} /root/app.py"),
    ("network_without_turbo", "git clone https://github.com/x/y /root/y", "source /etc/network_turbo && git clone https://github.com/x/y /root/y"),
    ("network_without_turbo", "huggingface-cli download Qwen/Qwen2-7B", "source /etc/network_turbo; huggingface-cli download Qwen/Qwen2-7B"),
]


@pytest.mark.parametrize("code,trap,safe", TRAPS, ids=[f"{t[0]}-{i}" for i, t in enumerate(TRAPS)])
def test_cmd_warning_fires_on_trap_not_on_safe_form(code, trap, safe):
    trap_warnings = lint_cmd(trap, "ReplicaSet")
    assert code in codes(trap_warnings), trap
    assert all(w["path"] == CMD_PATH for w in trap_warnings if w["code"] == code)
    assert code not in cmd_codes(safe), safe


@pytest.mark.parametrize("redirect", ["2>&1", "&> /root/log", ">& /root/log", "> /root/log 2>&1 | tee /root/x"])
def test_redirections_are_not_backgrounding(redirect):
    assert "background_without_keepalive" not in cmd_codes(f"{PY} /root/app.py {redirect}")


@pytest.mark.parametrize("deployment_type,warned", [("Job", True), ("Container", True), ("ReplicaSet", False)])
def test_sleep_infinity_warns_for_job_and_container_only(deployment_type, warned):
    assert ("sleep_infinity_in_job" in cmd_codes("sleep infinity", deployment_type)) is warned
    assert "sleep_infinity_in_job" not in cmd_codes(f"{PY} /root/train.py ; sleep 60", deployment_type)


def test_a_clean_command_has_no_warnings():
    assert cmd_codes(f"cd /root/app && {PY} server.py --port 6006") == []
    assert cmd_codes(f"cd /root/app && {PY} server.py --port 6006", "Job") == []


def test_several_traps_in_one_command_all_reported():
    found = set(cmd_codes("conda activate x && pip install y || python3 app.py &", "Job"))
    assert {"and_or_chain", "conda_activate", "network_without_turbo", "bare_python3", "background_without_keepalive"} <= found


def test_every_warning_has_the_documented_shape():
    for warning in lint_cmd("conda activate x && pip install y || python3 app.py &", "Job"):
        assert set(warning) == {"code", "path", "message", "hint"}
        assert warning["message"] and warning["hint"]


# --- config-level warnings ------------------------------------------------------------

@pytest.mark.parametrize(
    "template,code,path",
    [
        ({"memory_size_from": 64}, "high_memory_floor", "container_template.memory_size_from"),
        ({"cpu_num_from": 32}, "high_cpu_floor", "container_template.cpu_num_from"),
        ({"price_from": 0, "price_to": 9}, "price_looks_like_yuan", "container_template.price_to"),
    ],
)
def test_template_floor_warnings(template, code, path):
    warnings = lint_config(config_with(template=template))
    assert [(w["code"], w["path"]) for w in warnings] == [(code, path)]


def test_floors_scale_with_gpu_num():
    assert config_codes(template={"gpu_num": 4, "memory_size_from": 64, "cpu_num_from": 32}) == []
    assert config_codes(template={"memory_size_from": 16, "cpu_num_from": 16}) == []


def test_price_in_units_is_fine():
    assert "price_looks_like_yuan" not in config_codes(template={"price_from": 100, "price_to": 100})


def _container(**top) -> dict:
    config = copy.deepcopy(PRIVATE)
    del config["replica_num"]
    config.update(deployment_type="Container", **top)
    assert validate_config(config) == []
    return config


@pytest.mark.parametrize("top", [{"replica_num": 2}, {"parallelism_num": 1}])
def test_container_ignores_counts(top):
    assert "container_ignores_counts" in codes(lint_config(_container(**top)))


def test_container_without_counts_is_quiet():
    assert "container_ignores_counts" not in codes(lint_config(_container()))


def test_parallelism_above_replicas():
    warnings = lint_config(config_with(deployment_type="Job", replica_num=2, parallelism_num=4))
    assert [(w["code"], w["path"]) for w in warnings] == [("parallelism_above_replicas", "parallelism_num")]
    assert config_codes(deployment_type="Job", replica_num=4, parallelism_num=4) == []
    assert config_codes(deployment_type="Job", replica_num=4, parallelism_num=2) == []


def test_scope_without_reuse():
    public = _public()
    public["reuse_container"] = False
    public["reuse_container_scope"] = "deployment"
    warnings = lint_config(public)
    assert [(w["code"], w["path"]) for w in warnings] == [("scope_without_reuse", "reuse_container_scope")]
    public["reuse_container"] = True
    assert lint_config(public) == []


def _public() -> dict:
    config = json.loads((ROOT / "examples" / "public-cloud-replicaset.json").read_text(encoding="utf-8"))
    assert validate_config(config) == []
    return config


@pytest.mark.parametrize(
    "top,template,path",
    [
        ({"reuse_container_scope": "all"}, {}, "reuse_container_scope"),
        ({"service_6006_port_protocol": "tcp"}, {}, "service_6006_port_protocol"),
        ({}, {"cmd_before_shutdown": "sync"}, "container_template.cmd_before_shutdown"),
        ({}, {"service_6008_port_protocol": "http"}, "container_template.service_6008_port_protocol"),
    ],
)
def test_public_field_on_private(top, template, path):
    warnings = lint_config(config_with(template=template, **top))
    public_warnings = [w for w in warnings if w["code"] == "public_field_on_private"]
    assert len(public_warnings) == 1
    assert public_warnings[0]["path"] == path


def test_public_fields_on_public_are_quiet():
    assert lint_config(_public()) == []


# --- the shipped examples -------------------------------------------------------------

@pytest.mark.parametrize(
    "name,expected",
    [
        ("replicaset-service.json", []),
        ("job-training.json", []),
        ("public-cloud-replicaset.json", []),
        ("container-debug.json", ["sleep_infinity_in_job"]),  # the debug idiom, warned on purpose
    ],
)
def test_examples_warnings(name, expected):
    config = json.loads((ROOT / "examples" / name).read_text(encoding="utf-8"))
    assert codes(lint_config(config)) == expected


def test_lint_never_blocks_validation():
    config = config_with(cmd="python3 app.py &", template={"memory_size_from": 200})
    assert validate_config(config) == []
    assert lint_config(config)


@pytest.mark.parametrize("deployment_type,cmd,warned", [
    ("ReplicaSet", "cd /root/app && /root/miniconda3/bin/python server.py", True),
    ("ReplicaSet", "cd /root/app && /root/miniconda3/bin/python server.py --port 6006", False),
    ("ReplicaSet", "cd /root/app && uvicorn main:app --host 0.0.0.0 --port 6008", False),
    ("Job", "cd /root/app && /root/miniconda3/bin/python train.py", False),
])
def test_replicaset_service_should_listen_on_6006_or_6008(deployment_type, cmd, warned):
    assert ("service_port_not_in_cmd" in cmd_codes(cmd, deployment_type)) is warned


def test_bare_python_and_python3_both_warn_as_the_docs_say():
    """SKILL.md recommends the interpreter's full path; lint says so for both bare forms."""
    assert "bare_python" in cmd_codes("python /root/app.py --port 6006")
    assert "bare_python3" in cmd_codes("python3 /root/app.py --port 6006")
    assert not {"bare_python", "bare_python3"} & set(cmd_codes(f"{PY} /root/app.py --port 6006"))
    skill = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    assert "bare_python" in skill, "the docs name the warning an agent will see"


def test_loopback_bind_is_a_replicaset_warning_only():
    cmd = f"{PY} /root/app.py --host 127.0.0.1 --port 6006"
    assert "service_binds_loopback" not in cmd_codes(cmd, "Job")
    assert "service_binds_loopback" not in cmd_codes(f"curl -s http://localhost:6006/health ; {PY} /root/app.py --host 0.0.0.0 --port 6006")
