"""The benchmarks still run (tiny sizes): a bench nobody can run measures nothing.

These assert only that each bench finishes and prints its tables; the numbers themselves
are recorded in bench/README.md from full runs, never asserted (the machine is shared and noisy).
This file: start-up, the simulator, the exactly-once soak, signals and the MCP server; the
serving benches (load balancing, the gateway, autoscaling, scale-out) are in
test_bench_smoke_serving.py, so --dist loadfile can run the two halves on two workers.
"""

from __future__ import annotations

import sys

import pytest

from helpers.bench import run_bench

BENCHES = [
    ("startup.py", ["--runs", "1", "--python", sys.executable]),  # a full run builds a fresh venv
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
