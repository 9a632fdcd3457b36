"""HAProxy as the gateway: haproxy_config.py writes a config HAProxy accepts, and
discover_services.py --haproxy-socket keeps a real HAProxy's backend equal to the running
containers of a simulated deployment (each container on its own port: service_ports). Its
feed_command can be pasted as is, it warns when the replicas are told apart by path (which
HAProxy cannot route), and the documented workflow runs on the simulator's own CLI."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import SCRIPTS, load_script, running_uuids
from helpers.servers import free_port, require_binary, stop, wait_for

# Watcher polling interval in these tests (real seconds).
INTERVAL = 0.1
# The churn test's watcher lists everything only every 1000 cycles (100 s), so only its
# event polling can notice a crash in time; this bound is slack for a loaded 2-core CI
# machine (idle it takes one interval), far below the 100 s a resync would need.
RESYNC_EVERY = 1000
FOLLOW_SECONDS = 10.0
# Each wait polls and returns as soon as its condition holds (well under a second idle).
WAIT_SECONDS = 30.0


def test_server_addresses_from_service_urls():
    from autodl_esd.serving import haproxy

    assert haproxy.server_address("http://127.0.0.1:8081") == haproxy.ServerAddress("127.0.0.1", 8081, None)
    tls = haproxy.server_address("https://127.0.0.1")
    assert (tls.port, tls.tls_host) == (443, "127.0.0.1") and "sni str(127.0.0.1)" in tls.options()
    with pytest.raises(ValueError, match="路径"):
        haproxy.server_address("http://127.0.0.1:8080/svc/abc/p6006")
    assert haproxy.server_name("833f1cd5a764fa3-0a0a0a0a0a-ab12 x") == "833f1cd5a764fa3-0a0a0a0a0a-ab12_x"


def test_haproxy_config_script_writes_a_config_haproxy_accepts(run, tmp_path, result_validator):
    binary = require_binary("haproxy")
    out = tmp_path / "haproxy.cfg"
    code, result, _ = run("haproxy_config.py", "--deployment-uuid", "833f1cd5a764fa3", "--out", str(out),
                          "--socket", str(tmp_path / "admin.sock"), "--server-maxconn", "1", "--health-path", "/healthz", "--quiet")
    assert code == 0, result
    result_validator.validate(result)
    config = out.read_text(encoding="utf-8")
    for needed in ("balance leastconn", "option httpchk GET /healthz", "retry-on conn-failure", "option redispatch",
                   "observe layer7", "error-limit", "prometheus-exporter", "level admin", "timeout server 1h", "maxconn 1"):
        assert needed in config, needed
    assert "--haproxy-socket" in result["feed_command"] and result["server_options"] in result["feed_command"]
    checked = subprocess.run([binary, "-c", "-f", str(out)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_haproxy_config_sends_streamed_responses_without_delay():
    from autodl_esd.serving import haproxy

    config = haproxy.render_config(deployment_uuid="833f1cd5a764fa3", bind="*:8080", backend="autodl",
                                   socket_path="/tmp/admin.sock", metrics_bind="127.0.0.1:8405",
                                   health_path="/health", options=haproxy.DEFAULT_SERVER_OPTIONS)
    defaults = config.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    assert "    option http-no-delay\n" in defaults


def test_haproxy_config_rejects_bad_names_before_writing(run, tmp_path):
    code, result, _ = run("haproxy_config.py", "--deployment-uuid", "833f1cd5a764fa3", "--backend", "bad name",
                          "--out", str(tmp_path / "x.cfg"), "--quiet")
    assert code == 1 and result["error_type"] == "usage_error" and "--backend" in result["message"]
    assert not (tmp_path / "x.cfg").exists()


def test_haproxy_backend_follows_churn_and_a_crash_mid_traffic_costs_no_request(sim, deploy, run, haproxy_server,
                                                                               recorded_watchers):
    from autodl_esd.serving import haproxy

    instance = sim(service_ports=True)
    deployment_uuid = deploy(2)
    proxy = haproxy_server(deployment_uuid=deployment_uuid)
    runtime = haproxy.RuntimeApi(str(proxy.socket_path))
    watchers = recorded_watchers  # stopped through their stop_event once the test is done
    finished: dict = {}
    watcher = threading.Thread(target=lambda: finished.update(result=run(
        "discover_services.py", "--deployment-uuid", deployment_uuid, "--watch", "--interval", str(INTERVAL),
        "--resync-every", str(RESYNC_EVERY), "--duration", "120",
        "--haproxy-socket", str(proxy.socket_path), "--haproxy-backend", "replicas",
        "--haproxy-server-options", proxy.settings["options"], "--quiet")))
    watcher.start()

    def in_haproxy() -> set[str]:
        return {name for name, server in runtime.servers("replicas").items() if not server["admin_state"] & haproxy.ADMIN_MAINT_BITS}

    answers: list = []
    failures: list = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(proxy.url + "/predict", timeout=10) as response:
                    answers.append(json.loads(response.read())["container_uuid"])
            except (urllib.error.URLError, OSError) as problem:
                failures.append(repr(problem))

    try:
        first = running_uuids(instance, deployment_uuid)
        wait_for(lambda: in_haproxy() == first, WAIT_SECONDS, "HAProxy to hold both replicas")
        clients = [threading.Thread(target=traffic) for _ in range(4)]
        for client in clients:
            client.start()
        wait_for(lambda: set(answers) == first, WAIT_SECONDS, "requests through HAProxy to reach both replicas")

        victim = sorted(first)[0]
        instance.crash_container(victim)
        crashed_at = time.monotonic()
        wait_for(lambda: victim not in in_haproxy(), FOLLOW_SECONDS, "HAProxy to stop sending to the crashed replica")
        assert time.monotonic() - crashed_at <= FOLLOW_SECONDS  # by its events, not the 100 s resync
        served_before_replacement = len(answers)

        wait_for(lambda: len(running_uuids(instance, deployment_uuid)) == 2
                 and in_haproxy() == running_uuids(instance, deployment_uuid), WAIT_SECONDS, "HAProxy to add the replacement")
        replacement = (running_uuids(instance, deployment_uuid) - first).pop()
        wait_for(lambda: replacement in answers[served_before_replacement:], WAIT_SECONDS, "traffic to reach the replacement")
        wait_for(lambda: victim not in runtime.servers("replicas"), WAIT_SECONDS, "the left server to be deleted once idle")
        stop.set()
        for client in clients:
            client.join(timeout=15)
    finally:
        stop.set()
        for recorded in watchers:
            recorded.stop_event.set()
        watcher.join(timeout=15)
    assert not failures, f"{len(failures)} client requests failed (retry-on + redispatch should hide the crash): {failures[:3]}"
    assert set(answers) <= first | {replacement}
    stats = {row["svname"]: row for row in runtime.stats("replicas")}
    assert set(stats) == running_uuids(instance, deployment_uuid)
    with urllib.request.urlopen(proxy.metrics_url, timeout=5) as response:
        assert "haproxy_server_" in response.read().decode()
    code, summary, _ = finished["result"]
    assert code == 0, summary
    assert summary["stopped_by"] == "stopped" and summary["haproxy"]["added"] == 3 and summary["haproxy"]["removed"] == 1


def test_watch_says_when_the_haproxy_socket_is_not_there(sim, deploy, run, tmp_path):
    sim(service_ports=True)
    deployment_uuid = deploy(1)
    code, out, _ = run("discover_services.py", "--deployment-uuid", deployment_uuid, "--watch", "--max-cycles", "1",
                       "--haproxy-socket", str(tmp_path / "none.sock"), "--haproxy-backend", "replicas", "--quiet")
    assert code == 1 and out["error_type"] == "usage_error" and "HAProxy" in out["message"]


def test_an_haproxy_restart_is_retried_next_cycle_and_the_servers_come_back(haproxy_server, tmp_path):
    from autodl_esd.serving import haproxy

    proxy = haproxy_server()
    document = {"services": [{"container_uuid": "0" * 15 + "-0a0a0a0a0a-aaaa", "url": "http://127.0.0.1:9", "healthy": True}]}
    sync = haproxy.BackendSync(haproxy.RuntimeApi(str(tmp_path / "not-yet.sock")), "replicas", "0" * 15,
                               proxy.settings["options"])
    sync(document)  # HAProxy not reachable: no exception, the watcher goes on
    assert "不可用" in sync.last_error and sync.added == 0
    sync.api = haproxy.RuntimeApi(str(proxy.socket_path))
    sync(document)
    assert sync.last_error is None and set(sync.api.servers("replicas")) == {"0" * 15 + "-0a0a0a0a0a-aaaa"}
    proxy.stop()  # a restart loses the runtime-added servers...
    restarted = haproxy_server(**{key: value for key, value in proxy.settings.items() if key != "socket_path"})
    sync.api = haproxy.RuntimeApi(str(restarted.socket_path))
    sync(document)  # ...and the next cycle adds them back
    assert set(sync.api.servers("replicas")) == {"0" * 15 + "-0a0a0a0a0a-aaaa"} and sync.added == 2


# --- haproxy_config.py: a feed_command one can paste, a warning when HAProxy cannot route --------


def watcher_parser():
    return load_script(SCRIPTS / "discover_services.py").build_parser()


def test_feed_command_is_pasteable_and_carries_what_this_haproxy_needs(run, tmp_path, result_validator):
    code, result, err = run("haproxy_config.py", "--deployment-uuid", "833f1cd5a764fa3", "--socket", str(tmp_path / "admin.sock"),
                            "--backend", "gpu", "--health-path", "/healthz", "--port", "6008", "--server-maxconn", "1",
                            "--redis", "redis://:s3cret-pass@10.0.0.5:6379/0", "--key-prefix", "team-a")
    assert code == 0, result
    result_validator.validate(result)
    words = shlex.split(result["feed_command"])
    assert words[0] == "python3" and Path(words[1]).is_absolute() and Path(words[1]) == SCRIPTS / "discover_services.py"
    args = watcher_parser().parse_args(words[2:])
    assert (args.deployment_uuid, args.watch, args.haproxy_socket, args.haproxy_backend) == (
        "833f1cd5a764fa3", True, str(tmp_path / "admin.sock"), "gpu")
    assert args.haproxy_server_options == result["server_options"] and "maxconn 1" in args.haproxy_server_options
    assert (args.health_path, args.port, args.key_prefix) == ("/healthz", 6008, "team-a")
    # The password never appears; the command names the placeholder and the note says so.
    assert args.redis == "redis://10.0.0.5:6379/0" and "AUTODL_REDIS_PASSWORD" in result["feed_command_note"]
    assert "s3cret-pass" not in json.dumps(result) + err
    # The platform could not be asked (a discard port): written anyway, and said so.
    assert result["service_urls_checked"] is None and result["warnings"] == []


def test_start_command_runs_haproxy_in_the_background_and_stop_command_stops_it(run, tmp_path):
    require_binary("haproxy")
    config, socket_path = tmp_path / "my proxy.cfg", tmp_path / "admin.sock"
    code, result, _ = run("haproxy_config.py", "--deployment-uuid", "833f1cd5a764fa3", "--out", str(config), "--socket",
                          str(socket_path), "--bind", f"127.0.0.1:{free_port()}", "--metrics-bind", f"127.0.0.1:{free_port()}",
                          "--quiet")
    assert code == 0, result
    pid_file = tmp_path / "my proxy.pid"
    assert shlex.split(result["start_command"]) == ["haproxy", "-D", "-p", str(pid_file), "-f", str(config)]
    # It returns at once (an agent's shell is not held), leaving HAProxy running.
    started = subprocess.run(result["start_command"], shell=True, timeout=30, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, "haproxy's pid file"))
    try:
        wait_for(lambda: socket_path.exists(), 10, "haproxy's stats socket")
        assert subprocess.run(result["stop_command"], shell=True, timeout=30).returncode == 0
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
                 10, "haproxy to stop")
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


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
