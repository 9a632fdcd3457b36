"""Findings of a new user's scale-out trial on the simulator (--speed 30, redis + haproxy):
HAProxy on the stock simulator, a feed_command one can paste, a watcher that ends with its
deployment, and how long a simulated Job's command runs."""

from __future__ import annotations

import pytest

from simulator import Simulator
from simulator.lifecycle import plan_run

DEFAULT_JOB_SECONDS = 63.0
SECONDS_TO_RUNNING = 29  # creating 20 + created 2 + starting 5 + oss_merged 2


# --- 4. how long a simulated Job runs -----------------------------------------------------


@pytest.mark.parametrize("cmd, seconds, exit_code", [
    ("sleep 120", 120.0, 0),
    ('bash -c "sleep 120"', 120.0, 0),
    ("/bin/sh -lc 'cd /root && sleep 120'", 120.0, 0),
    ("python x.py && sleep 120", 120.0, 0),
    ("sleep 120; echo done", 120.0, 0),
    ("sleep 120 && echo done", 120.0, 0),
    ("sleep 2m", 120.0, 0),
    ("sleep 1m 30s", 90.0, 0),
    ("sleep 60\nsleep 60", 120.0, 0),
    ("echo start; sleep 30 | tee log", 30.0, 0),
    ("sleep 10; exit 3", 10.0, 3),
    ("python train.py; exit 3", 0.0, 3),
    ("false && sleep 100", 0.0, 1),
    ("false || sleep 100", 100.0, 0),
    ('bash -c "exit 3"; sleep 5', 5.0, 0),
    ('echo "a; sleep 999"; sleep 7', 7.0, 0),
    ("python app.py &", 0.0, 0),
    ("cd /root && python app.py &", 0.0, 0),
    ("python train.py", DEFAULT_JOB_SECONDS, 0),
])
def test_job_run_time_follows_the_common_shell_shapes(cmd, seconds, exit_code):
    plan = plan_run(cmd, keeps_running_by_default=False, default_seconds=DEFAULT_JOB_SECONDS)
    assert (plan.seconds, plan.exit_code) == (seconds, exit_code), cmd


@pytest.mark.parametrize("cmd", ["python app.py & sleep infinity", 'bash -c "python x.py; sleep infinity"',
                                 "python server.py --port 6006", "sleep inf"])
def test_job_that_never_ends_runs_until_stopped(cmd):
    assert plan_run(cmd, keeps_running_by_default=False, default_seconds=DEFAULT_JOB_SECONDS).seconds is None


def test_a_wrapped_sleep_job_runs_its_sleep_not_the_default():
    import requests

    with Simulator(speed=1, seed=3) as sim:
        body = {"name": "wrapped", "deployment_type": "Job", "replica_num": 1, "parallelism_num": 1,
                "container_template": {"gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118,
                                       "cpu_num_from": 1, "cpu_num_to": 100, "memory_size_from": 1, "memory_size_to": 256,
                                       "price_from": 10, "price_to": 9000, "image_uuid": "image-db8346e037",
                                       "cmd": 'bash -c "python x.py && sleep 120"'}}
        answer = requests.post(sim.url + "/api/v1/dev/deployment", json=body, headers={"Authorization": sim.token}, timeout=5).json()
        uuid = answer["data"]["deployment_uuid"]
        sim.advance(SECONDS_TO_RUNNING + 100)  # past the 63 s default, short of 120 s
        assert [c["status"] for c in sim.containers(uuid)] == ["running"]
        sim.advance(25)
        assert [c["status"] for c in sim.containers(uuid)] in (["shutting_down"], ["shutdown"])


# --- 1. HAProxy on the simulator; 2. a feed_command one can paste --------------------------

import json  # noqa: E402 - grouped with the tests that use them
import os  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from helpers import SCRIPTS, load_script, running_uuids  # noqa: E402
from helpers.servers import free_port, require_binary, stop, wait_for  # noqa: E402


def watcher_parser():
    return load_script(SCRIPTS / "discover_services.py").build_parser()


def test_feed_command_is_pasteable_and_carries_what_this_haproxy_needs(run, tmp_path, result_validator):
    code, result, err = run("haproxy_config.py", "--deployment-uuid", "833f1cd5a764fa3", "--socket", str(tmp_path / "admin.sock"),
                            "--backend", "gpu", "--health-path", "/healthz", "--port", "6008", "--server-maxconn", "1",
                            "--redis", "redis://:s3cret-pass@10.0.0.5:6379/0", "--key-prefix", "team-a")
    assert code == 0, result
    result_validator.validate(result)
    words = shlex.split(result["feed_command"])
    assert words[0] == "python" and Path(words[1]).is_absolute() and Path(words[1]) == SCRIPTS / "discover_services.py"
    args = watcher_parser().parse_args(words[2:])
    assert (args.deployment_uuid, args.watch, args.haproxy_socket, args.haproxy_backend) == (
        "833f1cd5a764fa3", True, str(tmp_path / "admin.sock"), "gpu")
    assert args.haproxy_server_options == result["server_options"] and "maxconn 1" in args.haproxy_server_options
    assert (args.health_path, args.port, args.key_prefix) == ("/healthz", 6008, "team-a")
    # The password never appears; the command names the placeholder and the note says so.
    assert args.redis == "redis://:REDIS_PASSWORD@10.0.0.5:6379/0" and "REDIS_PASSWORD" in result["feed_command_note"]
    assert "s3cret-pass" not in json.dumps(result) + err
    # The platform could not be asked (a discard port): written anyway, and said so.
    assert result["service_urls_checked"] is None and result["warnings"] == []


def test_feed_command_leaves_out_what_was_not_given(run):
    code, result, _ = run("haproxy_config.py", "--deployment-uuid", "833f1cd5a764fa3", "--quiet")
    assert code == 0, result
    args = watcher_parser().parse_args(shlex.split(result["feed_command"])[2:])
    assert (args.health_path, args.redis, args.port) == (None, None, None)
    assert "option httpchk GET /health" in result["config"]  # the config's own check keeps its default


def test_haproxy_config_warns_when_the_replicas_are_selected_by_path(sim, deploy, run, result_validator):
    sim()  # the stock simulator: <url>/svc/<uuid>/p6006
    deployment_uuid = deploy(2)
    code, result, err = run("haproxy_config.py", "--deployment-uuid", deployment_uuid)
    assert code == 0, result
    result_validator.validate(result)
    [warning] = result["warnings"]
    assert warning["code"] == "haproxy_cannot_route" and "2/2" in warning["message"] and "/svc/" in warning["message"]
    assert "serve_gateway.py" in warning["hint"] and "--service-ports" in warning["hint"]
    assert result["service_urls_checked"] == 2 and "haproxy_cannot_route" not in err and "HAProxy 只能按" in err


def test_haproxy_config_is_quiet_when_every_replica_has_its_own_port(sim, deploy, run):
    sim(service_ports=True)
    deployment_uuid = deploy(1)
    code, result, _ = run("haproxy_config.py", "--deployment-uuid", deployment_uuid, "--quiet")
    assert code == 0 and result["warnings"] == [] and result["service_urls_checked"] == 1


def test_watcher_summary_counts_the_replicas_haproxy_cannot_route_to(sim, deploy, run, haproxy_server):
    sim()
    deployment_uuid = deploy(2)
    proxy = haproxy_server(deployment_uuid=deployment_uuid)
    code, summary, err = run("discover_services.py", "--deployment-uuid", deployment_uuid, "--watch", "--max-cycles", "2",
                             "--interval", "0.1", "--haproxy-socket", str(proxy.socket_path), "--haproxy-backend", "replicas")
    assert code == 0, summary
    assert summary["haproxy"]["added"] == 0 and summary["haproxy"]["skipped_replicas"] == 2
    assert len(summary["haproxy"]["skipped"]) == 2
    assert [w["code"] for w in summary["warnings"]] == ["haproxy_cannot_route"]
    assert "2 个副本 HAProxy 无法转发" in err and "--service-ports auto" in err


def test_simulator_service_ports_from_a_range_then_system_picked():
    port = free_port()
    with Simulator(speed=1, seed=2, service_ports=(port, port)) as sim:
        first, second = sim.service_address("a" * 15 + "-0a0a0a0a0a-00000001"), sim.service_address("a" * 15 + "-0a0a0a0a0a-00000002")
    assert urlsplit(first).port == port and urlsplit(first).path == ""
    assert urlsplit(second).port not in (None, port)
    with pytest.raises(ValueError):
        Simulator(service_ports=(10, 5))


def test_autodl_sim_rejects_a_bad_service_ports_value():
    done = subprocess.run([sys.executable, str(SCRIPTS / "autodl_sim.py"), "--service-ports", "9000"], capture_output=True,
                          text=True, timeout=30)
    out = json.loads(done.stdout)
    assert done.returncode == 1 and out["error_type"] == "usage_error" and "--service-ports" in out["message"]


def test_the_documented_haproxy_workflow_runs_on_the_simulator_cli(run, tmp_path, monkeypatch):
    """autodl_sim.py --service-ports auto -> queue_submit -> haproxy_config --out -> haproxy -> feed_command -> requests."""
    binary = require_binary("haproxy")
    simulator = subprocess.Popen([sys.executable, str(SCRIPTS / "autodl_sim.py"), "--speed", "200", "--service-ports", "auto"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started = []
    try:
        ready = json.loads(simulator.stdout.readline())
        monkeypatch.setenv("AUTODL_HOST", ready["url"])
        monkeypatch.setenv("AUTODL_TOKEN", ready["token"])
        example = json.loads((SCRIPTS.parent / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
        config_file = tmp_path / "service.json"
        config_file.write_text(json.dumps(dict(example, replica_num=2)), encoding="utf-8")
        code, submitted, _ = run("queue_submit.py", str(config_file), "--interval", "0.05", "--wait-running", "--quiet")
        assert code == 0, submitted
        deployment_uuid = submitted["deployment_uuid"]

        bind, cfg = f"127.0.0.1:{free_port()}", tmp_path / "haproxy.cfg"
        code, result, _ = run("haproxy_config.py", "--deployment-uuid", deployment_uuid, "--out", str(cfg), "--bind", bind,
                              "--metrics-bind", f"127.0.0.1:{free_port()}", "--socket", str(tmp_path / "admin.sock"),
                              "--check-interval", "200ms", "--health-path", "/health", "--quiet")
        assert code == 0 and result["warnings"] == [] and result["service_urls_checked"] == 2, result
        log = open(tmp_path / "haproxy.log", "wb")
        proxy = subprocess.Popen([binary, "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT)
        started.append(proxy)
        wait_for(lambda: (tmp_path / "admin.sock").exists() or proxy.poll() is not None, 10, "haproxy's stats socket")
        assert proxy.poll() is None, (tmp_path / "haproxy.log").read_text(errors="replace")

        words = shlex.split(result["feed_command"])
        feed = subprocess.Popen([sys.executable, *words[1:], "--interval", "0.2", "--duration", "60", "--quiet"],
                                cwd="/", env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(feed)
        containers = set()

        def served() -> bool:
            try:
                with urllib.request.urlopen(f"http://{bind}/predict", timeout=5) as response:
                    containers.add(json.loads(response.read())["container_uuid"])
            except OSError:
                pass
            return len(containers) == 2

        wait_for(served, 20, "requests through HAProxy to reach both replicas")
        feed.send_signal(signal.SIGTERM)
        out, _ = feed.communicate(timeout=20)
        summary = json.loads(out)
        assert summary["stopped_by"] == "SIGTERM" and summary["haproxy"]["added"] == 2
        assert summary["haproxy"]["skipped_replicas"] == 0 and "warnings" not in summary
    finally:
        for process in reversed(started):
            stop(process)
        simulator.send_signal(signal.SIGTERM)
        try:
            simulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            simulator.kill()
            simulator.wait(timeout=5)


# --- 3. a watch ends with its deployment ----------------------------------------------------

import threading  # noqa: E402
import time  # noqa: E402

import requests  # noqa: E402

CONTAINER = "833f1cd5a764fa3-0a0a0a0a0a-00000001"


class ScriptedPlatform:
    """What the watcher asks, answered from a script: events, running containers, the deployment."""

    def __init__(self, monkeypatch, deployment_answers):
        from autodl_esd.platform import resolve
        from autodl_esd.serving import registry

        self.events: list = [{"deployment_container_uuid": CONTAINER, "status": "running"}]
        self.running = [{"uuid": CONTAINER, "status": "running", "machine_id": "0a0a0a0a0a",
                         "info": {"service_url": "http://127.0.0.1:9"}}]
        self.events_error = None
        self.answers = list(deployment_answers)
        self.looks = 0
        monkeypatch.setattr(registry.api, "list_events", self.list_events)
        monkeypatch.setattr(registry.api, "list_containers", lambda client, uuid, **filters: list(self.running))
        monkeypatch.setattr(resolve, "deployment_by_uuid", self.deployment_by_uuid)

    def list_events(self, client, uuid, offset=0, container_uuid=None):
        if self.events_error is not None:
            raise self.events_error
        return self.events[offset:], len(self.events)

    def deployment_by_uuid(self, client, uuid):
        self.looks += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def stop_all(self):
        self.events.append({"deployment_container_uuid": CONTAINER, "status": "shutting_down"})
        self.running = []


def scripted_watcher(tmp_path):
    from autodl_esd.serving.registry import RegistryWatcher, WatchOptions

    return RegistryWatcher(object(), "833f1cd5a764fa3", WatchOptions(interval=0.05, resync_every=1000, out=str(tmp_path / "r.json")))


def stopped(status="stopped"):
    return {"uuid": "833f1cd5a764fa3", "status": status}


def test_watch_ends_only_after_consecutive_answers_not_on_one_hiccup_or_an_error(monkeypatch, tmp_path):
    from autodl_esd.core.errors import ApiError

    timeout = ApiError("请求超时", retryable=True, ambiguous=True)
    platform = ScriptedPlatform(monkeypatch, [stopped(), stopped("running"), stopped(), timeout, stopped()])
    watcher = scripted_watcher(tmp_path)
    watcher.cycle()
    watcher.cycle()
    assert list(watcher.services) == [CONTAINER] and platform.looks == 0  # replicas running: nothing to ask
    platform.stop_all()
    watcher.cycle()  # the last replica left: look 1 says stopped
    watcher.cycle()  # look 2 says running (a lagging read): the count starts over
    assert watcher.ended is None and platform.looks == 2
    platform.events.append({"deployment_container_uuid": CONTAINER, "status": "shutdown"})
    watcher.cycle()  # a stop event: look again, stopped (1)
    watcher.cycle()  # the look times out: not an answer, neither counts nor resets
    assert watcher.ended is None and platform.looks == 4
    watcher.cycle()  # stopped (2): the end
    assert watcher.ended == "deployment_stopped" and platform.looks == 5
    written = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert written["services"] == [] and written["ended"] == "deployment_stopped" and "stale" not in written
    assert "已停止" in written["ended_reason"]


def test_watch_of_a_deleted_deployment_ends_gone_but_an_api_outage_never_ends_it(monkeypatch, tmp_path):
    from autodl_esd.core.errors import ApiError

    platform = ScriptedPlatform(monkeypatch, [None, None])
    watcher = scripted_watcher(tmp_path)
    watcher.cycle()
    platform.events_error = ApiError("HTTP 502", http_status=502, retryable=True)
    for _ in range(4):
        watcher.cycle()
    assert watcher.ended is None and platform.looks == 0 and watcher.document["stale"] is True
    assert [s["container_uuid"] for s in watcher.document["services"]] == [CONTAINER]  # kept through the outage
    platform.events_error = ApiError("未查询到相关部署", code="RecordNotFoundError", msg="未查询到相关部署")
    watcher.cycle()
    assert watcher.ended is None and watcher.document["services"]  # one answer: kept, still stale
    watcher.cycle()
    assert watcher.ended == "deployment_gone" and watcher.document["services"] == [] and "stale" not in watcher.document
    from autodl_esd.serving.registry import validate_registry

    validate_registry(watcher.document)


def test_discover_services_watch_ends_when_its_deployment_is_stopped(sim, deploy, tmp_path, result_validator):
    instance = sim()
    deployment_uuid = deploy(2)
    out = tmp_path / "registry.json"
    watch = subprocess.Popen([sys.executable, str(SCRIPTS / "discover_services.py"), "--deployment-uuid", deployment_uuid, "--watch",
                              "--interval", "0.1", "--duration", "60", "--out", str(out), "--quiet"],
                             env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.exists() and len(json.loads(out.read_text(encoding="utf-8"))["services"]) == 2, 20, "the registry")
        answer = requests.put(instance.url + "/api/v1/dev/deployment/operate", json={"deployment_uuid": deployment_uuid, "operate": "stop"},
                              headers={"Authorization": instance.token}, timeout=5).json()
        assert answer["code"] == "Success", answer
        summary, err = watch.communicate(timeout=30)
    finally:
        stop(watch)
    assert watch.returncode == 0, err
    summary = json.loads(summary)
    result_validator.validate(summary)
    assert summary["stopped_by"] == "deployment_stopped" and summary["services"] == [] and "stale" not in summary
    assert "已停止" in summary["ended_reason"]
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["services"] == [] and written["ended"] == "deployment_stopped"


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


def test_a_follower_gateway_keeps_listening_and_says_why_there_are_no_replicas(tmp_path):
    """A gateway reading someone else's registry (file, URL, Redis) does not own the watch: it stays up."""
    pytest.importorskip("aiohttp")
    from helpers.loop_thread import LoopThread

    from autodl_esd.serving.sources import FileSource

    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"status": "success", "deployment_uuid": "833f1cd5a764fa3", "generated_at": "2026-12-02T09:00:00+08:00",
                                    "services": [], "ended": "deployment_gone", "ended_reason": "部署 833f1cd5a764fa3 已不存在 (被删除)"}),
                        encoding="utf-8")
    source = FileSource(str(registry), 0.05, 1.0)
    source.start()
    loop = LoopThread()
    try:
        gateway = loop.gateway(source, interval=0.05, queue_timeout=30)  # answered at once all the same
        answer = requests.get(gateway.url + "/predict", timeout=10)  # not queued for 30 s: nothing will come
        assert answer.status_code == 503 and answer.json()["error_type"] == "no_replicas"
        assert answer.json()["details"]["ended"] == "deployment_gone"
        assert "已不存在" in answer.json()["message"]
        state = requests.get(gateway.url + "/_gateway/status", timeout=5).json()["registry"]
        assert state["ended"] == "deployment_gone" and state["stale"] is False
        assert gateway.ended_by is None
    finally:
        loop.close()
        source.stop()


def test_redis_watchers_active_and_standby_both_end_and_the_registry_is_final(sim, deploy, redis_server, key_prefix):
    from autodl_esd.serving import redis_registry

    instance = sim()
    deployment_uuid = deploy(1)
    watchers = [subprocess.Popen([sys.executable, str(SCRIPTS / "discover_services.py"), "--deployment-uuid", deployment_uuid,
                                  "--watch", "--interval", "0.1", "--redis", redis_server.url, "--key-prefix", key_prefix,
                                  "--duration", "60", "--quiet"], env=dict(os.environ), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    keys = redis_registry.RedisKeys(deployment_uuid, key_prefix)
    try:
        wait_for(lambda: (redis_registry.read_registry(redis_server.client, keys) or {}).get("services"), 20, "the registry in Redis")
        answer = requests.put(instance.url + "/api/v1/dev/deployment/operate", json={"deployment_uuid": deployment_uuid, "operate": "stop"},
                              headers={"Authorization": instance.token}, timeout=5).json()
        assert answer["code"] == "Success", answer
        results = [watcher.communicate(timeout=30) for watcher in watchers]
    finally:
        for watcher in watchers:
            stop(watcher)
    summaries = [json.loads(out) for out, _ in results]
    assert [w.returncode for w in watchers] == [0, 0], [err[-500:] for _, err in results]
    assert [s["stopped_by"] for s in summaries] == ["deployment_stopped"] * 2
    assert sorted(s["redis"]["role"] for s in summaries) == ["active", "standby"]
    time.sleep(0.1)
    final = redis_registry.read_registry(redis_server.client, keys)  # the heartbeat is gone: still not stale
    assert final["ended"] == "deployment_stopped" and final["services"] == [] and "stale" not in final
