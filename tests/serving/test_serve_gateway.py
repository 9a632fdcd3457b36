"""The gateway end to end against the simulator: replicas replaced under a stable URL, SSE
through it, a crash mid-stream, queue_aware reading vLLM-style /metrics, and the script's
lifecycle (ready line, SIGTERM drain, final summary, its end when the deployment is
deleted). Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import SCRIPTS
from helpers.servers import stop

pytest.importorskip("aiohttp")
pytest.importorskip("simulator")

import requests  # noqa: E402


# Watcher and gateway poll interval in these tests (real seconds).
INTERVAL = 0.1
# Waits poll and end as soon as their condition holds (well under a second idle); the
# bound is for a loaded 2-core CI machine.
WAIT_SECONDS = 30


def running(instance, deployment_uuid) -> list[dict]:
    return [c for c in instance.containers(deployment_uuid) if c["status"] == "running"]


def watched_gateway(loop_thread, instance, deployment_uuid, **options):
    from autodl_esd.core.http import ApiClient
    from autodl_esd.serving.registry.watcher import HealthTracker, RegistryWatcher, WatchOptions
    from autodl_esd.serving.routing.sources import WatcherSource
    from autodl_esd.core.settings import Settings

    client = ApiClient(Settings(host=instance.url, http_timeout=5, token=instance.token))
    health = HealthTracker("/health", 1.0, 2) if options.pop("watch_health", False) else None
    watcher = RegistryWatcher(client, deployment_uuid, WatchOptions(interval=INTERVAL, resync_every=5, health=health))
    source = WatcherSource(watcher, stale_after=3 * INTERVAL)
    source.start()
    assert source.wait_first(WAIT_SECONDS)
    gateway = loop_thread.gateway(source, deployment_uuid=deployment_uuid, interval=INTERVAL, **options)
    loop_thread._cleanups.append(lambda: _stop_source(source))
    return gateway


async def _stop_source(source):
    source.stop()


def test_the_stable_url_serves_while_replicas_are_replaced(sim, deploy, loop_thread):
    instance = sim()
    deployment_uuid = deploy(2)
    gateway = watched_gateway(loop_thread, instance, deployment_uuid, retries=2, eject_seconds=5)
    first = {c["uuid"] for c in running(instance, deployment_uuid)}
    answers, served = [], set()
    session = requests.Session()

    def serving_replicas() -> set:
        return {r["container_uuid"] for r in gateway.status()["replicas"] if r["state"] == "ready"}

    # Each step waits for a number of answers, not a time, so a slow machine still sends
    # requests before, between and after the crashes.
    crashed_at: list[int] = []  # len(answers) at each crash
    chaos_problems: list = []

    def after_answers(count: int) -> None:
        instance.wait_until(lambda: len(answers) >= count, WAIT_SECONDS)

    def crash_one_then_another():
        # the second crash waits until the first replacement serves: two replicas, one at a time
        try:
            one, other = sorted(first)
            after_answers(10)
            crashed_at.append(len(answers))
            instance.crash_container(one)
            instance.wait_until(lambda: serving_replicas() - first, WAIT_SECONDS)
            after_answers(crashed_at[0] + 10)
            crashed_at.append(len(answers))
            instance.crash_container(other)
        except BaseException as problem:  # the main loop must not run on forever
            chaos_problems.append(repr(problem))

    chaos = threading.Thread(target=crash_one_then_another)
    chaos.start()
    deadline = time.monotonic() + 2 * WAIT_SECONDS + 10
    while chaos.is_alive() or (not chaos_problems and len(answers) < crashed_at[-1] + 10):
        assert time.monotonic() < deadline, (crashed_at, len(answers))
        response = session.get(gateway.url + "/predict", timeout=WAIT_SECONDS)
        answers.append(response.status_code)
        served.add(response.headers.get("X-Served-By"))
        time.sleep(0.01)
    chaos.join()
    assert not chaos_problems and len(crashed_at) == 2, chaos_problems
    # the ReplicaSet controller replaces both; wait until the gateway routes to a new one
    instance.wait_until(lambda: session.get(gateway.url + "/predict", timeout=5).headers["X-Served-By"] not in first,
                        WAIT_SECONDS)
    assert set(answers) == {200}, answers  # every request answered, failures retried elsewhere
    assert len(answers) > 20
    status = session.get(gateway.url + "/_gateway/status", timeout=5).json()
    assert all(r["inflight"] == 0 for r in status["replicas"])


def test_sse_streams_through_and_a_crash_mid_stream_ends_the_client_stream(sim, deploy, loop_thread):
    instance = sim()
    deployment_uuid = deploy(2)
    # 0.1 s a token: the first and last of 8 are 0.7 s or more apart when streamed, 0 when
    # buffered; 0.2 s of that may go to a stalled client thread on a loaded machine.
    for machine in {c["machine_id"] for c in running(instance, deployment_uuid)}:
        instance.set_machine_latency(machine, 0.1)
    gateway = watched_gateway(loop_thread, instance, deployment_uuid, policy="round_robin")
    body = {"model": "m", "prompt": "hi", "max_tokens": 8, "stream": True}
    arrivals = []
    started = time.monotonic()
    with requests.post(gateway.url + "/v1/completions", json=body, stream=True, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                arrivals.append((time.monotonic() - started, line))
    assert arrivals[-1][1] == b"data: [DONE]" and len(arrivals) == 9
    assert arrivals[0][0] < arrivals[-1][0] - 0.2  # the first token came well before the last
    whole = requests.post(gateway.url + "/v1/chat/completions", json={"messages": [], "max_tokens": 3}, timeout=5).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["content"] == " tok0 tok1 tok2"

    with requests.post(gateway.url + "/v1/completions", json={**body, "max_tokens": 40}, stream=True,
                       timeout=WAIT_SECONDS) as response:
        victim = response.headers["X-Served-By"]
        lines = response.iter_lines()
        next(lines)
        instance.crash_container(victim)
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ChunkedEncodingError):  # a hung stream is a read timeout instead
            for _ in lines:
                pass
        assert time.monotonic() - started < WAIT_SECONDS  # cut, not the 300 s upstream timeout
    after = requests.post(gateway.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=5)
    assert after.status_code == 200 and after.headers["X-Served-By"] != victim


def test_queue_aware_prefers_the_replica_with_the_shorter_reported_queue(sim, deploy, loop_thread, monkeypatch):
    from autodl_esd.serving.routing import gateway as gateway_module

    # A report counts for 3 polls (0.3 s here); a loaded machine can poll later than that,
    # and without a fresh report both replicas score their (equal) in-flight counts. Seen
    # failing so under load: the request waited behind the busy replica's backlog.
    monkeypatch.setattr(gateway_module, "REPORT_MAX_AGE_INTERVALS", 300)
    instance = sim()
    deployment_uuid = deploy(2)
    containers = running(instance, deployment_uuid)
    for container in containers:
        instance.set_machine_concurrency(container["machine_id"], 1)
        instance.set_machine_latency(container["machine_id"], 0.04)
    gateway = watched_gateway(loop_thread, instance, deployment_uuid, policy="queue_aware", load_path="/metrics")
    busy = containers[0]
    busy_url = f"{instance.url}/svc/{busy['uuid']}/p6006/v1/completions"
    # Other clients (not through this gateway) pile work onto the busy replica: 5 requests
    # of 500 steps (20 s each), served one at a time, so its queue stays long however slowly
    # the requests below go; this gateway's own in-flight counts cannot see them. The crash
    # at the end cuts them short.
    with ThreadPoolExecutor(5) as others:
        try:
            for _ in range(5):
                others.submit(requests.post, busy_url, json={"max_tokens": 500}, timeout=60)
            instance.wait_until(lambda: (loop_thread.call(lambda: gateway.table.replicas[busy["uuid"]].report) or None)
                                and gateway.table.replicas[busy["uuid"]].report.waiting >= 3, WAIT_SECONDS)
            served = [requests.get(gateway.url + "/predict", timeout=10).headers["X-Served-By"] for _ in range(6)]
            reports = {r["container_uuid"]: r["load_report"] for r in gateway.status()["replicas"]}
        finally:
            instance.crash_container(busy["uuid"])
    assert served.count(busy["uuid"]) == 0, (served, reports)


def start_gateway_script(*argv, env=None):
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "serve_gateway.py"), *argv],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    ready = json.loads(process.stdout.readline() or "{}")
    return process, ready


def test_the_script_prints_ready_drains_on_sigterm_and_summarizes(sim, deploy):
    instance = sim()
    deployment_uuid = deploy(1)
    for container in running(instance, deployment_uuid):
        instance.set_machine_latency(container["machine_id"], 0.05)
    process, ready = start_gateway_script("--deployment-uuid", deployment_uuid, "--listen", "127.0.0.1:0",
                                          "--interval", "0.2", "--drain-seconds", "5", "--quiet")
    try:
        assert ready["status"] == "success" and ready["deployment_uuid"] == deployment_uuid, ready
        url = ready["url"]
        assert requests.get(url + "/predict", timeout=5).status_code == 200
        with requests.post(url + "/v1/completions", json={"max_tokens": 12, "stream": True}, stream=True, timeout=5) as response:
            lines = response.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)  # mid-stream: the stream still completes
            rest = [line for line in lines if line]
        assert rest[-1] == b"data: [DONE]"
        out, err = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["status"] == "success" and summary["stopped_by"] == "SIGTERM" and summary["drained"] is True
    assert summary["requests"] == 2 and summary["by_status_class"]["2xx"] == 2
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + "/predict", timeout=2)


def test_an_unknown_deployment_is_a_json_error_before_anything_listens(sim, run):
    sim()
    code, out, _ = run("serve_gateway.py", "--name", "no-such-service", "--listen", "127.0.0.1:0", "--quiet")
    assert code == 1 and out["error_type"] == "not_found"
    code, out, _ = run("serve_gateway.py", "--registry", "/nonexistent/registry.json", "--quiet")
    assert code == 1 and out["error_type"] == "usage_error"


def test_in_process_gateway_ends_when_its_deployment_is_deleted(sim, deploy):
    pytest.importorskip("aiohttp")
    instance = sim()
    deployment_uuid = deploy(1)
    gateway = subprocess.Popen([sys.executable, str(SCRIPTS / "serve_gateway.py"), "--deployment-uuid", deployment_uuid,
                                "--listen", "127.0.0.1:0", "--interval", "0.1", "--drain-seconds", "2", "--quiet"],
                               env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(gateway.stdout.readline() or "{}")
        assert ready.get("status") == "success", ready
        assert requests.get(ready["url"] + "/predict", timeout=5).status_code == 200
        answer = requests.delete(instance.url + "/api/v1/dev/deployment", json={"deployment_uuid": deployment_uuid},
                                 headers={"Authorization": instance.token}, timeout=5).json()
        assert answer["code"] == "Success", answer
        out, err = gateway.communicate(timeout=30)
    finally:
        stop(gateway)
    assert gateway.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped_by"] == "deployment_gone" and "已不存在" in summary["ended_reason"]


def _loop_module() -> str:
    import asyncio

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    from autodl_esd.serving.serve import run_loop

    return run_loop(which())


def test_the_gateway_runs_on_asyncio_without_uvloop_and_on_uvloop_with_it(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError: as if not installed
        assert _loop_module().startswith("asyncio")
    pytest.importorskip("uvloop")
    assert _loop_module().startswith("uvloop")
