"""serve_gateway.py --detach and discover_services.py --watch --detach, followed with jobs.py.

Detached services are real background processes started by the script under test (run
in-process here, so they inherit the test's AUTODL_HOST, AUTODL_TOKEN and XDG_STATE_HOME).
Every one a test starts is ended before the test returns: cancelled through jobs.py, and
killed by the pid in its record by the `services` fixture whatever happened.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import running_uuids
from helpers.servers import pid_alive, wait_for

pytest.importorskip("aiohttp")

# Waits poll and end as soon as their condition holds; the bound is for a loaded 2-core
# machine where a detached Python start with aiohttp can take seconds.
WAIT_SECONDS = 30.0
QUIET = "--quiet"


def records() -> list:
    from autodl_esd.serving import detached

    directory = detached.services_dir()
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json"))] if directory.is_dir() else []


@pytest.fixture
def services():
    """Pids of the detached services a test saw; at the end every one still running (and
    every pid in a record) is killed, so no process outlives its test."""
    seen: list[int] = []
    yield seen
    pids = set(seen) | {record["pid"] for record in records() if record.get("pid")}
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in pids:
        wait_for(lambda: not pid_alive(pid), WAIT_SECONDS, what=f"pid {pid} to go")


def get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def test_a_detached_gateway_serves_is_listed_stops_with_its_summary_and_resumes(sim, deploy, run, result_validator, services):
    instance = sim()
    deployment_uuid = deploy(2)

    code, started, _ = run("serve_gateway.py", "--deployment-uuid", deployment_uuid, "--listen", "127.0.0.1:0",
                           "--interval", "0.2", "--detach", QUIET)
    assert code == 0, started
    result_validator.validate(started)
    services.append(started["pid"])
    assert started["detached"] is True and started["kind"] == "gateway" and started["run_id"].startswith("gw-")
    assert started["state"] == "running" and started["alive"] is True and pid_alive(started["pid"])
    assert not started["url"].endswith(":0") and started["ready"]["deployment_uuid"] == deployment_uuid
    assert started["log_file"].startswith(os.environ["XDG_STATE_HOME"])
    run_id, url = started["run_id"], started["url"]

    status, body = get(url + "/predict")
    assert status == 200 and body["container_uuid"] in running_uuids(instance, deployment_uuid), body

    code, listed, _ = run("jobs.py", "--list", "--kind", "gateway", QUIET)
    [item] = listed["items"]
    assert code == 0 and item["run_id"] == run_id and item["alive"] is True and item["url"] == url

    code, stopped, _ = run("jobs.py", "--cancel", run_id, QUIET)
    assert code == 0 and stopped["changed"] is True and stopped["state"] == "stopped" and stopped["alive"] is False, stopped
    summary = stopped["summary"]
    assert summary["stopped_by"] == "SIGTERM" and summary["drained"] is True and summary["requests"] == 1, summary
    wait_for(lambda: not pid_alive(started["pid"]), WAIT_SECONDS, what="the stopped gateway's process to exit")

    code, resumed, _ = run("jobs.py", "--resume", run_id, QUIET)
    assert code == 0 and resumed["resumed"] is True and resumed["state"] == "running", resumed
    services.append(resumed["pid"])
    assert resumed["pid"] != started["pid"] and "summary" not in resumed  # a fresh run: the old summary is gone
    assert get(resumed["url"] + "/predict")[0] == 200

    code, stopped, _ = run("jobs.py", "--cancel", run_id, QUIET)
    assert code == 0 and stopped["state"] == "stopped" and stopped["summary"]["requests"] == 1, stopped


def test_a_detached_watcher_keeps_its_registry_and_comes_back_after_kill_9(sim, deploy, run, tmp_path, monkeypatch, services):
    instance = sim()
    deployment_uuid = deploy(2)
    monkeypatch.chdir(tmp_path)  # a relative --out is this directory's file, not the background process's

    code, started, _ = run("discover_services.py", "--deployment-uuid", deployment_uuid, "--watch", "--interval", "0.1",
                           "--out", "registry.json", "--detach", QUIET)
    assert code == 0, started
    services.append(started["pid"])
    registry = tmp_path / "registry.json"
    assert started["kind"] == "watch" and started["run_id"].startswith("w-")
    assert Path(started["registry"]).resolve() == registry.resolve()
    assert registry.is_file()  # ready means the first registry is written
    wait_for(lambda: {s["container_uuid"] for s in json.loads(registry.read_text(encoding="utf-8"))["services"]}
             == running_uuids(instance, deployment_uuid), what="the registry to list the running replicas")
    run_id = started["run_id"]

    code, status, _ = run("jobs.py", "--status", run_id, QUIET)
    assert code == 0 and status["alive"] is True and status["state"] == "running" and "hint" not in status, status

    os.kill(started["pid"], signal.SIGKILL)  # a crash, not a cancel

    def status_once_dead():
        shown = run("jobs.py", "--status", run_id, QUIET)[1]
        return None if shown["alive"] else shown

    status = wait_for(status_once_dead, WAIT_SECONDS, what="the killed watcher to show as not alive")
    assert status["state"] == "running" and f"jobs.py --resume {run_id}" in status["hint"], status

    registry.unlink()
    code, resumed, _ = run("jobs.py", "--resume", run_id, QUIET)
    assert code == 0 and resumed["resumed"] is True and resumed["alive"] is True, resumed
    services.append(resumed["pid"])
    assert registry.is_file()  # the same arguments: the same (absolute) --out

    code, stopped, _ = run("jobs.py", "--cancel", run_id, QUIET)
    assert code == 0 and stopped["state"] == "stopped", stopped
    assert stopped["summary"]["stopped_by"] == "SIGTERM" and Path(stopped["summary"]["out"]).resolve() == registry.resolve()


@pytest.mark.parametrize("script, argv, error_type", [
    ("discover_services.py", ["--deployment-uuid", "833f1cd5a764fa3", "--detach"], "usage_error"),  # without --watch
    ("discover_services.py", ["--name", "no-such-service", "--watch", "--detach"], "not_found"),
    ("discover_services.py", ["--deployment-uuid", "833f1cd5a764fa3", "--watch", "--redis", "redis://:s3cret-pw@127.0.0.1:6379/0",
                              "--detach"], "usage_error"),
    ("serve_gateway.py", ["--registry", "/nonexistent/registry.json", "--detach"], "usage_error"),
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--listen", "0.0.0.0:0", "--detach"], "usage_error"),
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--auth-token-env", "NO_SUCH_VARIABLE", "--detach"], "usage_error"),
    ("serve_gateway.py", ["--name", "no-such-service", "--listen", "127.0.0.1:0", "--detach"], "not_found"),
    ("serve_gateway.py", ["--registry-url", "http://127.0.0.1:9", "--detach", "--job-id", "gw-1"], "usage_error"),
    ("discover_services.py", ["--name", "x", "--watch", "--redis", "redis://:pw-in-url@127.0.0.1:9/0", "--detach"], "usage_error"),
])
def test_bad_input_with_detach_is_answered_in_the_foreground_and_starts_nothing(sim, run, result_validator, script, argv, error_type):
    sim()
    code, out, _ = run(script, *argv, QUIET)
    assert (code, out["error_type"]) == (1, error_type), out
    result_validator.validate(out)
    assert records() == []
    if "--redis" in argv:  # the way that works: the password in the environment, never in the record
        assert "AUTODL_REDIS_PASSWORD" in out["hint"] and "pw-in-url" not in json.dumps(out, ensure_ascii=False)
    assert "s3cret-pw" not in json.dumps(out)


def test_a_service_that_cannot_start_says_why_and_leaves_no_job(run, tmp_path):
    from autodl_esd.serving import detached

    registry = tmp_path / "registry.json"
    registry.write_text("{}", encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, _ = run("serve_gateway.py", "--registry", str(registry), "--listen", f"127.0.0.1:{port}", "--detach", QUIET)
    assert (code, out["error_type"]) == (1, "usage_error"), out  # the background process's own answer
    assert "无法监听" in out["message"] and "run_id" not in out["details"]
    assert records() == [] and not any(detached.services_dir().iterdir())


def test_the_gateway_token_stays_in_the_environment_and_out_of_the_record(run, tmp_path, monkeypatch, services):
    token = "gateway-secret-0123456789abcdef"
    monkeypatch.setenv("GATEWAY_TOKEN", token)
    registry = tmp_path / "registry.json"
    registry.write_text("{}", encoding="utf-8")

    code, started, _ = run("serve_gateway.py", "--registry", str(registry), "--listen", "127.0.0.1:0",
                           "--auth-token-env", "GATEWAY_TOKEN", "--detach", QUIET)
    assert code == 0, started
    services.append(started["pid"])
    assert "--auth-token-env GATEWAY_TOKEN" in started["command"] and started["done"] is False
    words = shlex.split(started["command"])  # pasteable from any directory
    assert words[0] == "python3" and Path(words[1]).is_absolute() and words[-2:] == ["--auth-token-env", "GATEWAY_TOKEN"]
    # The background process read the token from the environment it inherited.
    assert get(started["url"] + "/_gateway/status")[0] == 401
    assert get(started["url"] + "/_gateway/status", {"Authorization": f"Bearer {token}"})[0] == 200

    code, stopped, _ = run("jobs.py", "--cancel", started["run_id"], QUIET)
    assert code == 0 and stopped["state"] == "stopped" and stopped["done"] is True, stopped
    state_dir = tmp_path / "state"
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(encoding="utf-8", errors="replace"), path


def test_the_command_line_kept_for_resume_reads_back_to_the_same_arguments(tmp_path, monkeypatch):
    from helpers import load_script, script_path

    from autodl_esd.core import cli

    monkeypatch.chdir(tmp_path)
    parser = load_script(script_path("serve_gateway.py")).build_parser()
    typed = ["--registry=registry.json", "--listen", "127.0.0.1:0", "--interval", "0.25", "--allow-host", "a.example",
             "--allow-host=-b.example", "--deta", "--auto", "--yes", "--max-hourly-cost", "1e-3"]
    args = parser.parse_args(typed)
    argv = cli.command_line(parser, args, drop=("detach", "job_id"), paths=("config", "registry"))

    assert argv[:2] == ["--registry", str(tmp_path / "registry.json")]
    assert "--detach" not in argv and "--deta" not in argv and "--policy" not in argv  # defaults left out
    again = parser.parse_args(argv)
    assert {**vars(again), "detach": True, "registry": "registry.json"} == vars(args)
