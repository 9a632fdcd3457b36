"""The benches of bench/ run small inside the suite: the exactly-once soak's own driver with
its fault modes scaled down, and a smoke run of any bench.

The soak is split over three files of tests/e2e (faults in the answers, commits that land
late, detached runs signalled and resumed) so that pytest-xdist's --dist loadfile can spread
its minute of work over several workers; each file takes its modes from SCALED here.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from functools import lru_cache
from typing import Any

import pytest

from helpers import ROOT

# Scaled-down faults: every delay is below the 1.0 s grace (0.3 s timeout + 0.7 s margin).
# The grace starts when the client gives up (0.3 s after sending), so the last look is ~1.3 s
# after the send; a create held back by several faults at once must land well before that:
# in all_at_once slow (0.4) + commit delay (0.4) is at most 0.8 s, the same 0.5 s to spare as
# the slow mode (0.6 + 0.5 left 0.2 s, too little when a loaded machine is slow to commit).
SCALED = {
    "slow": ("slow_rate=0.3,slow_seconds=0.8", 0.3),
    "errors_wait_running": ("error_rate=0.5", 0.5),
    "errors": ("error_rate=0.3", 0.5),
    "create_slow_after_commit": ("create_slow_seconds=0.6", 0.3),
    "create_error_after_commit": ("create_error_after_commit=1", 0.5),
    "commit_delay": ("commit_delay_seconds=0.6,commit_delay_rate=0.5", 0.3),
    "all_at_once": ("error_rate=0.2,slow_rate=0.2,slow_seconds=0.4,create_slow_seconds=0.4,"
                    "create_error_after_commit=2,commit_delay_seconds=0.4,commit_delay_rate=0.3", 0.3),
    "late_commit_9": ("commit_delay_seconds=1.5", 0.3),
    "late_commit_30": ("commit_delay_seconds=3", 0.3),
}
# The modes whose create commits late: tests/e2e/test_exactly_once_soak_late_commits.py soaks
# these, test_exactly_once_soak.py every other mode of SCALED.
LATE_COMMITS = ("commit_delay", "late_commit_9", "late_commit_30")
# The scaled reconcile window: past the latest scaled commit (3 s) with room for a loaded machine.
WINDOW_SECONDS = 4.0
RUNS_PER_MODE = 3
# What no run may end with (bench/exactly_once_soak.py's classifier).
BROKEN = ("DUPLICATE", "UNREPORTED", "PHANTOM")


@lru_cache(maxsize=None)
def soak() -> Any:
    """bench/exactly_once_soak.py as a module (it imports the simulator)."""
    pytest.importorskip("simulator")
    spec = importlib.util.spec_from_file_location("exactly_once_soak", ROOT / "bench" / "exactly_once_soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def soak_in_process(mode: str, run, monkeypatch, tmp_path, result_validator) -> dict[str, Any]:
    """RUNS_PER_MODE in-process queue_submit runs under the scaled faults of `mode`, each
    against its own simulator, every output validated; returns the soak's tally."""
    from autodl_esd.deploy import submit
    from autodl_esd.platform import effects

    monkeypatch.setattr(submit, "DEFAULT_RECONCILE_WINDOW_SECONDS", WINDOW_SECONDS)
    monkeypatch.setattr(effects, "IN_FLIGHT_MARGIN_SECONDS", 0.7)
    monkeypatch.setattr(effects, "LOOK_PAUSE_SECONDS", 0.2)  # still several looks within the grace
    faults, http_timeout = SCALED[mode]

    def runner_for(sim):
        monkeypatch.setenv("AUTODL_HOST", sim.url)
        monkeypatch.setenv("AUTODL_TOKEN", sim.token)
        monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", str(http_timeout))

        def in_process(name, path, _timeout, flags):
            code, document, _ = run("queue_submit.py", str(path), "--interval", "0.05", "--quiet", "--timeout", "20", *flags)
            result_validator.validate(document)
            return code, document

        return in_process

    return soak().soak_mode(mode, RUNS_PER_MODE, 1, tmp_path, runner_for, spec=faults, http_timeout=http_timeout)


# Benches that start real servers (and the packages they need): they run wherever the
# scale-out tests do.
NEEDS_SERVERS = {"scale_out.py": ("redis-server", "haproxy"), "gateway.py": ("haproxy", "wrk")}
NEEDS_MODULES = {"scale_out.py": ("redis",)}
BENCH_TIMEOUT_SECONDS = 120


def run_bench(script: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run bench/SCRIPT with tiny sizes in a child process (skipped, or failed under CI=true,
    when it needs a server that is not installed). The bench runs in a session of its own:
    one that overruns is killed with every server it started, none left behind."""
    for module in NEEDS_MODULES.get(script, ()):
        pytest.importorskip(module)
    if script in NEEDS_SERVERS:
        from helpers.servers import require_binary

        for name in NEEDS_SERVERS[script]:
            require_binary(name)
    argv = [sys.executable, str(ROOT / "bench" / script), *argv]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=BENCH_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"bench/{script} ran over {BENCH_TIMEOUT_SECONDS} s: {stderr[-2000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
