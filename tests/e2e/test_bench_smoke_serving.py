"""The serving benchmarks still run (tiny sizes); the others are in test_bench_smoke.py.

Each must finish and print its tables; the numbers are bench/README.md's, from full runs, never
asserted here. scale_out.py starts a real redis-server and haproxy, like the scale-out tests;
gateway.py runs wrk and haproxy (and nginx when installed) beside the gateway; llm_routing.py
starts a redis-server for its two-gateway section.
"""

from __future__ import annotations

import pytest

from helpers.bench import run_bench

BENCHES = [
    ("load_balancing.py", ["--requests", "16", "--threads", "2", "--trials", "1"]),
    ("gateway.py", ["--quick", "--seconds", "1", "--connections", "4", "--streams", "4", "--scaling", "3,30",
                    "--policy-requests", "16", "--scenarios", "1"]),
    ("autoscale.py", ["--day-seconds", "3", "--peak-rps", "10"]),
    ("scale_out.py", ["--requests", "3", "--threads", "1", "--sequential", "20", "--leases", "20"]),
    ("llm_routing.py", ["--conversations", "2", "--turns", "2", "--concurrency", "2", "--rounds", "1"]),
]


@pytest.mark.parametrize("script,argv", BENCHES, ids=[b[0] for b in BENCHES])
def test_bench_runs_and_prints_a_table(script, argv):
    done = run_bench(script, argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|" in done.stdout or "  " in done.stdout
