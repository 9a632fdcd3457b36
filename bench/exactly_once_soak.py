#!/usr/bin/env python3
"""Exactly-once soak: queue_submit many times under each simulator fault mode, then count.

For every fault mode a fresh simulator is started; `--runs` submits (each its own name,
`--parallel` at a time, each a real `queue_submit.py` process with a short
AUTODL_HTTP_TIMEOUT) run against it. The `late_commit_*` modes hold every write back for
far longer than the HTTP timeout (the create lands 9, 15 or 30 s after it was sent). The
`detached_*` modes submit with --detach, then kill -9 (or SIGTERM) the background process
at a random moment, `jobs.py --resume` it and follow it with `jobs.py --status --wait` to
the end. After the last run ends, the soak waits for requests still sleeping inside the
simulator to commit, then counts deployments per name and sets each against what that run
printed (or, detached, what its record finally said):

  reported      one deployment, and the output names its uuid
  flagged       one deployment, the output says may_have_been_created (uuid not known)
  none, error   no deployment, an error output
  DUPLICATE     two or more deployments of one run
  UNREPORTED    a deployment exists, the output neither names it nor flags it
  PHANTOM       the output names a uuid that does not exist

The exactly-once rule holds when DUPLICATE, UNREPORTED and PHANTOM are all zero. The
small version of this soak runs in the test suite (tests/e2e/test_exactly_once_soak.py and
the two files beside it, with the reconcile margin shortened in-process); this one uses the
real margin.

    python3 bench/exactly_once_soak.py                     # 30 runs per mode, the issue's figures
    python3 bench/exactly_once_soak.py --runs 5 --modes slow
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from simulator import Simulator  # noqa: E402

# (name, fault SPEC, AUTODL_HTTP_TIMEOUT, extra queue_submit flags): the scenarios of the
# exactly-once issue plus the slow-before-commit race on purpose (commit_delay).
MODES: dict[str, tuple[str, float, tuple[str, ...]]] = {
    "slow": ("slow_rate=0.3,slow_seconds=5", 1.0, ()),
    "errors_wait_running": ("error_rate=0.5", 2.0, ("--wait-running",)),
    "errors": ("error_rate=0.3", 2.0, ()),
    "create_slow_after_commit": ("create_slow_seconds=3", 1.0, ()),
    "create_error_after_commit": ("create_error_after_commit=1", 2.0, ()),
    "commit_delay": ("commit_delay_seconds=3,commit_delay_rate=0.5", 1.0, ()),
    "all_at_once": ("error_rate=0.2,slow_rate=0.2,slow_seconds=3,create_slow_seconds=2,"
                    "create_error_after_commit=2,commit_delay_seconds=2,commit_delay_rate=0.3", 1.0, ("--wait-running",)),
    "late_commit_9": ("commit_delay_seconds=9", 1.0, ()),
    "late_commit_15": ("commit_delay_seconds=15", 1.0, ()),
    "late_commit_30": ("commit_delay_seconds=30", 1.0, ()),
    "detached_kill9_resume": ("create_slow_seconds=2,commit_delay_seconds=2,commit_delay_rate=0.5", 1.0, ()),
    "detached_sigterm_resume": ("create_slow_seconds=2,commit_delay_seconds=2,commit_delay_rate=0.5", 1.0, ()),
}
# The detached modes' signal, and how late after --detach returned it may arrive: before,
# during and after the create (the create itself is held back about 2 s by the faults).
DETACHED_SIGNALS = {"detached_kill9_resume": signal.SIGKILL, "detached_sigterm_resume": signal.SIGTERM}
MAX_SIGNAL_DELAY_SECONDS = 3.0
OUTCOMES = ("reported", "flagged", "none, error", "DUPLICATE", "UNREPORTED", "PHANTOM")
# Simulated seconds per real second: container start-up (image pull) takes well under a
# real second, so --wait-running finishes quickly while faults still hit every call.
SIM_SPEED = 200.0
# Ample cards so no run waits for stock because of the others (8 hosts x 8 RTX 4090).
HOSTS, CARDS_PER_HOST = 8, 8
# Bounded runs: a run that waits longer than this is a bug worth seeing, not a hang.
RUN_TIMEOUT_SECONDS = 240.0
# The reconcile window of every run: shorter than the default five minutes so that a mode
# whose 5xx answers created nothing ends in minutes, yet longer than the latest commit
# here (30 s after a 1 s timeout) with room for a loaded machine.
RECONCILE_WINDOW_SECONDS = 45.0


def cluster() -> dict[str, Any]:
    default = json.loads((ROOT / "scripts" / "simulator" / "default_cluster.json").read_text(encoding="utf-8"))
    machine = next(m for m in default["machines"] if m["gpu_name"] == "RTX 4090")
    machines = [{**machine, "machine_id": f"{index:010x}", "gpu_num": CARDS_PER_HOST} for index in range(HOSTS)]
    return {**default, "machines": machines, "background_load": []}


def config(name: str) -> dict[str, Any]:
    base = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
    return {**copy.deepcopy(base), "name": name, "replica_num": 1}


def classify(deployments: list[dict[str, Any]], name: str, document: dict[str, Any]) -> str:
    """One run's outcome from the deployments named after it and what it printed."""
    ours = {d["uuid"] for d in deployments if d["name"] == name}
    # A detached run's document is its record's final view (jobs.py --status): the same
    # fields at the top level instead of under details.
    details = document.get("details") or document
    reported = document.get("deployment_uuid") or details.get("deployment_uuid")
    ended_without_one = document.get("status") == "error" or document.get("state") in ("failed", "cancelled", "may_have_been_created")
    if len(ours) >= 2:
        return "DUPLICATE"
    if reported and reported not in ours and document.get("error_type") != "deployment_exists":
        return "PHANTOM"
    if not ours:
        return "none, error" if ended_without_one else "PHANTOM"
    if reported in ours:
        return "reported"
    if details.get("may_have_been_created") is True and details.get("name") == name:
        return "flagged"
    return "UNREPORTED"


def settle_seconds(spec: str) -> float:
    """How long requests can still sleep inside the simulator after the last run ended."""
    values = dict(part.split("=") for part in spec.split(",") if part)
    return sum(float(values.get(key, 0)) for key in ("slow_seconds", "commit_delay_seconds", "create_slow_seconds")) + 1.0


Runner = Callable[[str, Path, float, tuple[str, ...]], tuple[int, dict[str, Any]]]


def subprocess_runner(sim: Simulator, state_dir: Path | None = None) -> Runner:
    def run(name: str, path: Path, http_timeout: float, flags: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
        env = {**os.environ, "AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token, "AUTODL_HTTP_TIMEOUT": str(http_timeout),
               **({"XDG_STATE_HOME": str(state_dir)} if state_dir else {})}
        done = subprocess.run([sys.executable, str(ROOT / "queue_submit.py"), str(path), "--interval", "0.2", "--quiet",
                               "--timeout", "60", "--reconcile-window", str(RECONCILE_WINDOW_SECONDS), *flags],
                              env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)
        return done.returncode, json.loads(done.stdout)

    return run


def detached_runner(sim: Simulator, sig: signal.Signals, state_dir: Path, delay: Callable[[], float],
                    interval: float = 0.2, window: float = RECONCILE_WINDOW_SECONDS) -> Runner:
    """--detach, `sig` to the background process after `delay()` seconds, jobs.py --resume,
    then jobs.py --status --wait until the record is done; returns that final view."""
    def call(args: list[str], env: dict[str, str]) -> dict[str, Any]:
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)
        return json.loads(done.stdout)

    def run(name: str, path: Path, http_timeout: float, flags: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
        env = {**os.environ, "AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token, "AUTODL_HTTP_TIMEOUT": str(http_timeout),
               "XDG_STATE_HOME": str(state_dir)}
        jobs = str(ROOT / "scripts" / "jobs.py")
        detached = call([str(ROOT / "queue_submit.py"), str(path), "--detach", "--interval", str(interval), "--quiet",
                         "--timeout", "60", "--reconcile-window", str(window), *flags], env)
        if detached.get("status") != "success":
            return 1, detached
        time.sleep(delay())
        try:
            os.kill(int(detached["pid"]), sig)
        except ProcessLookupError:
            pass  # it had already finished
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        view = call([jobs, "--status", detached["run_id"], "--quiet"], env)
        while view.get("alive") and time.monotonic() < deadline:  # let the signalled process finish writing
            view = call([jobs, "--status", detached["run_id"], "--wait", "1", "--quiet"], env)
        if not view.get("done"):
            call([jobs, "--resume", detached["run_id"], "--quiet"], env)
        while not view.get("done") and time.monotonic() < deadline:
            view = call([jobs, "--status", detached["run_id"], "--wait", "5", "--quiet"], env)
        return 0, view

    return run


def soak_mode(mode: str, runs: int, parallel: int, workdir: Path, runner_for: Callable[[Simulator], Runner] = subprocess_runner,
              spec: str | None = None, http_timeout: float | None = None) -> dict[str, Any]:
    """Run one fault mode; returns {outcome: count, "runs": [(name, outcome, error_type)], "seconds": wall}."""
    default_spec, default_timeout, flags = MODES[mode]
    spec = spec or default_spec
    http_timeout = http_timeout or default_timeout
    started = time.monotonic()
    with Simulator(cluster=cluster(), speed=SIM_SPEED, seed=len(mode), faults=spec) as sim, \
            tempfile.TemporaryDirectory() as state_dir:
        if runner_for is not subprocess_runner:
            runner = runner_for(sim)
        elif mode in DETACHED_SIGNALS:
            chance = random.Random(len(mode))
            runner = detached_runner(sim, DETACHED_SIGNALS[mode], Path(state_dir),
                                     lambda: chance.uniform(0, MAX_SIGNAL_DELAY_SECONDS))
        else:
            runner = subprocess_runner(sim, Path(state_dir))
        names = [f"soak-{mode.replace('_', '-')}-{index}" for index in range(runs)]
        paths = {}
        for name in names:
            paths[name] = workdir / f"{name}.json"
            paths[name].write_text(json.dumps(config(name), ensure_ascii=False), encoding="utf-8")
        if parallel > 1:
            with ThreadPoolExecutor(parallel) as pool:
                documents = dict(zip(names, pool.map(lambda n: runner(n, paths[n], http_timeout, flags)[1], names)))
        else:
            documents = {name: runner(name, paths[name], http_timeout, flags)[1] for name in names}
        time.sleep(settle_seconds(spec))  # let requests still sleeping in the simulator commit
        deployments = sim.deployments()
    tally: dict[str, Any] = {outcome: 0 for outcome in OUTCOMES}
    tally["runs"] = []
    for name in names:
        outcome = classify(deployments, name, documents[name])
        tally[outcome] += 1
        tally["runs"].append((name, outcome, documents[name].get("error_type")))
    tally["seconds"] = time.monotonic() - started
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="submits per fault mode (default 30)")
    parser.add_argument("--parallel", type=int, default=6, help="submits at once (default 6)")
    parser.add_argument("--modes", nargs="*", choices=sorted(MODES), default=list(MODES), help="fault modes (default all)")
    args = parser.parse_args()
    print(f"exactly-once soak: {args.runs} runs per mode, {args.parallel} at a time\n")
    print("| mode | faults, AUTODL_HTTP_TIMEOUT | " + " | ".join(OUTCOMES) + " | seconds |")
    print("|---|---|" + "---|" * len(OUTCOMES) + "---|")
    with tempfile.TemporaryDirectory() as workdir:
        for mode in args.modes:
            spec, timeout, flags = MODES[mode]
            tally = soak_mode(mode, args.runs, args.parallel, Path(workdir))
            where = f"`{spec}`, {timeout:g} s" + (" " + " ".join(flags) if flags else "")
            print(f"| {mode} | {where} | " + " | ".join(str(tally[o]) for o in OUTCOMES) + f" | {tally['seconds']:.0f} |",
                  flush=True)
            for name, outcome, error_type in tally["runs"]:
                if outcome in ("DUPLICATE", "UNREPORTED", "PHANTOM"):
                    print(f"    {name}: {outcome} ({error_type})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
