"""The registry watcher under a hung API, a vanished --out directory and a record that breaks
the schema; the loopback endpoint on IPv6, with the Host check, idle timeout and JSON errors
(issue #15 items 6 and 7). The platform is the `responses` fake of test_discover_services."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from test_registry import DEP, MACHINE_A, MACHINE_B, FakePlatform, container_uuid  # noqa: F401


@pytest.fixture
def platform(mocked):
    mocked.assert_all_requests_are_fired = False
    return FakePlatform(mocked)


@pytest.fixture
def make_watcher(tmp_path):
    from autodl_esd.core.http import ApiClient
    from autodl_esd.serving import registry
    from autodl_esd.core.settings import load_settings

    def make(**options):
        options.setdefault("out", str(tmp_path / "registry.json"))
        options.setdefault("interval", 0.05)
        options.setdefault("resync_every", 12)
        return registry.RegistryWatcher(ApiClient(load_settings()), DEP, registry.WatchOptions(**options))

    return make


def test_a_hung_api_does_not_stall_the_cycle_or_the_probes_and_is_flagged_stale(platform, make_watcher, monkeypatch):
    from autodl_esd.serving import registry

    # A cycle waits for its jobs at most this long, and no longer than they take: generous
    # while the API answers (a loaded machine must not make a good cycle look overrun),
    # short while it hangs (the test then waits out two of them).
    answering, hung = 30.0, 0.5
    monkeypatch.setattr(registry, "MIN_CYCLE_DEADLINE_SECONDS", answering)
    uuid = platform.start(MACHINE_A, 1)
    probes: list[float] = []
    health = registry.HealthTracker("/health", 1.0, failures_to_leave=1, check=lambda u, t: probes.append(time.monotonic()) or True)
    watcher = make_watcher(health=health)
    watcher.cycle()
    assert watcher.document["services"][0]["healthy"] is True and "stale" not in watcher.document

    release = threading.Event()
    real_list_events = registry.api.list_events

    def hung_list_events(*args, **kwargs):
        release.wait(60)  # an API that does not answer (until the test lets it)
        return real_list_events(*args, **kwargs)

    monkeypatch.setattr(registry.api, "list_events", hung_list_events)
    monkeypatch.setattr(registry, "MIN_CYCLE_DEADLINE_SECONDS", hung)
    try:
        probes.clear()
        started = time.monotonic()
        watcher.cycle()
        watcher.cycle()  # the hung poll is not stacked: the second cycle waits on the same one
        elapsed = time.monotonic() - started
        assert elapsed < 20, elapsed  # two deadlines of 0.5 s (plus a busy machine), not the 60 s hang
        assert watcher.document["stale"] is True and "仍未返回" in watcher.document["stale_reason"]
        assert len(probes) == 2  # the probes went on while the API hung
        assert watcher.document["services"][0]["container_uuid"] == uuid  # the last good set is kept
    finally:
        release.set()
    monkeypatch.setattr(registry.api, "list_events", real_list_events)
    monkeypatch.setattr(registry, "MIN_CYCLE_DEADLINE_SECONDS", answering)
    assert watcher._jobs["api"].done.wait(30)
    watcher.cycle()
    assert "stale" not in watcher.document


def test_the_out_directory_vanishing_is_logged_and_the_watch_goes_on(platform, make_watcher, tmp_path, capsys):
    from autodl_esd.core.output import Progress

    folder = tmp_path / "gone"
    folder.mkdir()
    watcher = make_watcher(out=str(folder / "registry.json"))
    watcher.progress = Progress()
    platform.start(MACHINE_A, 1)
    watcher.cycle()
    folder.joinpath("registry.json").unlink()
    folder.rmdir()
    second = platform.start(MACHINE_B, 2)
    watcher.cycle()  # used to end the watch with internal_error
    watcher.cycle()
    assert second in {s["container_uuid"] for s in watcher.document["services"]}  # in memory, served
    err = capsys.readouterr().err
    assert err.count("写入") == 1 and "继续轮询" in err  # said once, not every cycle


def test_a_platform_record_that_breaks_the_schema_is_left_out_and_the_rest_published(platform, make_watcher, capsys):
    from autodl_esd.core.output import Progress

    good = platform.start(MACHINE_A, 1)
    bad = platform.start(MACHINE_B, 2)
    platform.containers[bad]["gpu_name"] = 4090  # a number where the schema wants a name
    watcher = make_watcher()
    watcher.progress = Progress()
    watcher.cycle()
    assert [s["container_uuid"] for s in watcher.document["services"]] == [good]
    assert "不符合注册表格式" in capsys.readouterr().err


# ---- the loopback endpoint -----------------------------------------------------------------


def registry_with_one() -> dict:
    from autodl_esd.serving.registry import registry_document

    uuid = container_uuid(MACHINE_A, 1)
    return registry_document(DEP, [{"container_uuid": uuid, "url": "https://a.example.com", "machine_id": MACHINE_A,
                                     "gpu_name": "RTX 4090", "since": "2026-11-25T12:00:00+08:00", "healthy": True}])


def fetch(url: str, host: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_endpoint_serves_ipv4_and_ipv6_loopback_and_checks_host(listen):
    from autodl_esd.serving.registry import RegistryEndpoint, parse_loopback_address

    try:
        endpoint = RegistryEndpoint(*parse_loopback_address(listen), registry=registry_with_one).start()
    except OSError as error:  # a machine without IPv6 loopback
        pytest.skip(f"cannot bind {listen}: {error}")
    try:
        status, body = fetch(endpoint.url + "/pick")
        assert status == 200 and body["service"]["container_uuid"] == container_uuid(MACHINE_A, 1)
        for evil in ("evil.example", "evil.example:8765", "127.0.0.1.nip.io"):
            status, body = fetch(endpoint.url + "/pick", host=evil)
            assert status == 421 and body["status"] == "error" and "Host" in body["message"]
        assert fetch(endpoint.url + "/services", host="localhost:8765")[0] == 200
    finally:
        endpoint.stop()


def test_endpoint_answers_bad_requests_in_json_and_drops_idle_connections(monkeypatch):
    from autodl_esd.serving import registry

    monkeypatch.setattr(registry, "ENDPOINT_IDLE_SECONDS", 0.3)
    endpoint = registry.RegistryEndpoint("127.0.0.1", 0, registry=registry_with_one).start()
    port = endpoint.server.server_address[1]
    try:
        for payload in (b"BREW /pick HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                connection.sendall(payload)
                answer = b""
                while chunk := connection.recv(65536):
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"application/json" in head and json.loads(body)["status"] == "error", answer[:300]
        started = time.monotonic()
        # (a server that never closed would run out this 30 s read timeout: an error)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(b"GET /pick HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing
            assert connection.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 20  # after its 0.3 s idle limit (and a loaded machine)
    finally:
        endpoint.stop()


def test_the_simulator_checks_host_and_answers_malformed_requests_in_json(sim):
    instance = sim()
    port = instance.port
    request = urllib.request.Request(instance.url + "/api/v1/dev/machine/gpu_stock",
                                     headers={"Host": "evil.example", "Authorization": instance.token})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 421 and json.loads(refused.value.read())["code"] == "Forbidden"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 414 " in head.split(b"\r\n")[0] and json.loads(body)["code"] == "RequestParameterIsWrong"


def test_discover_services_serves_on_ipv6_loopback(platform, run):
    platform.start(MACHINE_A, 1)
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    code, out, _ = run("discover_services.py", "--deployment-uuid", DEP, "--watch", "--interval", "0.05",
                       "--max-cycles", "2", "--serve", "[::1]:0", "--quiet")
    assert code == 0, out
    assert out["serve"].startswith("http://[::1]:")


def test_malformed_records_and_events_are_skipped_not_fatal(platform, make_watcher):
    good = platform.start(MACHINE_A, 1)
    odd = platform.start(MACHINE_B, 2)
    platform.containers[odd]["info"] = "not an object"
    platform.containers["x"] = {"uuid": 12345, "status": "running", "info": {"service_6006_port_url": "https://h"}}
    watcher = make_watcher()
    watcher.cycle()
    platform.events.append("not an event")
    platform.events.append({"deployment_container_uuid": None, "status": "running"})
    watcher.cycle()
    assert [s["container_uuid"] for s in watcher.document["services"]] == [good]


def test_a_watch_without_health_checks_says_unknown_like_the_one_shot_listing(platform, make_watcher):
    platform.start(MACHINE_A, 1)
    watcher = make_watcher()
    watcher.cycle()
    assert [s["healthy"] for s in watcher.document["services"]] == [None]  # not an unchecked true
    platform.start(MACHINE_B, 1)
    watcher.cycle()
    assert [s["healthy"] for s in watcher.document["services"]] == [None, None]
