#!/usr/bin/env python3
"""Cold start-up cost of the entry scripts, next to the interpreter's own.

Each command runs in a fresh subprocess (nothing warm but the OS page cache), N times;
the table shows the median wall time and its ratio to a bare `python -c pass`.

Targets:
  - `queue_submit.py --help` within 2x of bare interpreter start (heavy imports are lazy);
  - `validate_config.py` on an example well under the cost of importing
    requests + jsonschema eagerly (validation needs jsonschema, never requests).

    python bench/startup.py            # 15 runs per command
    python bench/startup.py --runs 31
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# (label, argv): the baselines first, then the scripts.
COMMANDS = [
    ("python -c pass", [PY, "-c", "pass"]),
    ('python -c "import requests"', [PY, "-c", "import requests"]),
    ('python -c "import requests, jsonschema"', [PY, "-c", "import requests, jsonschema"]),
    ("queue_submit.py --help", [PY, "queue_submit.py", "--help"]),
    ("validate_config.py examples/replicaset-service.json", [PY, "scripts/validate_config.py", "examples/replicaset-service.json"]),
]
HELP_TARGET_RATIO = 2.0


def time_once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    completed = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"command failed ({completed.returncode}): {' '.join(argv)}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, metavar="N", help="runs per command (default 15)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    # No token needed by either script; no user site or bytecode surprises between runs.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTODL_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for _label, command in COMMANDS:  # warm the page cache and .pyc files once
        time_once(command, {**env, "PYTHONDONTWRITEBYTECODE": ""})

    # Interleave the commands so drift in machine load hits all of them alike.
    samples: dict[str, list[float]] = {label: [] for label, _ in COMMANDS}
    for _ in range(args.runs):
        for label, command in COMMANDS:
            samples[label].append(time_once(command, env))

    medians = {label: statistics.median(times) * 1000 for label, times in samples.items()}
    bare = medians["python -c pass"]
    width = max(len(label) for label in medians)
    print(f"{sys.version.split()[0]} {PY}  ({args.runs} runs each, median)")
    print(f"{'command':<{width}}  {'median ms':>9}  {'x bare':>6}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 6}")
    for label, value in medians.items():
        print(f"{label:<{width}}  {value:>9.1f}  {value / bare:>6.2f}")

    help_ratio = medians["queue_submit.py --help"] / bare
    validate = medians["validate_config.py examples/replicaset-service.json"]
    eager = medians['python -c "import requests, jsonschema"']
    print()
    print(
        f"target: --help within {HELP_TARGET_RATIO:g}x of bare start: {help_ratio:.2f}x "
        f"-> {'met' if help_ratio <= HELP_TARGET_RATIO else 'MISSED'}"
    )
    print(
        f"target: validation well under eager requests+jsonschema import ({eager:.1f} ms): "
        f"{validate:.1f} ms -> {'met' if validate < eager else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
