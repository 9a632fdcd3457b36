#!/usr/bin/env python3
"""Cold start-up cost of every entry script's `--help`, next to a bare interpreter's, in a
fresh virtual environment.

A developer's own interpreter has many site packages (and .pth hooks) that make a bare
start slow and so flatter every ratio; a user's fresh `.venv` does not. By default this
builds one in a temporary directory (`python -m venv` + `pip install -r requirements.txt`,
like the README's first command) and measures with it. Each command runs in a fresh
subprocess N times, interleaved so drift in machine load hits all alike; the table shows
the median, the milliseconds it adds to `python -c pass` in the same venv (a bare start) and
its ratio to it. The added milliseconds are what a user waits for; the ratio moves with
whatever makes the bare start slow or fast on the day.

Target: every entry script's `--help` within 2.5x of a bare start (heavy imports are lazy;
argparse itself is the floor); the closing line names the worst script with both figures.
Offline validation stays under an eager `import requests, jsonschema`.

    python bench/startup.py                  # build a fresh venv, 15 runs per command
    python bench/startup.py --venv .venv     # measure with an existing venv
    python bench/startup.py --python "$(command -v python3)" --runs 1   # no venv (smoke test)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELP_TARGET_RATIO = 2.5
# Building the venv downloads (or finds cached) wheels; a slow index should not hang it.
VENV_BUILD_TIMEOUT_SECONDS = 600


def entry_scripts() -> list[Path]:
    """queue_submit.py and every scripts/*.py that builds a parser (library modules excluded)."""
    candidates = [ROOT / "queue_submit.py", *sorted((ROOT / "scripts").glob("*.py"))]
    return [path for path in candidates if "def build_parser" in path.read_text(encoding="utf-8")]


def commands(python: str) -> list[tuple[str, list[str]]]:
    found = [
        ("python -c pass", [python, "-c", "pass"]),
        ('python -c "import argparse"', [python, "-c", "import argparse"]),
        ('python -c "import requests, jsonschema"', [python, "-c", "import requests, jsonschema"]),
        ("validate_config.py examples/replicaset-service.json",
         [python, "scripts/validate_config.py", "examples/replicaset-service.json"]),
    ]
    for path in entry_scripts():
        found.append((f"{path.relative_to(ROOT)} --help", [python, str(path.relative_to(ROOT)), "--help"]))
    return found


def build_venv(directory: Path) -> str:
    print(f"building a fresh venv in {directory} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=VENV_BUILD_TIMEOUT_SECONDS)
    python = str(directory / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(ROOT / "requirements.txt")],
        timeout=VENV_BUILD_TIMEOUT_SECONDS, capture_output=True, text=True,
    )
    if installed.returncode != 0:  # pip's output only when it matters
        raise SystemExit(f"pip install failed:\n{installed.stdout[-2000:]}{installed.stderr[-2000:]}")
    return python


def time_once(argv: list[str], env: dict[str, str]) -> float | None:
    started = time.perf_counter()
    completed = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    return elapsed if completed.returncode == 0 else None


def measure(python: str, runs: int) -> dict[str, float | None]:
    # No token needed; no user site, bytecode writes or interpreter options from outside.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AUTODL_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", COLUMNS="100")
    todo = commands(python)
    for _label, command in todo:  # warm the page cache and write .pyc files once
        time_once(command, env)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    samples: dict[str, list[float]] = {label: [] for label, _ in todo}
    failed: set[str] = set()
    for _ in range(runs):
        for label, command in todo:
            elapsed = time_once(command, env)
            if elapsed is None:
                failed.add(label)
            else:
                samples[label].append(elapsed)
    return {label: (None if label in failed or not times else statistics.median(times) * 1000)
            for label, times in samples.items()}


def report(python: str, runs: int, medians: dict[str, float | None], note: str = "") -> None:
    bare = medians["python -c pass"] or float("nan")
    width = max(len(label) for label in medians)
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True).stdout.strip()
    print(f"Python {version} {python}{note}  ({runs} runs each, median)")
    print(f"| {'command':<{width}} |    median | + over bare | x bare |")
    print(f"|{'-' * (width + 2)}|-----------|-------------|--------|")
    for label, value in medians.items():
        shown = "failed" if value is None else f"{value:.1f} ms"
        added = "" if value is None else f"{value - bare:+.1f} ms"
        ratio = "" if value is None else f"{value / bare:.2f}"
        print(f"| {label:<{width}} | {shown:>9} | {added:>11} | {ratio:>6} |")

    helps = {label: value for label, value in medians.items() if label.endswith("--help")}
    missed = [label for label, value in helps.items() if value is None or value / bare > HELP_TARGET_RATIO]
    measured = {label: value for label, value in helps.items() if value is not None}
    print()
    if measured:  # one bare start for all, so the slowest is the worst by both figures
        slowest = max(measured, key=measured.get)
        worst = (f"worst {measured[slowest] / bare:.2f}x, {measured[slowest] - bare:+.1f} ms over "
                 f"a bare {bare:.1f} ms ({slowest.removesuffix(' --help')})")
    else:
        worst = "no --help finished"
    print(f"target: every --help within {HELP_TARGET_RATIO:g}x of a bare start: {worst} -> "
          + ("met" if not missed else f"MISSED by {', '.join(missed)}"))
    validate = medians["validate_config.py examples/replicaset-service.json"]
    eager = medians['python -c "import requests, jsonschema"']
    if validate is not None and eager is not None:
        print(f"target: validation under an eager requests+jsonschema import ({eager:.1f} ms): "
              f"{validate:.1f} ms -> {'met' if validate < eager else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, metavar="N", help="runs per command (default 15)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--venv", metavar="DIR", help="measure with this existing venv instead of building one")
    where.add_argument("--python", metavar="PATH", help="measure with this interpreter as it is (no venv)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    if args.python:
        python = args.python
    elif args.venv:
        python = str(Path(args.venv).resolve() / "bin" / "python")
    else:
        with tempfile.TemporaryDirectory(prefix="startup-bench-") as directory:
            python = build_venv(Path(directory) / "venv")
            medians = measure(python, args.runs)
            report(python, args.runs, medians, note=" (fresh venv)")
            return 0
    report(python, args.runs, measure(python, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
