#!/usr/bin/env python3
"""Benchmarks for the local AutoDL simulator; prints one small table per section.

Section 1: requests per second the simulator serves on loopback (GET gpu_stock over a
keep-alive requests.Session), with 1 and 4 client threads. Bounded: a fixed number of
requests, and each run gives up after RUN_TIMEOUT_SECONDS.

    python bench/simulator.py [--requests N]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"
DEFAULT_REQUESTS = 2000
CLIENT_THREADS = (1, 4)
# A run that takes longer than this is reported as incomplete instead of hanging CI.
RUN_TIMEOUT_SECONDS = 60.0
STOCK_PATH = "/api/v1/dev/machine/gpu_stock"


def _client_worker(url: str, token: str, count: int, deadline: float) -> int:
    import requests

    done = 0
    with requests.Session() as session:
        session.headers["Authorization"] = token
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            response = session.get(url + STOCK_PATH, timeout=5)
            response.raise_for_status()
            done += 1
    return done


def throughput_section(total_requests: int) -> list[tuple[str, str, str, str]]:
    from simulator import Simulator

    rows = []
    with Simulator(speed=60) as sim:
        for threads in CLIENT_THREADS:
            per_thread = total_requests // threads
            deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=threads) as pool:
                done = sum(pool.map(lambda _: _client_worker(sim.url, sim.token, per_thread, deadline),
                                    range(threads)))
            elapsed = time.perf_counter() - started
            rows.append((str(threads), str(done), f"{elapsed:.2f}", f"{done / elapsed:.0f}"))
    return rows


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                        help=f"requests per run (default {DEFAULT_REQUESTS})")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    print_table("simulator throughput (GET gpu_stock, loopback, keep-alive)",
                ("client threads", "requests", "seconds", "requests/s"),
                throughput_section(args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
