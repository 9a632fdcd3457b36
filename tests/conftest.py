"""Shared fixtures: isolated environment, in-process script runs, HTTP mocks.

Tests never reach the real AutoDL: unit tests mock HTTP with `responses`; end-to-end tests
start the simulator on a loopback port.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
for entry in (str(SCRIPTS), str(ROOT)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

TEST_TOKEN = "test-token-0123456789"
TEST_HOST = "http://127.0.0.1:9"  # loopback, discard port: a leaked real request fails fast


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


def load_script(path: Path) -> Any:
    """Import an entry script as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def script_path(name: str) -> Path:
    return ROOT / name if (ROOT / name).is_file() else SCRIPTS / name


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


# End-to-end tests run the simulator at 200 simulated seconds per real second: a ~30 s
# container start-up takes ~0.15 s, yet every phase is still observed by a 0.05 s poller.
SIM_SPEED = 200.0


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


def envelope(data: Any = None, code: str = "Success", msg: str = "") -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data, "request_id": "0" * 32}


def url(path: str) -> str:
    return TEST_HOST + path


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


def running_uuids(instance, deployment_uuid) -> set[str]:
    return {c["uuid"] for c in instance.containers(deployment_uuid) if c["status"] == "running"}
