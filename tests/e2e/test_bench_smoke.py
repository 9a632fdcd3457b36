"""The benchmarks still run (tiny sizes): a bench nobody can run measures nothing.

These assert only that each bench finishes and prints its tables (start-up's columns agree
with each other); the numbers themselves are recorded in bench/README.md from full runs, never
asserted against a target (the machine is shared and noisy).
This file: start-up, the simulator, the exactly-once soak, signals and the MCP server; the
serving benches (load balancing, the gateway, autoscaling, scale-out) are in
test_bench_smoke_serving.py, so --dist loadfile can run the two halves on two workers.
"""

from __future__ import annotations

import re
import sys

import pytest

from helpers.bench import run_bench

BENCHES = [
    ("simulator.py", ["--requests", "20", "--trials", "1", "--deployments", "3", "--scale-up", "3"]),
    ("exactly_once_soak.py", ["--runs", "1", "--parallel", "1", "--modes", "create_error_after_commit"]),
    ("simulator_memory.py", ["--count", "3"]),
    ("signal_trials.py", ["--trials", "0"]),
    ("mcp_overhead.py", ["--calls", "1"]),
]


@pytest.mark.parametrize("script,argv", BENCHES, ids=[b[0] for b in BENCHES])
def test_bench_runs_and_prints_a_table(script, argv):
    done = run_bench(script, argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|" in done.stdout or "  " in done.stdout


def test_startup_bench_prints_the_milliseconds_added_to_a_bare_start():
    done = run_bench("startup.py", ["--runs", "1", "--python", sys.executable])  # a full run builds a fresh venv
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^\| (.+?) +\| +([\d.]+) ms \| +([+-][\d.]+) ms \| +([\d.]+) \|$", done.stdout, re.MULTILINE)
    medians = {label: (float(median), float(added)) for label, median, added, _ratio in rows}
    bare, _ = medians["python -c pass"]
    assert "queue_submit.py --help" in medians, done.stdout
    for label, (median, added) in medians.items():
        assert abs(median - bare - added) <= 0.11, (label, median, added, bare)  # each figure rounded to 0.1
    assert re.search(r"^target: every --help within .*x, [+-][\d.]+ ms over a bare [\d.]+ ms \(", done.stdout,
                     re.MULTILINE), done.stdout
