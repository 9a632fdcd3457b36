#!/usr/bin/env python3
"""Benchmarks for the local AutoDL simulator; prints one small table per section.

Section 1: requests per second the simulator serves on loopback (GET gpu_stock over a
keep-alive requests.Session), with 1 and 4 client threads. Bounded: a fixed number of
requests, and each run gives up after RUN_TIMEOUT_SECONDS.

Section 2: queue_submit's reaction time. Background tenants hold every requested GPU, then
let go; we time from that moment to the create request arriving, for several --interval
values. A poller reacts on its next poll, so the expected mean is about interval / 2 plus
one stock call; the maximum is about one interval.

Section 3: the simulator at scale. Rows of 10 / 100 / 1,000 one-replica deployments (up to
--deployments; one of them is scaled 1 -> 2), then rows of one deployment scaled by one
replica_num PUT to 100 / 1,000 / 10,000 replicas (up to --scale-up), each on a fresh
simulator whose cluster is just big enough. Columns: one request's wall time for a list page
and the full listing (deployments, or that deployment's containers), the PUT, the
deployment's detail (the list filtered by its uuid), an advance() that takes every new
container to `running`, and the longest the world lock was held by anyone meanwhile (the
ticker included): what another client may wait behind.

    python3 bench/simulator.py [--requests N] [--trials N] [--deployments N] [--scale-up N]
                               [--section all|throughput|reaction|scale]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "scripts"
DEFAULT_REQUESTS = 2000
CLIENT_THREADS = (1, 4)
# A run that takes longer than this is reported as incomplete instead of hanging CI.
RUN_TIMEOUT_SECONDS = 60.0
STOCK_PATH = "/api/v1/dev/machine/gpu_stock"

REACTION_INTERVALS = (0.1, 0.5, 1.0)
DEFAULT_TRIALS = 3
# Cards stay busy this long (real seconds) so queue_submit is surely polling when they free.
BUSY_REAL_SECONDS = 1.5
# The bench samples the simulator's request log this often: well under the smallest interval.
SAMPLE_SECONDS = 0.002
CREATE = ("POST", "/api/v1/dev/deployment")

DEFAULT_DEPLOYMENTS = 1000
DEFAULT_SCALE_UP = 10_000
DEPLOYMENT_LADDER = (10, 100, 1000)
CONTAINER_LADDER = (100, 1000, 10_000)
GPUS_PER_MACHINE = 8
# The largest page the simulator serves (its MAX_PAGE_SIZE), so a full listing takes few requests.
FULL_PAGE_SIZE = 1000
# Reads are repeated and their median reported: one sample on a shared machine is noise.
READ_REPEATS = 5
# Simulated seconds that take a new container through every start-up phase to `running`.
START_UP_SECONDS = 30
SCALE_TEMPLATE = {"gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118, "cpu_num_from": 1, "cpu_num_to": 100,
                  "memory_size_from": 1, "memory_size_to": 256, "price_from": 10, "price_to": 9000,
                  "image_uuid": "image-db8346e037", "cmd": "sleep infinity"}
SCALE_CREATE = {"name": "scale", "deployment_type": "ReplicaSet", "replica_num": 1,
                "container_template": SCALE_TEMPLATE}


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


def _reaction_once(interval: float, config_path: str) -> float | None:
    """Seconds from the cards freeing to the create arriving, or None if it never came."""
    from simulator import Simulator

    speed = 60.0
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    with Simulator(speed=speed) as sim:
        for gpu_name in config["container_template"]["gpu_name_set"]:
            sim.occupy(gpu_name, 10_000, seconds=BUSY_REAL_SECONDS * speed)
        freed_at = time.monotonic() + BUSY_REAL_SECONDS
        env = {**os.environ, "AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token}
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "queue_submit.py"), config_path, "--interval", str(interval), "--quiet"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = freed_at + interval + RUN_TIMEOUT_SECONDS / 4
            while time.monotonic() < deadline:
                if any(entry[:2] == CREATE for entry in sim.request_log()):
                    return time.monotonic() - freed_at
                time.sleep(SAMPLE_SECONDS)
            return None
        finally:
            process.wait(timeout=RUN_TIMEOUT_SECONDS)


def reaction_section(trials: int) -> list[tuple[str, ...]]:
    config_path = str(ROOT / "examples" / "replicaset-service.json")
    rows = []
    for interval in REACTION_INTERVALS:
        samples = [s for s in (_reaction_once(interval, config_path) for _ in range(trials)) if s is not None]
        if not samples:
            rows.append((f"{interval:g}", "0", "-", "-", "-"))
            continue
        rows.append((
            f"{interval:g}", str(len(samples)),
            f"{statistics.mean(samples):.3f}", f"{max(samples):.3f}",
            f"{statistics.mean(samples) / interval:.2f}",
        ))
    return rows


class HoldTimer:
    """Stands in for the world's RLock and records the longest outermost hold (wall seconds)."""

    def __init__(self, lock) -> None:
        self._lock = lock
        self._depth = 0  # only the owning thread changes it
        self._since = 0.0
        self.longest = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        acquired = self._lock.acquire(blocking, timeout)
        if acquired:
            self._depth += 1
            if self._depth == 1:
                self._since = time.perf_counter()
        return acquired

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.longest = max(self.longest, time.perf_counter() - self._since)
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _ladder(maximum: int, ladder: tuple[int, ...]) -> list[int]:
    """The ladder's rungs below `maximum`, then `maximum` itself."""
    return [rung for rung in ladder if rung < maximum] + [maximum]


def _scale_cluster(gpus: int) -> dict:
    """A cluster of 8-card RTX 4090 hosts with room for `gpus` one-card containers."""
    machines = [{"machine_id": f"{index:010x}", "region": "westDC2", "gpu_name": "RTX 4090",
                 "gpu_num": GPUS_PER_MACHINE, "cpu_num": 96, "memory_gb": 480, "price": 1980, "max_cuda": 124}
                for index in range(1, gpus // GPUS_PER_MACHINE + 2)]
    return {"machines": machines, "images": [{"image_uuid": "image-db8346e037", "name": "llm-serve-vllm"}]}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


class _Client:
    """Timed calls to one simulator's API over a keep-alive session."""

    def __init__(self, session, url: str) -> None:
        self.session, self.base = session, url + "/api/v1/dev/deployment"

    def call(self, method: str, path: str, body: dict) -> tuple[float, dict]:
        started = time.perf_counter()
        answer = self.session.request(method, self.base + path, json=body, timeout=RUN_TIMEOUT_SECONDS)
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        document = answer.json()
        if document["code"] != "Success":
            raise RuntimeError(f"{method} {path}: {document}")
        return elapsed, document["data"]

    def median(self, path: str, body: dict) -> float:
        """The median wall time of READ_REPEATS identical reads."""
        return statistics.median(self.call("POST", path, body)[0] for _ in range(READ_REPEATS))

    def all_pages(self, path: str, body: dict) -> float:
        total, index = 0.0, 1
        while True:
            elapsed, data = self.call("POST", path, {**body, "page_index": index, "page_size": FULL_PAGE_SIZE})
            total += elapsed
            if index >= data["max_page"]:
                return total
            index += 1


def _scale_row(deployments: int, replicas: int, list_containers: bool) -> tuple[str, ...]:
    """`deployments` one-replica deployments, the first scaled to `replicas` by a PUT; the
    listing is of deployments, or with `list_containers` of that first one's containers."""
    import requests

    from simulator import Simulator

    sim = Simulator(speed=1, seed=1, cluster=_scale_cluster(max(deployments, replicas) + 1))
    sim.world.lock = timer = HoldTimer(sim.world.lock)
    with sim, requests.Session() as session:
        session.headers["Authorization"] = sim.token
        client = _Client(session, sim.url)
        uuids = [client.call("POST", "", SCALE_CREATE)[1]["deployment_uuid"] for _ in range(deployments)]
        timer.longest = 0.0
        put, _ = client.call("PUT", "/replica_num", {"deployment_uuid": uuids[0], "replica_num": replicas})
        started = time.perf_counter()
        sim.advance(START_UP_SECONDS)
        advance = time.perf_counter() - started
        if list_containers:
            path, body = "/container/list", {"deployment_uuid": uuids[0]}
        else:
            path, body = "/list", {}
        page = client.median(path, body)
        full = statistics.median(client.all_pages(path, body) for _ in range(READ_REPEATS))
        detail = client.median("/list", {"deployment_uuid": uuids[0]})
        return (f"{deployments:,}", f"{replicas:,}", _ms(page), _ms(full), _ms(put),
                _ms(detail), _ms(advance), _ms(timer.longest))


def scale_section(max_deployments: int, max_containers: int) -> list[tuple[str, ...]]:
    rows = [_scale_row(count, 2, False) for count in _ladder(max_deployments, DEPLOYMENT_LADDER)]
    rows += [_scale_row(1, count, True) for count in _ladder(max_containers, CONTAINER_LADDER)]
    return rows


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                        help=f"reaction-time trials per interval (default {DEFAULT_TRIALS})")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                        help=f"requests per run (default {DEFAULT_REQUESTS})")
    parser.add_argument("--deployments", type=int, default=DEFAULT_DEPLOYMENTS,
                        help=f"deployments listed in the scale section (default {DEFAULT_DEPLOYMENTS})")
    parser.add_argument("--scale-up", type=int, default=DEFAULT_SCALE_UP,
                        help=f"containers one replica_num PUT starts in the scale section (default {DEFAULT_SCALE_UP})")
    parser.add_argument("--section", choices=("all", "throughput", "reaction", "scale"), default="all",
                        help="run one section only (default: all)")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.deployments < 1 or args.scale_up < 1:
        parser.error("--deployments and --scale-up must be at least 1")
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    if args.section in ("all", "throughput"):
        print_table("simulator throughput (GET gpu_stock, loopback, keep-alive)",
                    ("client threads", "requests", "seconds", "requests/s"),
                    throughput_section(args.requests))
    if args.section in ("all", "reaction"):
        print_table("queue_submit reaction: cards free -> create arrives (real seconds)",
                    ("--interval", "trials", "mean", "max", "mean/interval"),
                    reaction_section(max(1, args.trials)))
    if args.section in ("all", "scale"):
        print_table("simulator at scale: one request's wall time (ms); the longest world-lock hold",
                    ("deployments", "replicas", "list page", "full listing", "PUT replica_num",
                     "detail", "advance 30 s", "lock hold max"),
                    scale_section(args.deployments, args.scale_up))
    return 0


if __name__ == "__main__":
    sys.exit(main())
