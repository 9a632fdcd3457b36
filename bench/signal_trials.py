#!/usr/bin/env python3
"""Signal trials: SIGINT/SIGTERM at many moments of a script's life; count what it printed.

Each trial starts `scripts/list_images.py` against a loopback API that accepts and never
answers (so the script is still running whenever the signal comes), sends a signal after a
delay (from interpreter start-up to the wait on the API), optionally a second one 50 ms
later, and sorts the outcome:

  one document, 130    the contract
  no output, signal    the process died before its first line ran (interpreter start-up)
  other                anything else (two documents, a traceback, another exit code)

    python3 bench/signal_trials.py --trials 5
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DELAYS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# A second signal this long after the first: a user pressing Ctrl-C twice.
SECOND_SIGNAL_AFTER_SECONDS = 0.05


def hanging_api() -> str:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}"


def trial(host: str, delay: float, signum: int, twice: bool) -> str:
    env = {**os.environ, "AUTODL_HOST": host, "AUTODL_TOKEN": "bench-token-0123456789", "AUTODL_HTTP_TIMEOUT": "30"}
    child = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "list_images.py"), "--quiet"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    child.send_signal(signum)
    if twice:
        time.sleep(SECOND_SIGNAL_AFTER_SECONDS)
        child.send_signal(signum)
    try:
        out, _err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return "other"
    if not out and child.returncode in (-signum, 1):
        return "no output, signal"
    try:
        document = json.loads(out)
    except ValueError:
        return "other"
    return "one document, 130" if child.returncode == 130 and document.get("error_type") == "interrupted" else "other"


def interpreter_start_seconds(samples: int = 5) -> float:
    """Median time from spawn to the first line of a program: the window no handler covers."""
    times = []
    for _ in range(samples):
        started = time.time()
        out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], capture_output=True, text=True).stdout
        times.append(float(out) - started)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5, help="trials per delay, signal and count (default 5)")
    args = parser.parse_args()
    # A shell's background job starts with SIGINT ignored, and children inherit that: put
    # the default back so a trial's early SIGINT means what it means in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    host = hanging_api()
    outcomes = ("one document, 130", "no output, signal", "other")
    print(f"signal trials: {args.trials} per cell; a second signal {SECOND_SIGNAL_AFTER_SECONDS * 1000:.0f} ms after the first; "
          f"interpreter start-up (spawn to first line) {interpreter_start_seconds():.2f} s on this machine now\n")
    print("| delay (s) | signals | " + " | ".join(outcomes) + " |")
    print("|---|---|" + "---|" * len(outcomes))
    for delay in DELAYS:
        for twice in (False, True):
            counts = collections.Counter(
                trial(host, delay, signum, twice) for signum in (signal.SIGINT, signal.SIGTERM) for _ in range(args.trials))
            label = "two" if twice else "one"
            print(f"| {delay:g} | {label} | " + " | ".join(str(counts[o]) for o in outcomes) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
