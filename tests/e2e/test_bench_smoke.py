"""The benchmarks still run (tiny sizes): a bench nobody can run measures nothing.

These assert only that each bench finishes and prints its tables; the numbers themselves
are recorded in the README from full runs, never asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT

BENCHES = [
    ("startup.py", ["--runs", "1", "--python", sys.executable]),  # a full run builds a fresh venv
    ("simulator.py", ["--requests", "20", "--trials", "1"]),
    ("load_balancing.py", ["--requests", "16", "--threads", "2", "--trials", "1"]),
    ("exactly_once_soak.py", ["--runs", "1", "--parallel", "1", "--modes", "create_error_after_commit"]),
    ("simulator_memory.py", ["--count", "3"]),
    ("signal_trials.py", ["--trials", "0"]),
    ("gateway.py", ["--requests", "20", "--seconds", "0.3", "--policy-requests", "16", "--streams", "4", "--scenarios", "1",
                    "--stream-events", "3", "--stream-gap", "0.02"]),
    ("autoscale.py", ["--day-seconds", "3", "--peak-rps", "10"]),
    ("scale_out.py", ["--requests", "3", "--threads", "1", "--sequential", "20", "--leases", "20"]),
    ("mcp_overhead.py", ["--calls", "1"]),
]
# Benches that start real servers: they run wherever the scale-out tests do.
NEEDS_SERVERS = {"scale_out.py": ("redis-server", "haproxy")}


@pytest.mark.parametrize("script,argv", BENCHES, ids=[b[0] for b in BENCHES])
def test_bench_runs_and_prints_a_table(script, argv):
    if script in NEEDS_SERVERS:
        from helpers.servers import require_binary

        pytest.importorskip("redis")
        for name in NEEDS_SERVERS[script]:
            require_binary(name)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *argv],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|" in done.stdout or "  " in done.stdout
