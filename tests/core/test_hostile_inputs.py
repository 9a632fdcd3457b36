"""Hostile files, flags and environment: each is a clear input error with the path at fault.

The error matrix of inputs we can check ourselves: none of them may end as internal_error
(exit 4), none may print anything but one strict JSON document, and a malformed token is
refused before any request without its value appearing anywhere.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys

import pytest

from autodl_esd.core import output
from helpers import ROOT, SCRIPTS

EXAMPLE = ROOT / "examples" / "replicaset-service.json"
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
DEP = "0123456789abcde"


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as every other JSON parser does."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def write(tmp_path, text: str | bytes, name: str = "config.json"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def replace(old: str, new: str) -> str:
    assert old in EXAMPLE_TEXT
    return EXAMPLE_TEXT.replace(old, new, 1)


# --- config files ---------------------------------------------------------------------------

# name, file text, expected error_type, the path expected in details.errors (or None: config_error)
HOSTILE_CONFIGS = [
    ("nan", replace('"gpu_num": 1', '"gpu_num": NaN'), "validation_error", "container_template.gpu_num"),
    ("infinity", replace('"gpu_num": 1', '"gpu_num": Infinity'), "validation_error", "container_template.gpu_num"),
    ("minus-infinity", replace('"cuda_v": 118', '"cuda_v": -Infinity'), "validation_error", "container_template.cuda_v"),
    ("float-overflow", replace('"name": "llm-inference-service"', '"name": 1e308'), "validation_error", "name"),
    ("float-1e400", replace('"gpu_num": 1', '"gpu_num": 1e400'), "validation_error", "container_template.gpu_num"),
    ("int-5000-digits", replace('"gpu_num": 1', '"gpu_num": ' + "9" * 5000), "validation_error", "container_template.gpu_num"),
    ("int64-overflow", replace('"gpu_num": 1', f'"gpu_num": {2**63}'), "validation_error", "container_template.gpu_num"),
    ("gpu-num-too-big", replace('"gpu_num": 1', f'"gpu_num": {2**62}'), "validation_error", "container_template.gpu_num"),
    ("replicas-2^63", replace('"replica_num": 2', f'"replica_num": {2**63}'), "validation_error", "replica_num"),
    ("replicas-too-many", replace('"replica_num": 2', '"replica_num": 10001'), "validation_error", "replica_num"),
    ("price-int32", replace('"price_to": 9000', f'"price_to": {2**31}'), "validation_error", "container_template.price_to"),
    ("lone-surrogate", replace('"name": "llm-inference-service"', '"name": "demo\\ud800"'), "validation_error", "name"),
    ("surrogate-key", replace('"name": "llm-inference-service"', '"name": "llm-inference-service", "\\udc80": 1'), "validation_error", "(根)"),
    ("image-trailing-newline", replace('"image_uuid": "image-db8346e037"', '"image_uuid": "image-db8346e037\\n"'), "validation_error", "container_template.image_uuid"),
    ("blank-name", replace('"name": "llm-inference-service"', '"name": "   "'), "validation_error", "name"),
    ("blank-cmd", replace('"cmd": "cd /root/app', '"cmd": "\\t\\n", "x": "cd /root/app'), "validation_error", "container_template.cmd"),
    ("blank-gpu-name", replace('"gpu_name_set": [', '"gpu_name_set": [" ", '), "validation_error", "container_template.gpu_name_set[0]"),
    ("deep-within-parser", replace('"name": "llm-inference-service"', '"name": ' + "[" * 40 + "]" * 40), "validation_error", "name" + "[0]" * 32),
    ("deep-past-recursion", "[" * 100_000 + "]" * 100_000, "config_error", None),
    ("not-utf8", EXAMPLE_TEXT.replace("llm-inference-service", "demo-\udcff").encode("utf-8", "surrogateescape"), "config_error", None),
    ("latin1", EXAMPLE_TEXT.replace("llm-inference-service", "démo").encode("latin-1"), "config_error", None),
]


def test_the_unedited_example_is_valid(run, tmp_path):
    # The table above edits this file; each edit alone must be what makes it invalid.
    assert run("validate_config.py", write(tmp_path, EXAMPLE_TEXT))[0] == 0


@pytest.mark.parametrize(("name", "text", "error_type", "path"), HOSTILE_CONFIGS, ids=[c[0] for c in HOSTILE_CONFIGS])
@pytest.mark.parametrize("script", ["validate_config.py", "queue_submit.py"])
def test_hostile_config_is_a_clear_input_error(run, tmp_path, result_validator, script, name, text, error_type, path):
    config = write(tmp_path, text)
    code, document, _ = run(script, config, "--quiet")
    assert (code, document["error_type"]) == (1, error_type), document
    result_validator.validate(document)
    if path is None:
        assert document["details"]["path"] == config
    else:
        paths = [problem["path"] for problem in document["details"]["errors"]]
        assert path in paths, document


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_hanging(run, tmp_path, result_validator):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    code, document, _ = run("validate_config.py", str(fifo))
    assert (code, document["error_type"]) == (1, "config_error")
    assert "不是普通文件" in document["message"]
    result_validator.validate(document)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_devices_are_refused_without_reading(run, path):
    code, document, _ = run("validate_config.py", path)
    assert (code, document["error_type"], document["details"]["path"]) == (1, "config_error", path)


def test_a_directory_is_refused(run, tmp_path):
    code, document, _ = run("validate_config.py", str(tmp_path))
    assert (code, document["error_type"]) == (1, "config_error")


def test_a_config_over_the_documented_size_is_refused(run, tmp_path):
    from autodl_esd.core.strict_json import MAX_CONFIG_BYTES

    config = write(tmp_path, replace('"name": "llm-inference-service"', '"name": "' + "x" * MAX_CONFIG_BYTES + '"'))
    code, document, _ = run("validate_config.py", config)
    assert (code, document["error_type"], document["details"]["max_bytes"]) == (1, "config_error", MAX_CONFIG_BYTES)


def test_a_utf8_bom_is_accepted(run, tmp_path):
    config = write(tmp_path, b"\xef\xbb\xbf" + EXAMPLE_TEXT.encode("utf-8"))
    assert run("validate_config.py", config)[0] == 0


def test_config_selector_reads_files_the_same_way(run, tmp_path):
    config = write(tmp_path, "[" * 100_000 + "]" * 100_000)
    code, document, _ = run("list_containers.py", "--config", config)
    assert (code, document["error_type"]) == (1, "config_error")


# --- the simulator's cluster file -------------------------------------------------------------

CLUSTER_TEXT = (SCRIPTS / "simulator" / "default_cluster.json").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        CLUSTER_TEXT.replace('"price": ', '"price": NaN, "x": ', 1),
        CLUSTER_TEXT.replace('"price": ', '"price": 1e999, "x": ', 1),
        CLUSTER_TEXT.replace('"price": ', '"price": ' + "9" * 5000 + ', "x": ', 1),
        b"\xff\xfe" + CLUSTER_TEXT.encode("utf-16-le"),
    ],
    ids=["deep", "nan", "float-overflow", "huge-int", "utf16"],
)
def test_hostile_cluster_file_is_config_error_json(tmp_path, capsys, text):
    from helpers import load_script

    path = write(tmp_path, text, "cluster.json")
    simulator_main = load_script(SCRIPTS / "autodl_sim.py").main
    code = simulator_main(["--cluster", path])
    captured = capsys.readouterr()
    document = strict_loads(captured.out)
    assert (code, document["error_type"]) == (1, "config_error"), document
    assert document["details"]["path"] == path
    assert "Traceback" not in captured.err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_cluster_fifo_is_refused(tmp_path, capsys):
    from helpers import load_script

    fifo = tmp_path / "cluster.fifo"
    os.mkfifo(fifo)
    code = load_script(SCRIPTS / "autodl_sim.py").main(["--cluster", str(fifo)])
    document = strict_loads(capsys.readouterr().out)
    assert (code, document["error_type"]) == (1, "config_error")


@pytest.mark.parametrize("speed", ["nan", "inf", "-1", "1e300"])
def test_simulator_speed_must_be_finite_and_bounded(capsys, speed):
    from helpers import load_script

    code = load_script(SCRIPTS / "autodl_sim.py").main(["--speed", speed])
    document = strict_loads(capsys.readouterr().out)
    assert (code, document["error_type"]) == (1, "usage_error")


# --- every path the user names ------------------------------------------------------------------

# Each script and its arguments, PATH standing for the path under test; the error type it answers with.
PATH_READERS = [
    ("validate_config.py", ["PATH"], "config_error"),
    ("queue_submit.py", ["PATH", "--dry-run"], "config_error"),
    ("list_containers.py", ["--config", "PATH"], "config_error"),
    ("doctor.py", ["--config", "PATH"], "config_error"),
    ("serve_gateway.py", ["--registry", "PATH"], "usage_error"),
    ("serve_gateway.py", ["--routes-file", "PATH"], "config_error"),
]
PATH_WRITERS = [
    ("haproxy_config.py", ["--deployment-uuid", DEP, "--out", "PATH"]),
    ("discover_services.py", ["--deployment-uuid", DEP, "--watch", "--duration", "1", "--out", "PATH"]),
]


def _hostile_paths(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, a word of the reason the message must give)."""
    a_file = tmp_path / "plain-file"
    a_file.write_text("x", encoding="utf-8")
    return {
        "name-too-long": (str(tmp_path / ("n" * 300 + ".json")), "文件名过长"),
        "under-a-file": (str(a_file / "config.json"), "不是目录"),
        "null-byte": (str(tmp_path / "a\0b.json"), "NUL"),
        "a-directory": (str(tmp_path), "是一个目录"),
        "a-device": ("/dev/null", "不是普通文件"),
    }


@pytest.mark.parametrize("kind", ["name-too-long", "under-a-file", "null-byte", "a-directory"])
@pytest.mark.parametrize(("script", "argv", "error_type"), PATH_READERS, ids=[r[0] for r in PATH_READERS])
def test_a_path_that_cannot_be_read_names_the_path_and_the_reason(run, tmp_path, result_validator, script, argv,
                                                                    error_type, kind):
    path, why = _hostile_paths(tmp_path)[kind]
    code, document, _ = run(script, *[path if word == "PATH" else word for word in argv])
    assert (code, document["error_type"], document["details"]["path"]) == (1, error_type, path), document
    assert why in document["message"] and why in document["details"]["reason"], document
    result_validator.validate(document)


@pytest.mark.parametrize("kind", ["name-too-long", "under-a-file", "null-byte", "a-directory", "a-device"])
@pytest.mark.parametrize(("script", "argv"), PATH_WRITERS, ids=[w[0] for w in PATH_WRITERS])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_call(run, tmp_path, result_validator, script,
                                                                          argv, kind):
    path, why = _hostile_paths(tmp_path)[kind]
    # No mock and a discard host: a call made first would answer api_error instead.
    code, document, _ = run(script, *[path if word == "PATH" else word for word in argv])
    assert (code, document["error_type"], document["details"]["path"]) == (1, "usage_error", path), document
    assert why in document["message"], document
    result_validator.validate(document)


ROUTES_TEXT = '{"routes": [{"model": "qwen", "deployment": "DEPLOYMENT"}]}'


@pytest.mark.parametrize(("text", "error_type"), [
    ("[" * 100_000 + "]" * 100_000, "config_error"),
    (ROUTES_TEXT.replace('"qwen"', "9" * 5000), "validation_error"),
    (ROUTES_TEXT.replace('"qwen"', "NaN"), "validation_error"),
    (ROUTES_TEXT.encode("utf-16"), "config_error"),
    ("", "config_error"),
], ids=["deep", "huge-int", "nan", "utf16", "empty"])
def test_hostile_routes_file_is_a_clear_input_error(run, tmp_path, result_validator, text, error_type):
    path = write(tmp_path, text, "routes.json")
    code, document, _ = run("serve_gateway.py", "--routes-file", path)
    assert (code, document["error_type"], document["details"]["path"]) == (1, error_type, path), document
    result_validator.validate(document)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_routes_fifo_is_refused_without_hanging(run, tmp_path):
    fifo = tmp_path / "routes.fifo"
    os.mkfifo(fifo)
    code, document, _ = run("serve_gateway.py", "--routes-file", str(fifo))
    assert (code, document["error_type"]) == (1, "config_error") and "不是普通文件" in document["message"]


def test_haproxy_out_is_replaced_atomically_and_readable_by_haproxy(run, tmp_path):
    out = tmp_path / ("h" * 250)  # the name fits; a temporary name built from it must too
    out.write_text("old", encoding="utf-8")
    code, document, _ = run("haproxy_config.py", "--deployment-uuid", DEP, "--out", str(out))
    assert (code, document["out"]) == (0, str(out)), document
    assert f"backend {document['backend']}" in out.read_text(encoding="utf-8")
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temporary(run, tmp_path, monkeypatch):
    import errno

    from autodl_esd.core import files

    out = tmp_path / "haproxy.cfg"
    out.write_text("old", encoding="utf-8")

    def disk_full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    code, document, _ = run("haproxy_config.py", "--deployment-uuid", DEP, "--out", str(out))
    assert (code, document["error_type"], document["details"]["reason"]) == (1, "usage_error", "磁盘空间已满")
    assert [p.name for p in tmp_path.iterdir()] == [out.name] and out.read_text(encoding="utf-8") == "old"


def test_haproxy_socket_path_must_fit_a_unix_socket(run):
    code, document, _ = run("haproxy_config.py", "--deployment-uuid", DEP, "--socket", "/run/" + "s" * 120)
    assert (code, document["error_type"]) == (1, "usage_error")
    assert "107" in document["message"]


def test_permission_denied_is_named_as_such(run, tmp_path, monkeypatch):
    """Tests run as root, where nothing is denied: the refusal the OS would give is simulated."""
    import errno

    from autodl_esd.core import files

    config = write(tmp_path, EXAMPLE_TEXT)
    real_open = os.open

    def deny(path, *args, **kwargs):
        if os.fspath(path) == config:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", deny)
    code, document, _ = run("validate_config.py", config)
    assert (code, document["error_type"], document["details"]["reason"]) == (1, "config_error", "没有权限")


@pytest.mark.parametrize(("errno_name", "words"), [("ENOSPC", "磁盘空间已满"), ("EROFS", "只读"), ("EACCES", "没有权限")])
def test_a_state_directory_that_cannot_be_created_is_config_error(run, tmp_path, monkeypatch, errno_name, words):
    import errno
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, document, _ = run("notify.py", "--title", "t")  # the send log is written before any send
    assert (code, document["error_type"]) == (1, "config_error"), document
    assert words in document["message"] and "XDG_STATE_HOME" in document["hint"]


@pytest.mark.parametrize("kind", ["a-file", "under-a-file", "name-too-long"])
@pytest.mark.parametrize("argv", [["jobs.py", "--list"], ["guard_deployment.py", "--list"]], ids=["jobs", "guards"])
def test_an_unusable_state_directory_is_config_error_naming_it(run, tmp_path, monkeypatch, result_validator, argv, kind):
    a_file = tmp_path / "plain-file"
    a_file.write_text("x", encoding="utf-8")
    xdg = {"a-file": a_file, "under-a-file": a_file / "sub", "name-too-long": tmp_path / ("s" * 300)}[kind]
    monkeypatch.setenv("XDG_STATE_HOME", str(xdg))
    code, document, _ = run(*argv)
    assert (code, document["error_type"]) == (1, "config_error"), document
    assert document["details"]["path"] == str(xdg / "autodl-elastic-deploy")
    result_validator.validate(document)


def test_a_record_that_is_not_utf8_is_listed_as_unreadable(run, tmp_path):
    jobs_dir = tmp_path / "state" / "autodl-elastic-deploy" / "submits"
    jobs_dir.mkdir(parents=True)
    (jobs_dir / "s-1.json").write_bytes(b'{"run_id": "s-1\xff"}')
    code, document, _ = run("jobs.py", "--list")
    assert (code, [item["state"] for item in document["items"]]) == (0, ["unreadable"]), document


# --- the simulator's request parsing and controls -----------------------------------------------

SIM_CREATE = "/api/v1/dev/deployment"
SIM_TEMPLATE = ('{"gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118, "cpu_num_from": 1, "cpu_num_to": 100, '
                '"memory_size_from": 1, "memory_size_to": 256, "price_from": 10, "price_to": 9000, '
                '"image_uuid": "image-db8346e037", "cmd": "sleep infinity"}')
SIM_BODY = '{"name": "h", "deployment_type": "ReplicaSet", "replica_num": 1, "container_template": ' + SIM_TEMPLATE + "}"


def _raw(instance, method, path, data: bytes | str, token=None):
    import requests

    return requests.request(method, instance.url + path, data=data, timeout=30,
                            headers={"Authorization": instance.token if token is None else token,
                                     "Content-Type": "application/json"})


@pytest.mark.parametrize("body", [
    SIM_BODY.replace('"replica_num": 1', '"replica_num": ' + "9" * 5000),
    SIM_BODY.replace('"replica_num": 1', '"replica_num": 1, "x": ' + "9" * 400),
    SIM_BODY.replace('"name": "h"', '"name": ' + "[" * 50_000 + "]" * 50_000),
    SIM_BODY.replace('"replica_num": 1', '"replica_num": NaN'),
    SIM_BODY.replace('"gpu_num": 1', '"gpu_num": 1e400'),
    SIM_BODY.replace('"gpu_num": 1', '"gpu_num": -Infinity'),
    SIM_BODY.encode("utf-16"),
], ids=["int-5000-digits", "int-400-digits-unknown-field", "nesting-50000", "nan", "float-overflow", "minus-infinity",
        "utf16"])
def test_a_hostile_create_body_is_a_business_error_not_a_500(sim, body):
    """A 500 on create means "may have been created" to a client; a body that cannot be decoded is
    the platform's HTTP 200 RequestParameterIsWrong, and nothing is created or logged broken."""
    instance = sim()
    answer = _raw(instance, "POST", SIM_CREATE, body)
    document = answer.json()
    assert (answer.status_code, document["code"], document["data"]) == (200, "RequestParameterIsWrong", None), document
    assert "请求参数错误" in document["msg"]
    assert instance.deployments() == []
    assert _raw(instance, "GET", "/_sim/requests", b"").status_code == 200  # the request log still renders


# path, body, a word of the message: each a 400 RequestParameterIsWrong, never a 500 or a silent coercion.
STRICT_CONTROLS = [
    ("/_sim/advance", {"seconds": "10"}, "seconds"),
    ("/_sim/advance", {"seconds": True}, "seconds"),
    ("/_sim/advance", {"seconds": 10, "x": 1}, "未知字段 x"),
    ("/_sim/advance", {}, "缺少字段 seconds"),
    ("/_sim/advance", '{"seconds": 1' + "0" * 400 + "}", "位"),
    ("/_sim/occupy", {"gpu_name": "RTX 4090", "count": "2"}, "count"),
    ("/_sim/occupy", {"gpu_name": "RTX 4090", "count": 2.5}, "count"),
    ("/_sim/occupy", {"gpu_name": "RTX 4090", "count": 10**18}, "count"),
    ("/_sim/occupy", {"gpu_name": 4090, "count": 1}, "gpu_name"),
    ("/_sim/faulty", {"machine_id": "MACHINE", "faulty": "no"}, "faulty"),
    ("/_sim/faulty", {"machine_id": "MACHINE", "faulty": 0}, "faulty"),
    ("/_sim/latency", {"machine_id": "MACHINE", "seconds": "1"}, "seconds"),
    ("/_sim/latency", {"machine_id": "MACHINE", "seconds": 1e300}, "seconds"),
    ("/_sim/concurrency", {"machine_id": "MACHINE", "requests": 1.5}, "requests"),
    ("/_sim/crash", {"container_uuid": "x", "exit_code": "1"}, "exit_code"),
    ("/_sim/wallet", {"balance_yuan": True}, "balance_yuan"),
    ("/_sim/wallet", {"blocked_yuan": "5"}, "blocked_yuan"),
    ("/_sim/wallet", {"balance_yuan": 1e300}, "balance_yuan"),
    ("/_sim/wallet", {"gated": "yes"}, "gated"),
]


@pytest.mark.parametrize(("path", "body", "words"), STRICT_CONTROLS,
                         ids=[f"{p.rsplit('/', 1)[1]}-{json.dumps(b)[:30] if isinstance(b, dict) else 'raw'}" for p, b, _ in STRICT_CONTROLS])
def test_simulator_controls_take_json_types_strictly(sim, path, body, words):
    instance = sim()
    machine_id = instance.machines()[0]["machine_id"]
    data = json.dumps(body).replace("MACHINE", machine_id) if isinstance(body, dict) else body
    before = instance.machines()[0]
    answer = _raw(instance, "POST", path, data)
    document = answer.json()
    assert (answer.status_code, document["code"]) == (400, "RequestParameterIsWrong"), document
    assert words in document["msg"], document
    assert instance.machines()[0] == before  # nothing was half-applied


def test_faulty_false_clears_and_true_sets(sim):
    instance = sim()
    machine_id = instance.machines()[0]["machine_id"]
    for value in (True, False):
        assert _raw(instance, "POST", "/_sim/faulty", json.dumps({"machine_id": machine_id, "faulty": value})).status_code == 200
        assert instance.machines()[0]["faulty"] is value


def test_simulator_controls_never_answer_500_to_any_json(sim):
    """Property (hypothesis, bounded and seeded): whatever JSON a control gets, the answer is
    200 or a 400 RequestParameterIsWrong/NotFound, never 500."""
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    instance = sim()
    machine_id = instance.machines()[0]["machine_id"]
    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                        st.sampled_from([machine_id, "RTX 4090", 0, 1, -1, 2**63, 1e300]))
    values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
    keys = st.sampled_from(["seconds", "machine_id", "gpu_name", "count", "faulty", "requests", "container_uuid",
                            "exit_code", "balance_yuan", "voucher_yuan", "blocked_yuan", "gated", "wechat_bound", "x"])
    paths = st.sampled_from(["/_sim/advance", "/_sim/occupy", "/_sim/faulty", "/_sim/latency", "/_sim/concurrency",
                             "/_sim/crash", "/_sim/wallet", "/_sim/llm", "/_sim/release"])

    @seed(20261207)
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(path=paths, body=st.dictionaries(keys, values, max_size=4))
    def check(path, body):
        if path == "/_sim/advance" and isinstance(body.get("seconds"), (int, float)) and not isinstance(body["seconds"], bool):
            body["seconds"] = min(abs(body["seconds"]), 60)  # the clock stays usable for the next examples
        answer = _raw(instance, "POST", path, json.dumps(body))
        assert answer.status_code in (200, 400, 404), (path, body, answer.text)
        if answer.status_code != 200:
            assert answer.json()["code"] in ("RequestParameterIsWrong", "NotFound"), (path, body, answer.text)

    check()


@pytest.mark.parametrize("argv", [["--host", ""], ["--host", "0.0.0.0"], ["--host", "::"],
                                  ["--host", "0.0.0.0", "--token", "sim-token"]],
                         ids=["empty", "any-v4", "any-v6", "the-default-token"])
def test_simulator_refuses_a_public_bind_with_the_well_known_token(capsys, argv):
    from helpers import load_script

    code = load_script(SCRIPTS / "autodl_sim.py").main(argv)
    document = strict_loads(capsys.readouterr().out)
    assert (code, document["error_type"], document["details"]["host"]) == (1, "usage_error", argv[1])
    assert "--allow-public-bind" in document["hint"]


@pytest.mark.parametrize("flags", [["--token", "a-token-of-my-own-0123"], ["--allow-public-bind"]])
def test_a_public_bind_goes_ahead_with_a_token_or_the_explicit_flag(capsys, tmp_path, flags):
    """Past the bind check: the next check (a missing cluster file) answers, so nothing listens."""
    from helpers import load_script

    code = load_script(SCRIPTS / "autodl_sim.py").main(["--host", "0.0.0.0", *flags, "--cluster", str(tmp_path / "none.json")])
    document = strict_loads(capsys.readouterr().out)
    assert (code, document["error_type"]) == (1, "config_error")


# --- numeric flags ----------------------------------------------------------------------------

NUMERIC_FLAGS = [
    ("queue_submit.py", [str(EXAMPLE), "--interval"]),
    ("queue_submit.py", [str(EXAMPLE), "--timeout"]),
    ("queue_submit.py", [str(EXAMPLE), "--startup-timeout"]),
    ("queue_submit.py", [str(EXAMPLE), "--sim", "--sim-busy"]),
    ("discover_services.py", ["--deployment-uuid", DEP, "--interval"]),
    ("discover_services.py", ["--deployment-uuid", DEP, "--health-timeout"]),
    ("discover_services.py", ["--deployment-uuid", DEP, "--watch", "--duration"]),
    ("find_faulty_hosts.py", ["--deployment-uuid", DEP, "--lookback-hours"]),
    ("find_faulty_hosts.py", ["--deployment-uuid", DEP, "--min-uptime"]),
    ("container_events.py", ["--deployment-uuid", DEP, "--follow", "--timeout"]),
    ("container_events.py", ["--deployment-uuid", DEP, "--follow", "--interval"]),
]


@pytest.mark.parametrize(("script", "argv"), NUMERIC_FLAGS, ids=[f"{s}{a[-1]}" for s, a in NUMERIC_FLAGS])
@pytest.mark.parametrize("value", ["nan", "inf", "Infinity", "1e308", "1e12", "-1"])
def test_numeric_flags_are_finite_and_bounded(run, result_validator, script, argv, value):
    code, document, _ = run(script, *argv, value)
    assert (code, document["error_type"]) == (1, "usage_error"), document
    assert "有限数" in document["message"] or "不是数字" in document["message"], document
    result_validator.validate(document)


def test_duration_limit_is_inclusive_and_documented(capsys):
    from autodl_esd.core import cli

    assert cli.positive_seconds(str(cli.MAX_DURATION_SECONDS)) == cli.MAX_DURATION_SECONDS
    assert cli.non_negative_seconds("0") == 0
    assert cli.positive_hours("8760") == 8760
    assert str(cli.MAX_DURATION_SECONDS) in cli.EXIT_CODE_EPILOG
    assert f"{cli.MIN_DURATION_SECONDS:g}..{cli.MAX_DURATION_SECONDS}" in cli.EXIT_CODE_EPILOG
    assert str(cli.MAX_COUNT) in cli.EXIT_CODE_EPILOG
    assert cli.MAX_AMOUNT == 1e9 and "不超过 1e9" in cli.EXIT_CODE_EPILOG


# --- environment ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1e300", "nan", "inf", "0", "-5", "3601"])
def test_http_timeout_must_be_finite_and_bounded(run, monkeypatch, value):
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", value)
    code, document, _ = run("list_images.py")
    assert (code, document["error_type"], document["details"]["path"]) == (1, "config_error", "AUTODL_HTTP_TIMEOUT")


@pytest.mark.parametrize(
    "host",
    ["http://127.0.0.1:99999", "http://127.0.0.1:0", "http://127.0.0.1:-1", "https://api.autodl.com:abc",
     "https://api.autodl.com/ x", "https://api.auto\ndl.com"],
)
def test_host_with_a_bad_port_or_characters_is_config_error(run, monkeypatch, host):
    monkeypatch.setenv("AUTODL_HOST", host)
    code, document, _ = run("list_images.py")
    assert (code, document["error_type"], document["details"]["path"]) == (1, "config_error", "AUTODL_HOST")


MALFORMED_TOKENS = [
    "sk-abcdef\n0123456789",  # a copy-paste that broke the line
    "sk-abcdef\r0123456789",
    "sk-abcdef 0123456789",
    "sk-abcdef\x7f0123456789",
    "sk-令牌abcdef0123456789",  # not Latin-1: UnicodeEncodeError in the header
    "sk-abcdef\u00e90123456789",  # Latin-1 but not ASCII
]


def _all_spellings(token: str) -> list[str]:
    return [token, repr(token)[1:-1], json.dumps(token)[1:-1], json.dumps(token, ensure_ascii=False)[1:-1],
            token.encode("unicode_escape").decode(), "sk-abcdef", "0123456789"]


@pytest.mark.parametrize("token", MALFORMED_TOKENS, ids=range(len(MALFORMED_TOKENS)))
def test_malformed_token_is_refused_before_any_request(run, monkeypatch, result_validator, token):
    monkeypatch.setenv("AUTODL_TOKEN", token)
    code, document, stderr = run("list_images.py", "--debug")  # no mock: a request would fail
    assert (code, document["error_type"], document["details"]["code"]) == (1, "auth_error", "TokenMalformed")
    assert "malformed" in document["message"]
    result_validator.validate(document)
    text = json.dumps(document, ensure_ascii=False) + json.dumps(document) + stderr
    for spelling in _all_spellings(token):
        assert spelling not in text


def test_malformed_token_from_env_file_says_where(run, monkeypatch, tmp_path):
    from autodl_esd.core import settings

    env_file = tmp_path / ".env"
    env_file.write_text('AUTODL_TOKEN="sk-abcdef\\n0123456789"\n', encoding="utf-8")
    monkeypatch.delenv("AUTODL_TOKEN")
    monkeypatch.setattr(settings, "ENV_FILE", env_file)
    code, document, _ = run("list_images.py")
    assert (code, document["error_type"], document["details"]["where"]) == (1, "auth_error", str(env_file))


def test_malformed_token_in_a_real_process_never_leaks(tmp_path):
    token = "sk-abcdef\n0123456789"
    env = {**os.environ, "AUTODL_TOKEN": token, "AUTODL_HOST": "http://127.0.0.1:9"}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "queue_submit.py"), str(EXAMPLE), "--dry-run", "--debug"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    document = strict_loads(completed.stdout)
    assert (completed.returncode, document["error_type"]) == (1, "auth_error")
    for spelling in _all_spellings(token):
        assert spelling not in completed.stdout + completed.stderr


def test_request_library_refusals_never_quote_the_token(monkeypatch):
    """Behind the token check: if requests still refuses a header, only the type is told."""
    import requests

    from autodl_esd.core.errors import ApiError
    from autodl_esd.core.http import ApiClient
    from autodl_esd.core.settings import Settings

    token = "sk-abcdef\n0123456789"
    output.register_secret(token)
    client = ApiClient(Settings(host="http://127.0.0.1:9", http_timeout=1.0, token=token))

    def refuse(*_args, **_kwargs):
        raise requests.exceptions.InvalidHeader(f"Invalid return character or leading space in header: {token!r}")

    monkeypatch.setattr(client.session, "request", refuse)
    with pytest.raises(ApiError) as caught:
        client.get("/api/v1/dev/machine/gpu_stock")
    text = json.dumps(caught.value.to_dict(), ensure_ascii=False)
    assert "InvalidHeader" in text and "0123456789" not in text
    assert not caught.value.ambiguous


# --- the scrubber ------------------------------------------------------------------------------

@pytest.mark.parametrize("secret", ["sk-abcdef\n0123456789", "sk-abc'def\"0123\\456789", "令牌-abcdef0123456789\t"])
def test_scrubber_catches_escaped_and_repr_forms(capsys, secret):
    output.register_secret(secret)
    exception_text = f"InvalidHeader: header value {secret!r}"
    output.emit_success({"exception": exception_text, "plain": secret, "bytes": repr(secret.encode("utf-8"))})
    out = capsys.readouterr().out
    for spelling in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], json.dumps(exception_text)[1:-1]):
        assert spelling not in out
    assert out.count(output.REDACTED) >= 3


# --- strict JSON on stdout ---------------------------------------------------------------------

def test_stdout_is_strict_json_even_with_non_finite_numbers(capsys):
    output.emit_success({"ratio": float("nan"), "items": [float("inf"), -float("inf"), 1.5], "deployment_uuid": DEP})
    document = strict_loads(capsys.readouterr().out)
    assert document == {"status": "success", "ratio": None, "items": [None, None, 1.5], "deployment_uuid": DEP}


def test_lone_surrogates_in_output_are_escaped_not_fatal(capsys):
    output.emit_success({"name": "demo\ud800", "text": "中文"})
    document = strict_loads(capsys.readouterr().out)
    assert document["name"] == "demo\ud800" and document["text"] == "中文"


def _json_dump_calls():
    """json.dump(s) calls that produce a document (stdout, a file, an HTTP body).

    Skipped: calls inside an f-string (a value quoted in a message, never parsed back), and
    a call whose previous line says `# allow-nan: <why>`."""
    for path in sorted([*SCRIPTS.rglob("*.py"), ROOT / "queue_submit.py"]):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        in_fstring = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("dump", "dumps") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "json" and id(node) not in in_fstring
                    and "# allow-nan:" not in lines[node.lineno - 2]):
                yield path, node


def test_every_json_dump_in_the_bundle_refuses_nan():
    """allow_nan=False everywhere: NaN is not JSON, and a reader of ours must never meet it."""
    missing = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, node in _json_dump_calls()
        if not any(kw.arg == "allow_nan" and isinstance(kw.value, ast.Constant) and kw.value.value is False
                   for kw in node.keywords)
    ]
    assert not missing, f"json.dump(s) without allow_nan=False: {missing}"


# Checked after parsing, with their own usage_error (see the simulator tests above).
CHECKED_IN_MAIN = {("autodl_sim.py", "--speed"), ("autodl_sim.py", "--balance-yuan"), ("autodl_sim.py", "--blocked-yuan")}


def _typed_options():
    from helpers import load_script

    for path in [ROOT / "queue_submit.py", *sorted(SCRIPTS.glob("*.py"))]:
        if "def build_parser" not in path.read_text(encoding="utf-8"):
            continue
        for action in load_script(path).build_parser()._actions:
            if action.type is not None and not action.choices and action.option_strings:
                yield path.name, action.option_strings[-1], action.type


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "9" * 5000])
def test_every_numeric_flag_of_every_script_refuses_non_finite_and_absurd_values(value):
    import argparse

    accepted = []
    for script, option, parse in _typed_options():
        if (script, option) in CHECKED_IN_MAIN:
            continue
        try:
            result = parse(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        if isinstance(result, (int, float)):
            accepted.append(f"{script} {option}={value[:12]} -> {result!r:.20}")
    assert not accepted, accepted


# Options whose type is a script's own (a date, a port, a seed): not a number with a range.
NOT_A_RANGE = {("cost_report.py", "--since"), ("autodl_sim.py", "--port"), ("autodl_sim.py", "--seed"),
               ("autodl_sim.py", "--service-ports"), *CHECKED_IN_MAIN}


def _ranged_options():
    for script, option, parse in _typed_options():
        if (script, option) not in NOT_A_RANGE:
            yield script, option, parse


def test_every_numeric_flag_has_a_floor_and_a_ceiling_stated_in_its_help():
    from helpers import load_script

    helps = {}
    unbounded, unstated = [], []
    for script, option, parse in _ranged_options():
        schema = getattr(parse, "json_schema", {})
        if "maximum" not in schema or not ({"minimum", "exclusiveMinimum"} & set(schema)):
            unbounded.append(f"{script} {option}: {schema}")
            continue
        if script not in helps:
            path = ROOT / script if (ROOT / script).is_file() else SCRIPTS / script
            helps[script] = " ".join(load_script(path).build_parser().format_help().split())
        if parse.bounds not in helps[script]:
            unstated.append(f"{script} {option}: {parse.bounds}")
    assert not unbounded, unbounded
    assert not unstated, unstated


def test_every_interval_has_a_floor_above_zero():
    from autodl_esd.core import cli

    floors = {f"{script} {option}": parse.json_schema.get("minimum", 0)
              for script, option, parse in _ranged_options() if "interval" in option}
    assert len(floors) >= 7, floors  # queue_submit (2), guard, events, discover, gateway, set_replicas
    assert all(floor >= cli.MIN_DURATION_SECONDS for floor in floors.values()), floors


@pytest.mark.parametrize(("script", "argv"), [
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--interval", "1e-300"]),
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--interval", "0.001"]),
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--max-queue", "99999999999999999999"]),
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--max-queue", "100001"]),
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--max-inflight-per-replica", "10001"]),
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--max-replicas", "10001"]),
    ("set_replicas.py", ["--deployment-uuid", DEP, "--replicas", "10001"]),
    ("queue_submit.py", [str(EXAMPLE), "--interval", "0.001"]),
    ("queue_submit.py", [str(EXAMPLE), "--timeout", "1e-300"]),
    ("discover_services.py", ["--deployment-uuid", DEP, "--watch", "--max-cycles", "1" + "0" * 20]),
    ("jobs.py", ["--logs", "x", "--tail", "9" * 5000]),
    ("container_events.py", ["--deployment-uuid", DEP, "--offset", str(2**31)]),
], ids=lambda value: value if isinstance(value, str) else " ".join(value[-2:])[:40])
def test_an_absurd_interval_or_count_is_usage_error_naming_the_range(run, result_validator, script, argv):
    code, document, _ = run(script, *argv)
    assert (code, document["error_type"]) == (1, "usage_error"), document
    assert "范围" in document["message"] or "之间" in document["message"], document
    result_validator.validate(document)


def test_zero_still_means_no_limit_where_it_did():
    from autodl_esd.core import cli

    assert cli.non_negative_seconds("0") == 0 and cli.non_negative_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError):
        cli.non_negative_seconds("0.001")  # neither "no limit" nor a wait the scripts can honour


@pytest.mark.parametrize("balance", ["nan", "inf", "-1", "1e300"])
def test_simulator_balance_must_be_finite_and_bounded(capsys, balance):
    from helpers import load_script

    code = load_script(SCRIPTS / "autodl_sim.py").main(["--balance-yuan", balance])
    document = strict_loads(capsys.readouterr().out)
    assert (code, document["error_type"]) == (1, "usage_error")
