"""discover_services.py and autodl_esd.serving.registry against a fake platform mocked with `responses`.

The fake keeps containers and their events in memory and answers the three endpoints the
watcher calls, so a test changes the platform between cycles and checks what the registry
shows after each one. Also: the watcher under a hung API, a vanished --out directory and
records that break the schema; a watch that ends with its deployment (stopped or deleted,
never on an outage); the loopback endpoint on IPv4 and IPv6, with the Host check, idle
timeout and JSON errors.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import requests

from helpers import ROOT, SCRIPTS, envelope, url
from helpers.servers import stop, wait_for

DEP = "833f1cd5a764fa3"
DEPLOYMENTS = "/api/v1/dev/deployment/list"
CONTAINERS = "/api/v1/dev/deployment/container/list"
EVENTS = "/api/v1/dev/deployment/container/event/list"
MACHINE_A, MACHINE_B, MACHINE_C = "aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"


def container_uuid(machine: str, n: int) -> str:
    return f"{DEP}-{machine}-{n:08x}"


@pytest.fixture(scope="module")
def registry_validator():
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "registry.schema.json").read_text(encoding="utf-8")))


class FakePlatform:
    """Containers and events of one deployment, served through `responses` callbacks."""

    def __init__(self, mock) -> None:
        self.containers: dict[str, dict] = {}
        self.events: list[dict] = []
        self.down = False  # every call answers 502 (after the client's retries)
        self.calls: list[str] = []
        for path, answer in ((DEPLOYMENTS, self._deployments), (CONTAINERS, self._containers), (EVENTS, self._events)):
            mock.add_callback("POST", url(path), callback=self._wrap(path, answer), content_type="application/json")

    def _wrap(self, path, answer):
        def callback(request):
            self.calls.append(path)
            if self.down:
                return 502, {}, "bad gateway"
            return 200, {}, json.dumps(envelope(answer(json.loads(request.body))))

        return callback

    def _deployments(self, body):
        return {"list": [{"uuid": DEP, "name": "svc", "deployment_type": "ReplicaSet", "status": "running"}], "max_page": 1}

    def _containers(self, body):
        chosen = [c for c in self.containers.values()
                  if (not body.get("container_uuid") or c["uuid"] == body["container_uuid"])
                  and (not body.get("status") or c["status"] in body["status"])]
        return {"list": chosen, "page_index": 1, "max_page": 1}

    def _events(self, body):
        return {"list": self.events[body.get("offset", 0):][: body["page_size"]]}

    def start(self, machine: str, n: int, *, with_events: bool = True, status: str = "running") -> str:
        uuid = container_uuid(machine, n)
        service = f"https://{machine}.example.com:{20000 + n}"
        self.containers[uuid] = {
            "uuid": uuid, "machine_id": machine, "deployment_uuid": DEP, "status": status, "gpu_name": "RTX 4090",
            "info": {"service_6006_port_url": service + "/p6006", "service_6008_port_url": service + "/p6008"},
            "started_at": "2026-11-25T12:00:00+08:00", "stopped_at": None,
        }
        if with_events:
            for phase in ("creating", "created", "starting", "running"):
                self.events.append({"deployment_container_uuid": uuid, "status": phase, "created_at": "2026-11-25T12:00:00+08:00"})
        return uuid

    def stop(self, uuid: str, *, with_events: bool = True) -> None:
        self.containers[uuid]["status"] = "shutdown"
        if with_events:
            for phase in ("shutting_down", "shutdown"):
                self.events.append({"deployment_container_uuid": uuid, "status": phase, "created_at": "2026-11-25T12:05:00+08:00"})


@pytest.fixture(autouse=True)
def generous_cycle_deadline(monkeypatch):
    """A watch cycle ends as soon as its jobs do; its deadline (at least 1 s) is for a hung
    API, which no test here has: on a loaded machine a mocked poll must not look overrun
    (stale) where a test expects the fresh registry."""
    from autodl_esd.serving.registry import watcher as registry

    monkeypatch.setattr(registry, "MIN_CYCLE_DEADLINE_SECONDS", 30.0)


@pytest.fixture
def platform(mocked):
    mocked.assert_all_requests_are_fired = False  # a test may never need, e.g., the deployment list
    return FakePlatform(mocked)


@pytest.fixture
def make_watcher(tmp_path):
    from autodl_esd.serving.registry import watcher as registry
    from autodl_esd.core.http import ApiClient
    from autodl_esd.core.settings import load_settings

    def make(**options):
        options.setdefault("out", str(tmp_path / "registry.json"))
        options.setdefault("interval", 0.01)
        options.setdefault("resync_every", 12)
        return registry.RegistryWatcher(ApiClient(load_settings()), DEP, registry.WatchOptions(**options))

    return make


def registered(watcher) -> set[str]:
    return {item["container_uuid"] for item in watcher.document["services"]}


def read_file(path) -> dict:
    return json.loads(open(path, encoding="utf-8").read())


# --- one-shot ---------------------------------------------------------------------------


def test_one_shot_lists_running_containers_only(run, platform, result_validator, registry_validator):
    first = platform.start(MACHINE_A, 1)
    platform.start(MACHINE_B, 2, status="starting")
    gone = platform.start(MACHINE_C, 3)
    platform.stop(gone)

    code, document, _ = run("discover_services.py", "--deployment-uuid", DEP, "--quiet")

    assert code == 0, document
    registry_validator.validate(document)
    result_validator.validate(document)
    assert [s["container_uuid"] for s in document["services"]] == [first]
    service = document["services"][0]
    assert service["url"].endswith("/p6006") and service["machine_id"] == MACHINE_A
    assert service["healthy"] is None, "one look without --health-path checked nothing: unknown, not true"
    assert service["since"] == "2026-11-25T12:00:00+08:00"


@pytest.fixture
def health_server():
    """A loopback server: /good/health answers 200, anything else 503."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/good/health" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_one_shot_with_health_path_probes_each_replica_once(run, platform, health_server, registry_validator, result_validator):
    good, bad = platform.start(MACHINE_A, 1), platform.start(MACHINE_B, 2)
    platform.containers[good]["info"]["service_6006_port_url"] = health_server + "/good"
    platform.containers[bad]["info"]["service_6006_port_url"] = health_server + "/bad"

    code, document, _ = run("discover_services.py", "--deployment-uuid", DEP, "--health-path", "/health", "--quiet")

    assert code == 0, document
    registry_validator.validate(document)
    result_validator.validate(document)
    assert {s["container_uuid"]: s["healthy"] for s in document["services"]} == {good: True, bad: False}


def test_pool_treats_an_unprobed_replica_as_usable():
    from autodl_esd.serving.pool import ServicePool

    item = {"container_uuid": container_uuid(MACHINE_A, 1), "url": "https://a.example", "machine_id": MACHINE_A,
            "gpu_name": None, "since": "2026-11-25T12:00:00+08:00", "healthy": None}
    assert ServicePool.from_services([item]).lease().service.container_uuid == item["container_uuid"]


def test_one_shot_port_6008_picks_that_url(run, platform):
    platform.start(MACHINE_A, 1)
    code, document, _ = run("discover_services.py", "--deployment-uuid", DEP, "--port", "6008")
    assert code == 0 and document["services"][0]["url"].endswith("/p6008")


def test_watch_flags_without_watch_are_a_usage_error(run, result_validator):
    code, document, _ = run("discover_services.py", "--deployment-uuid", DEP, "--out", "x.json")
    assert (code, document["error_type"]) == (1, "usage_error")
    result_validator.validate(document)


@pytest.mark.parametrize("address", ["0.0.0.0:8765", "192.168.1.5:8765", "example.com:80", "8765", "127.0.0.1:99999"])
def test_serve_refuses_anything_but_a_loopback_address(run, address):
    code, document, _ = run("discover_services.py", "--deployment-uuid", DEP, "--watch", "--serve", address)
    assert (code, document["error_type"]) == (1, "usage_error")


def test_watch_out_in_a_missing_directory_is_a_usage_error_before_any_call(run, tmp_path, result_validator):
    out = tmp_path / "missing" / "registry.json"
    code, document, _ = run("discover_services.py", "--deployment-uuid", DEP, "--watch", "--out", str(out))
    assert (code, document["error_type"]) == (1, "usage_error"), document
    result_validator.validate(document)
    assert "missing" in document["message"]


def test_serve_on_a_port_in_use_is_a_usage_error(run, platform, result_validator):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, document, _ = run("discover_services.py", "--deployment-uuid", DEP, "--watch", "--max-cycles", "1",
                                "--serve", f"127.0.0.1:{port}")
    assert (code, document["error_type"]) == (1, "usage_error"), document
    result_validator.validate(document)
    assert "端口 0" in document["hint"]


# --- watch: events, resync, staleness ---------------------------------------------------


def test_events_register_and_deregister(platform, make_watcher, registry_validator):
    first = platform.start(MACHINE_A, 1)
    watcher = make_watcher()
    watcher.cycle()
    assert registered(watcher) == {first}

    second = platform.start(MACHINE_B, 2)
    watcher.cycle()
    assert registered(watcher) == {first, second}

    platform.stop(first)
    watcher.cycle()
    assert registered(watcher) == {second}
    assert (watcher.registered, watcher.deregistered) == (2, 1)
    on_disk = read_file(watcher.options.out)
    registry_validator.validate(on_disk)
    assert [s["container_uuid"] for s in on_disk["services"]] == [second]


def test_a_status_event_after_running_does_not_hide_it(platform, make_watcher):
    watcher = make_watcher()
    watcher.cycle()
    uuid = platform.start(MACHINE_A, 1)
    platform.events.append({"deployment_container_uuid": uuid, "status": "oss_merged", "created_at": "2026-11-25T12:00:01+08:00"})
    watcher.cycle()  # not a resync cycle: only the events can register it
    assert registered(watcher) == {uuid}


def test_a_container_that_stops_before_its_record_is_read_is_not_registered(platform, make_watcher):
    watcher = make_watcher()
    watcher.cycle()
    flaky = platform.start(MACHINE_A, 1)
    platform.containers[flaky]["status"] = "shutting_down"  # crashed between event and lookup
    watcher.cycle()
    assert registered(watcher) == set()


def test_resync_heals_missed_events(platform, make_watcher):
    kept = platform.start(MACHINE_A, 1)
    dropped = platform.start(MACHINE_B, 2)
    watcher = make_watcher(resync_every=3)
    watcher.cycle()  # cycle 1: full listing
    silent = platform.start(MACHINE_C, 3, with_events=False)
    platform.stop(dropped, with_events=False)
    watcher.cycle()  # cycle 2: events only, nothing to see
    assert registered(watcher) == {kept, dropped}
    watcher.cycle()  # cycle 3: resync
    assert registered(watcher) == {kept, silent}
    assert watcher.document["resynced_at"]


def test_api_failure_keeps_last_good_registry_marked_stale(platform, make_watcher, registry_validator):
    first = platform.start(MACHINE_A, 1)
    watcher = make_watcher()
    watcher.cycle()

    platform.down = True
    watcher.cycle()
    stale = read_file(watcher.options.out)
    registry_validator.validate(stale)
    assert stale["stale"] is True and stale["stale_reason"]
    assert [s["container_uuid"] for s in stale["services"]] == [first], "a blinking API must not empty the registry"

    platform.down = False
    second = platform.start(MACHINE_B, 2, with_events=False)
    watcher.cycle()  # recovery lists everything again, so what happened meanwhile shows up
    fresh = read_file(watcher.options.out)
    assert "stale" not in fresh
    assert {s["container_uuid"] for s in fresh["services"]} == {first, second}


def test_api_down_from_the_start_gives_an_empty_stale_registry(platform, make_watcher, registry_validator):
    platform.down = True
    watcher = make_watcher()
    watcher.cycle()
    registry_validator.validate(watcher.document)
    assert watcher.document["stale"] is True and watcher.document["services"] == []


# --- health -----------------------------------------------------------------------------


def test_health_probe_marks_unhealthy_after_k_failures_and_back(platform, make_watcher):
    from autodl_esd.serving.registry.watcher import HealthTracker

    uuid = platform.start(MACHINE_A, 1)
    answers = {"ok": True}
    probed: list[str] = []

    def check(probe_url, timeout):
        probed.append(probe_url)
        return answers["ok"]

    watcher = make_watcher(health=HealthTracker("health", 1.0, failures_to_leave=2, check=check))

    def healthy():
        return watcher.document["services"][0]["healthy"]

    watcher.cycle()
    assert healthy() is True and probed[-1].endswith("/p6006/health")
    answers["ok"] = False
    watcher.cycle()
    assert healthy() is True, "one failed probe is noise"
    watcher.cycle()
    assert healthy() is False
    assert registered(watcher) == {uuid}, "an unhealthy replica stays listed (healthy=false), clients skip it"
    answers["ok"] = True
    watcher.cycle()
    assert healthy() is True


def test_new_replica_is_unhealthy_until_its_first_probe_succeeds(platform, make_watcher):
    from autodl_esd.serving.registry.watcher import HealthTracker

    platform.start(MACHINE_A, 1)
    watcher = make_watcher(health=HealthTracker("/health", 1.0, failures_to_leave=3, check=lambda u, t: False))
    watcher.cycle()
    assert watcher.document["services"][0]["healthy"] is False


def test_probe_against_a_real_socket(tmp_path):
    from autodl_esd.serving.registry.watcher import probe

    assert probe("http://127.0.0.1:9/health", timeout=0.5) is False  # discard port: refused


# --- a hung API, a vanished --out directory, records that break the schema -----------------


def test_a_hung_api_does_not_stall_the_cycle_or_the_probes_and_is_flagged_stale(platform, make_watcher, monkeypatch):
    from autodl_esd.serving.registry import watcher as registry

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


# --- a watch ends with its deployment (stopped or deleted), never on an outage -------------

CONTAINER = "833f1cd5a764fa3-0a0a0a0a0a-00000001"


class ScriptedPlatform:
    """What the watcher asks, answered from a script: events, running containers, the deployment."""

    def __init__(self, monkeypatch, deployment_answers):
        from autodl_esd.platform import resolve
        from autodl_esd.serving.registry import watcher as registry

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
    from autodl_esd.serving.registry.watcher import RegistryWatcher, WatchOptions

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
    from autodl_esd.serving.registry.document import validate_registry

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


# --- the loop, the script, signals -------------------------------------------------------


def test_watch_script_bounded_by_max_cycles(run, platform, tmp_path, result_validator, registry_validator):
    uuid = platform.start(MACHINE_A, 1)
    out = tmp_path / "registry.json"

    code, document, err = run("discover_services.py", "--deployment-uuid", DEP, "--watch", "--interval", "0.01",
                              "--max-cycles", "3", "--out", str(out))

    assert code == 0, document
    result_validator.validate(document)
    assert (document["cycles"], document["registered"], document["stopped_by"]) == (3, 1, "max_cycles")
    assert [s["container_uuid"] for s in document["services"]] == [uuid]
    assert document["out"] == str(out)
    registry_validator.validate(read_file(out))
    assert "注册" in err
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"], "no temporary file left behind"


def test_watch_stopped_by_a_signal_ends_normally_with_a_summary(run, platform, monkeypatch, result_validator):
    from autodl_esd.serving.registry import watcher as registry
    from autodl_esd.core.errors import Interrupted

    platform.start(MACHINE_A, 1)
    real_cycle = registry.RegistryWatcher.cycle

    def cycle_then_signal(self):
        if self.cycles == 2:
            raise Interrupted("SIGTERM")
        real_cycle(self)

    monkeypatch.setattr(registry.RegistryWatcher, "cycle", cycle_then_signal)
    code, document, _ = run("discover_services.py", "--deployment-uuid", DEP, "--watch", "--interval", "0.01")

    assert code == 0, document
    result_validator.validate(document)
    assert document["stopped_by"] == "SIGTERM" and len(document["services"]) == 1


def test_watch_bounded_by_duration(platform, make_watcher):
    platform.start(MACHINE_A, 1)
    watcher = make_watcher(interval=0.02, duration=0.1)
    assert watcher.run() == "duration"
    assert watcher.cycles >= 2


# --- atomic writes ----------------------------------------------------------------------


def test_readers_never_see_a_half_written_file(tmp_path):
    from autodl_esd.serving.registry.document import write_atomically

    path = tmp_path / "registry.json"
    small = {"status": "success", "services": []}
    big = {"status": "success", "services": [{"container_uuid": f"c{i}", "url": "http://x" * 50} for i in range(300)]}
    write_atomically(path, small)
    done = threading.Event()
    failures: list[str] = []
    reads = [0]

    def reader():
        while not done.is_set():
            try:
                json.loads(path.read_text(encoding="utf-8"))
                reads[0] += 1
            except ValueError as error:
                failures.append(str(error))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            write_atomically(path, big if i % 2 else small)
    finally:
        done.set()
        thread.join(timeout=5)
    assert failures == [] and reads[0] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]


# --- the loopback endpoint --------------------------------------------------------------


def service(uuid: str, healthy: bool = True) -> dict:
    machine = uuid.split("-")[1]
    return {"container_uuid": uuid, "url": f"https://{machine}.example.com", "machine_id": machine,
            "gpu_name": "RTX 4090", "since": "2026-11-25T12:00:00+08:00", "healthy": healthy}


def get(endpoint_url: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(endpoint_url + path, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def endpoint():
    from autodl_esd.serving.registry.document import registry_document
    from autodl_esd.serving.registry.endpoint import RegistryEndpoint

    holder = {"document": registry_document(DEP, [service(container_uuid(MACHINE_A, 1)), service(container_uuid(MACHINE_B, 2)),
                                                  service(container_uuid(MACHINE_C, 3), healthy=False)])}
    started = RegistryEndpoint("127.0.0.1", 0, registry=lambda: holder["document"]).start()
    started.holder = holder
    yield started
    started.stop()


def test_endpoint_serves_the_registry(endpoint, registry_validator):
    status, document = get(endpoint.url, "/services")
    assert status == 200
    registry_validator.validate(document)
    assert document == endpoint.holder["document"]


def test_endpoint_pick_round_robin_skips_unhealthy_replicas(endpoint):
    picks = [get(endpoint.url, "/pick?policy=round_robin")[1]["service"]["container_uuid"] for _ in range(6)]
    assert set(picks) == {container_uuid(MACHINE_A, 1), container_uuid(MACHINE_B, 2)}
    assert picks[0::2] == [picks[0]] * 3 and picks[1::2] == [picks[1]] * 3, "round robin alternates"


@pytest.mark.parametrize("policy", ["least_inflight", "random"])
def test_endpoint_pick_other_policies(endpoint, policy):
    status, document = get(endpoint.url, f"/pick?policy={policy}")
    assert status == 200 and document["policy"] == policy
    assert document["service"]["machine_id"] in (MACHINE_A, MACHINE_B)


def test_endpoint_errors_follow_the_output_contract(endpoint, result_validator):
    answers = {}
    answers["bad_policy"] = get(endpoint.url, "/pick?policy=fastest")
    answers["unknown_path"] = get(endpoint.url, "/nothing")
    endpoint.holder["document"] = {**endpoint.holder["document"], "services": []}
    answers["no_replica"] = get(endpoint.url, "/pick")
    endpoint.holder["document"] = None
    answers["not_ready"] = get(endpoint.url, "/services")

    for status, document in answers.values():
        result_validator.validate(document)  # error_type, message, hint, details: like every script
        assert document["status"] == "error" and document["hint"] and isinstance(document["details"], dict)
    assert [(status, document["error_type"]) for status, document in answers.values()] == [
        (400, "usage_error"), (404, "not_found"), (503, "api_error"), (503, "api_error")]
    assert answers["bad_policy"][1]["details"]["available_policies"] == ["least_inflight", "round_robin", "random"]
    assert answers["unknown_path"][1]["details"]["available_paths"] == ["/services", "/pick"]
    assert "没有可用副本" in answers["no_replica"][1]["message"]
    assert answers["not_ready"][1]["details"]["retryable"] is True


def test_registry_timestamps_use_the_platform_offset(monkeypatch):
    """generated_at / resynced_at are +08:00 like the platform's since/started_at, whatever TZ says."""
    import time

    from autodl_esd.serving.registry import document as registry

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        document = registry.registry_document(DEP, [], resynced_at=registry.now_timestamp())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert document["generated_at"].endswith("+08:00") and document["resynced_at"].endswith("+08:00")


def test_help_does_not_import_the_registry():
    """--help stays cheap: the defaults are the entry script's, the registry loads on use."""
    import subprocess
    import sys

    from helpers import SCRIPTS

    script = SCRIPTS / "discover_services.py"
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(script)!r}, '--help']\n"
        f"sys.path.insert(0, {str(script.parent)!r})\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('autodl_esd.serving.registry', 'urllib.request', 'http.server', 'concurrent.futures') if m in sys.modules]\n"
        "sys.stderr.write(repr(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
    assert "默认 5" in done.stdout and "默认 12" in done.stdout


def test_endpoint_on_a_stale_registry_logs_nothing_in_english(endpoint):
    # The watcher logs staleness itself, in Chinese; the endpoint's pools must not add the
    # service_pool library's English warning (logging's last resort prints it on stderr).
    # A handler on the root logger sees what would reach stderr; caplog is not used because
    # pytest >= 9.1 also captures loggers that do not propagate (pytest-dev/pytest#14375).
    import logging

    reached_root: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reached_root.append(record.getMessage())

    root, handler = logging.getLogger(), Collect(logging.DEBUG)
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        endpoint.holder["document"] = {**endpoint.holder["document"], "stale": True, "stale_reason": "AutoDL 接口超时"}
        assert get(endpoint.url, "/pick")[0] == 200
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
    assert [message for message in reached_root if "stale" in message] == []


def test_endpoint_says_when_the_registry_is_stale(endpoint, result_validator):
    status, fresh = get(endpoint.url, "/pick")
    assert status == 200 and "stale" not in fresh and "stale_reason" not in fresh
    endpoint.holder["document"] = {**endpoint.holder["document"], "stale": True, "stale_reason": "AutoDL 接口超时"}
    for path in ("/pick", "/services"):
        status, document = get(endpoint.url, path)
        assert status == 200 and (document["stale"], document["stale_reason"]) == (True, "AutoDL 接口超时"), path
    status, picked = get(endpoint.url, "/pick")
    result_validator.validate(picked)
    assert picked["service"]["container_uuid"] and picked["note"]


def registry_with_one() -> dict:
    from autodl_esd.serving.registry.document import registry_document

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
    from autodl_esd.serving.registry.endpoint import RegistryEndpoint, parse_loopback_address

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
    from autodl_esd.serving.registry import endpoint as registry

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


def test_the_schema_check_runs_only_when_what_the_registry_says_changes(platform, make_watcher, monkeypatch):
    from autodl_esd.serving.registry import watcher as registry

    checked = []
    real = registry.validate_registry

    def counting(document):
        checked.append(sorted(s["container_uuid"] for s in document["services"]))
        real(document)

    monkeypatch.setattr(registry, "validate_registry", counting)
    first = platform.start(MACHINE_A, 1)
    watcher = make_watcher()
    for _ in range(3):
        watcher.cycle()
    assert checked == [[first]]  # three publishes, one check: only the timestamps moved
    published = watcher.document
    watcher.cycle()
    assert watcher.document is not published and watcher.document["services"] is published["services"]
    second = platform.start(MACHINE_B, 2)
    watcher.cycle()
    watcher.cycle()
    assert checked == [[first], sorted([first, second])]
    platform.down = True  # an API error: the same replicas, now stale, is a new document to check
    watcher.cycle()
    assert watcher.document["stale"] is True and len(checked) == 3


def test_a_view_of_unchanged_replicas_hands_the_gateway_the_same_services():
    from autodl_esd.serving.routing.sources import view_from_document

    def document(*uuids):
        return {"status": "success", "deployment_uuid": DEP, "generated_at": "2026-01-01T00:00:00+08:00",
                "services": [{"container_uuid": uuid, "url": f"http://{uuid}", "machine_id": None, "gpu_name": None,
                              "since": "2026-01-01T00:00:00+08:00", "healthy": True} for uuid in uuids]}

    first = view_from_document(document("a", "b"), 1.0)
    again = view_from_document(document("a", "b"), 2.0, first)
    assert again.services is first.services and again.read_at == 2.0
    changed = view_from_document(document("a"), 3.0, again)
    assert changed.services is not first.services and [s["container_uuid"] for s in changed.services] == ["a"]
