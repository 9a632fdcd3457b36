"""Plain helpers shared by the tests: paths, the fake token and host, API envelopes, loading
an entry script. Fixtures live in conftest.py; this package holds no fixtures, and no test
file imports another test file: what two of them share is here.

- `helpers` (this module): paths, token, host, envelopes, entry scripts, configs written for
  a test, simulator reads.
- `helpers.fake_api`: endpoint URLs, platform records and request matchers for the
  `responses`-based tests, and queue_submit's calls against them.
- `helpers.servers`: real redis-server and haproxy on loopback ports (the scale-out tests).
- `helpers.loop_thread`: an event loop on a thread for the gateway and small aiohttp upstreams.
- `helpers.sim_service`: a one-machine simulated cluster and a ReplicaSet created on it.
- `helpers.bench`: the benches run small in the suite (the exactly-once soak, smoke runs).

Importing this package puts `scripts/` and the skill root on `sys.path`, so a test file run
as a script (`python3 tests/mcp/test_catalog.py`) imports the package as pytest does.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
for entry in (str(SCRIPTS), str(ROOT)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

TEST_TOKEN = "test-token-0123456789"
TEST_HOST = "http://127.0.0.1:9"  # loopback, discard port: a leaked real request fails fast

# End-to-end tests run the simulator at 200 simulated seconds per real second: a ~30 s
# container start-up takes ~0.15 s, yet every phase is still observed by a 0.05 s poller.
SIM_SPEED = 200.0


def envelope(data: Any = None, code: str = "Success", msg: str = "") -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data, "request_id": "0" * 32}


def url(path: str) -> str:
    return TEST_HOST + path


def load_script(path: Path) -> Any:
    """Import an entry script as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def script_path(name: str) -> Path:
    return ROOT / name if (ROOT / name).is_file() else SCRIPTS / name


def running_uuids(instance, deployment_uuid) -> set[str]:
    return {c["uuid"] for c in instance.containers(deployment_uuid) if c["status"] == "running"}


# examples/replicaset-service.json, the config most end-to-end submits start from.
SERVICE_EXAMPLE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
CREATE_REQUEST = ("POST", "/api/v1/dev/deployment")


def write_service_config(directory: Path, config: dict[str, Any] | None = None, **changes: Any) -> str:
    """A copy of `config` (the service example by default) with `changes`, written as NAME.json."""
    written = {**copy.deepcopy(SERVICE_EXAMPLE if config is None else config), **changes}
    path = directory / f"{written['name']}.json"
    path.write_text(json.dumps(written, ensure_ascii=False), encoding="utf-8")
    return str(path)


def creates(instance: Any) -> list[Any]:
    """The create requests a simulator has seen."""
    return [entry for entry in instance.request_log() if entry[:2] == CREATE_REQUEST]


def write_config(directory: Path, name: str, config: dict[str, Any]) -> str:
    """Write a deployment config to DIRECTORY/NAME.json; the path as a script argument."""
    path = directory / f"{name}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def job_config(directory: Path, name: str, cmd: str = "sleep 1800") -> str:
    """examples/job-training.json as a Job of two containers running `cmd`, written to DIRECTORY."""
    job = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))
    job.update(name=name, replica_num=2, parallelism_num=2)
    job["container_template"]["cmd"] = cmd
    return write_config(directory, name, job)


def occupy_all(instance, config: dict[str, Any]) -> None:
    """Take every card of the config's GPU types on a simulator, so a submit waits for stock."""
    for gpu in config["container_template"]["gpu_name_set"]:
        instance.occupy(gpu, 1000)
