"""Fixtures shared by every folder: isolated environment, in-process script runs, HTTP mocks,
the simulator, real servers, an event loop thread. Plain helpers are in `helpers/`.

Tests never reach the real AutoDL: unit tests mock HTTP with `responses`; end-to-end tests
start the simulator on a loopback port.

Under pytest-xdist every worker is its own process: a session fixture (the Redis server) is
one per worker, and every server a fixture starts binds a port the system picks and keeps
its files under the test's own tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable

import pytest

from helpers import ROOT, SIM_SPEED, TEST_HOST, TEST_TOKEN, load_script, script_path
from helpers.servers import CHECK_FALL, CHECK_INTER, HaproxyServer, RedisServer, free_port

HYPOTHESIS_HOME = pytest.StashKey[str]()


def pytest_configure(config):
    """Hypothesis's pytest plugin caches the constants of our source under ./.hypothesis (the
    skill root) while collecting, in every xdist worker at once: each pytest process gets a
    directory of its own instead, removed at the end (a cache; a run recomputes it quickly)."""
    if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        config.stash[HYPOTHESIS_HOME] = os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = tempfile.mkdtemp(prefix="hypothesis-")


def pytest_unconfigure(config):
    directory = config.stash.get(HYPOTHESIS_HOME, None)
    if directory:
        os.environ.pop("HYPOTHESIS_STORAGE_DIRECTORY", None)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No real .env, a fake token, a loopback host, no real sleeping in retries."""
    from autodl_esd.core import http, output, settings

    for name in ("AUTODL_TOKEN", "AUTODL_HOST", "AUTODL_HTTP_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTODL_TOKEN", TEST_TOKEN)
    monkeypatch.setenv("AUTODL_HOST", TEST_HOST)
    # Guards and notification counts write state; never into the repo or the user's home.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("AUTODL_WECHAT_HOST", raising=False)
    monkeypatch.setattr(settings, "ENV_FILE", tmp_path / "no.env")
    monkeypatch.setattr(http, "_sleep", lambda seconds: None)
    output._secrets.clear()
    yield


@pytest.fixture
def run(capsys) -> Callable[..., tuple[int, dict[str, Any], str]]:
    """run("list_images.py", "--quiet") -> (exit code, parsed stdout JSON, stderr)."""

    def _run(script: str, *argv: str) -> tuple[int, dict[str, Any], str]:
        module = load_script(script_path(script))
        code = module.main(list(argv))
        captured = capsys.readouterr()
        try:
            document = json.loads(captured.out)
        except json.JSONDecodeError:
            pytest.fail(f"stdout is not one JSON document:\n{captured.out}")
        return code, document, captured.err

    return _run


@pytest.fixture(scope="session")
def result_validator():
    import jsonschema

    schema = json.loads((ROOT / "schemas" / "result.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def mocked():
    """A strict `responses` mock: every registered call must be used."""
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def sim(monkeypatch):
    """sim(**Simulator kwargs) starts a loopback simulator and points the scripts at it.

    Every simulator started this way is stopped when the test ends.
    """
    simulator = pytest.importorskip("simulator")
    started: list = []

    def start(**kwargs):
        kwargs.setdefault("speed", SIM_SPEED)
        kwargs.setdefault("seed", 1)
        instance = simulator.Simulator(**kwargs).start()
        started.append(instance)
        monkeypatch.setenv("AUTODL_HOST", instance.url)
        monkeypatch.setenv("AUTODL_TOKEN", instance.token)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def deploy(run, tmp_path) -> Callable[[int], str]:
    """Submit the ReplicaSet example with `replica_num` replicas (to the `sim` fixture's
    simulator) and wait until they run; returns the deployment uuid."""
    example = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))

    def submit(replica_num: int) -> str:
        path = tmp_path / "service.json"
        path.write_text(json.dumps(dict(example, replica_num=replica_num)), encoding="utf-8")
        code, out, _ = run("queue_submit.py", str(path), "--interval", "0.05", "--wait-running", "--quiet")
        assert code == 0, out
        return out["deployment_uuid"]

    return submit


@pytest.fixture
def recorded_watchers(monkeypatch) -> list:
    """Every RegistryWatcher a script creates in this test, so the test can stop a watch
    through its `stop_event` once it has seen what it needs (a fixed --duration could run
    out on a loaded machine before the last step)."""
    from autodl_esd.serving.registry import watcher as registry

    watchers: list = []

    class RecordedWatcher(registry.RegistryWatcher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            watchers.append(self)

    monkeypatch.setattr(registry, "RegistryWatcher", RecordedWatcher)
    return watchers


# ---- the `responses` fakes (records and URLs in helpers/fake_api.py) ----------------------


@pytest.fixture
def api():
    """Ordered responses: calls must happen in exactly the registered order, all of them."""
    import responses
    from responses.registries import OrderedRegistry

    with responses.RequestsMock(registry=OrderedRegistry, assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def fast_read_back(monkeypatch):
    """No real pause between the looks of a read-back after a change (resolve.read_back).
    A module of tests against the fakes uses it with `pytest.mark.usefixtures`."""
    from autodl_esd.platform import resolve

    monkeypatch.setattr(resolve, "_sleep", lambda seconds: None)


# ---- an event loop on a thread (the gateway tests) -----------------------------------------


@pytest.fixture
def loop_thread():
    """An event loop on its own thread for the test's servers and clients; closed after."""
    from helpers.loop_thread import LoopThread

    thread = LoopThread()
    yield thread
    thread.close()


# ---- real redis-server and haproxy (the scale-out tests; helpers/servers.py) ---------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server per session, which under xdist is one per worker: its own port (the
    system picks it) and its own directory; tests keep apart by `key_prefix`."""
    pytest.importorskip("redis")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A prefix of its own per test, so tests sharing the session's Redis never meet."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def haproxy_server(tmp_path):
    """haproxy_server(render_kwargs) -> HaproxyServer started from serving.haproxy.render_config."""
    from autodl_esd.serving import haproxy

    started = []

    def start(**overrides):
        directory = tmp_path / f"haproxy{len(started)}"
        directory.mkdir()
        socket_path = directory / "admin.sock"
        port, metrics_port = free_port(), free_port()
        settings = dict(deployment_uuid="0" * 15, bind=f"127.0.0.1:{port}", backend="replicas", socket_path=str(socket_path),
                        metrics_bind=f"127.0.0.1:{metrics_port}", health_path="/health",
                        options=haproxy.server_options(CHECK_INTER, CHECK_FALL, 1, 10))
        settings.update(overrides)
        server = HaproxyServer(directory, haproxy.render_config(**settings), socket_path)
        server.url = f"http://127.0.0.1:{port}"
        server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        server.settings = settings
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
