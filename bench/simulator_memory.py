#!/usr/bin/env python3
"""Simulator memory under hostile load: resident memory before and after each stress.

Each row starts a fresh simulator in this process and reports the growth of VmRSS (Linux
/proc/self/status) after the stress, plus whether the API still answers; each row is run
--repeat times (a fresh simulator each) and reported as the smallest and largest growth,
because the allocator's reuse of freed memory differs from run to run:

  unauthenticated   N POSTs of 1 MiB with a wrong token (refused before the body is kept)
  authenticated     N POSTs of 1 MiB to a list route (logged as size + first bytes)
  files             N POSTs of 1 MiB to one container's /svc/<uuid>/files (capped per container)
  events            a crash-looping ReplicaSet for many simulated hours (history trimmed)
  advance 1e300     POST /_sim/advance {"seconds": 1e300} (refused), then a listing

    python3 bench/simulator_memory.py            # N = 200, 3 runs a row
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from simulator import Simulator  # noqa: E402

MIB = 1024 * 1024
TEMPLATE = {"gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118, "cpu_num_from": 1, "cpu_num_to": 100,
            "memory_size_from": 1, "memory_size_to": 256, "price_from": 10, "price_to": 9000,
            "image_uuid": "image-db8346e037", "cmd": "sleep infinity"}


def rss_mib() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def create(sim: Simulator, replicas: int = 1) -> str:
    body = {"name": "mem", "deployment_type": "ReplicaSet", "replica_num": replicas, "container_template": TEMPLATE}
    answer = requests.post(sim.url + "/api/v1/dev/deployment", json=body, headers={"Authorization": sim.token}, timeout=10)
    return answer.json()["data"]["deployment_uuid"]


def stress(name: str, action, count: int, repeat: int) -> tuple[str, float, float, bool]:
    """(name, smallest growth, largest growth, whether listings answered after every run)."""
    growths, answered = [], True
    for _ in range(repeat):
        with Simulator(speed=1, seed=1) as sim:
            session = requests.Session()
            before = rss_mib()
            action(sim, session, count)
            growths.append(rss_mib() - before)
            listing = session.post(sim.url + "/api/v1/dev/deployment/list", json={}, headers={"Authorization": sim.token},
                                   timeout=10)
            answered = answered and listing.status_code == 200
    return name, min(growths), max(growths), answered


def unauthenticated(sim, session, count):
    payload = b"x" * MIB
    for _ in range(count):
        session.post(sim.url + "/api/v1/dev/deployment", data=payload, headers={"Authorization": "wrong"}, timeout=10)


def authenticated(sim, session, count):
    payload = b'{"name": "' + b"x" * (MIB - 20) + b'"}'
    for _ in range(count):
        session.post(sim.url + "/api/v1/dev/deployment/list", data=payload, headers={"Authorization": sim.token}, timeout=10)


def files(sim, session, count):
    uuid = create(sim)
    sim.advance(60)
    container = next(c for c in sim.containers(uuid) if c["status"] == "running")
    for index in range(count):
        session.post(f"{sim.url}/svc/{container['uuid']}/files", json={f"/f{index}": "y" * (MIB - 100)}, timeout=10)


def events(sim, session, count):
    uuid = create(sim, replicas=4)
    for _ in range(count):
        sim.advance(60)
        for container in sim.containers(uuid):
            if container["status"] == "running":
                sim.crash_container(container["uuid"])


def huge_advance(sim, session, count):
    session.post(sim.url + "/_sim/advance", json={"seconds": 1e300}, headers={"Authorization": sim.token}, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="requests (or crash cycles) per stress (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh simulators per row (default 3)")
    args = parser.parse_args()
    rows = [stress("unauthenticated 1 MiB POSTs", unauthenticated, args.count, args.repeat),
            stress("authenticated 1 MiB POSTs", authenticated, args.count, args.repeat),
            stress("1 MiB POSTs to one container's /files", files, args.count, args.repeat),
            stress("crash-loop cycles (4 replicas)", events, args.count, args.repeat),
            stress("advance 1e300", huge_advance, 1, args.repeat)]
    print(f"simulator memory, N = {args.count}, {args.repeat} runs a row\n")
    print("| stress | RSS growth (MiB), min–max | listings still answer |")
    print("|---|---|---|")
    for name, smallest, largest, answers in rows:
        print(f"| {name} | {smallest:.1f}–{largest:.1f} | {'yes' if answers else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
