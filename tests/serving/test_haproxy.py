"""HAProxy as the gateway: haproxy_config.py writes a config HAProxy accepts, and
discover_services.py --haproxy-socket keeps a real HAProxy's backend equal to the running
containers of a simulated deployment (each container on its own port: service_ports)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from helpers import ROOT, running_uuids
from helpers.servers import require_binary, wait_for

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
