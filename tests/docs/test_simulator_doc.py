"""references/simulator.md against the simulator: every control route is in its table, and the
cluster file it shows loads, with every machine key the parser knows."""

from __future__ import annotations

import json
import re

from helpers.docs import read
from simulator.app import CONTROL_ROUTES
from simulator.cluster import Machine, load_cluster

DOC = "references/simulator.md"


def test_every_control_route_has_a_row():
    doc = read(DOC)
    missing = [f"{method} {path}" for method, path in CONTROL_ROUTES if f"| `{method} {path}` |" not in doc]
    assert not missing, f"{DOC} lacks rows for {missing}"


def test_the_cluster_file_example_loads_and_shows_every_machine_key():
    example = re.search(r"```json\n(\{.*?\})\n```", read(DOC), re.S)
    assert example, f"no JSON cluster example in {DOC}"
    raw = json.loads(example.group(1))
    spec = load_cluster(raw)
    shown = set(raw["machines"][0])
    # chip_corp / cpu_arch only label region stock; every other setting is shown once.
    assert set(Machine.__dataclass_fields__) - shown == {"chip_corp", "cpu_arch"}
    assert spec.machines[0].prefix_cache_blocks == raw["machines"][0]["prefix_cache_blocks"]
