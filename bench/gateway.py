#!/usr/bin/env python3
"""Serving gateway benchmarks (scripts/serve_gateway.py as a real subprocess); prints tables.

Section 1, overhead: the same small-request stream (keep-alive, one request at a time) sent
straight to one replica and through the gateway, interleaved in one run: added p50/p99.
Then requests/s through one gateway from concurrent keep-alive clients, beside the same
load sent direct.

Section 2, policies: 4 replicas of unequal speed that serve one request at a time (as GPUs
do) and report their queue at /metrics in vLLM's format; closed-loop clients through one
gateway, then through two uncoordinated gateways sharing the replicas: p50/p95 and each
replica's share for round_robin, least_inflight and queue_aware.

Section 3, streams: 256 concurrent SSE streams held open through one gateway: errors, and the
gateway's resident memory (VmRSS now, VmHWM peak).

The replicas are small aiohttp servers in a child process (this script with --upstream), so
they are fast enough not to be what is measured. Everything shares this machine's cores
(the load generator too): compare rows of one run, not runs of different days.

    python bench/gateway.py [--requests N] [--seconds S] [--clients N] [--policy-requests N] [--streams N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import percentile, print_markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "scripts"
# Per-request service time of the four "GPU" replicas (seconds): one fast, three slower.
GPU_SECONDS = (0.01, 0.03, 0.03, 0.06)
# Batching replicas (the vLLM case): equal GPUs, each request 50 ms, up to 16 at once, each
# 5 % slower per other request in the batch: ten at once take 1.45x one alone.
BATCH_SECONDS, BATCH_SIZE, BATCH_SLOWDOWN = 0.05, 16, 0.05
POLICIES = ("round_robin", "least_inflight", "queue_aware")
# Load reports are polled this often in the policy section: a GPU request takes 10-60 ms.
POLICY_INTERVAL = 0.05
# Ten clients on four batching replicas: about what the new-user trial ran (10 curl loops).
BATCH_CLIENTS = 10
STREAM_EVENTS, STREAM_GAP_SECONDS = 20, 0.1
# Any single wait longer than this is a failure, not a slow answer.
WAIT_LIMIT_SECONDS = 30.0


# ---- the replicas (child process) ----------------------------------------------------------


def upstream_main(gpus: int) -> None:
    """Serve: one plain replica (/small, /stream), `gpus` one-at-a-time replicas and `gpus`
    batching ones; print their URLs."""
    from aiohttp import web

    async def small(request):
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def stream(request):
        events = int(request.query.get("n", STREAM_EVENTS))
        gap = float(request.query.get("gap", STREAM_GAP_SECONDS))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(events):
            await asyncio.sleep(gap)
            await response.write(f"data: {index}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    def gpu_app(seconds: float, batch: int = 1):
        """One request at a time (batch 1), or a batching engine like vLLM: up to `batch` at
        once, each slowed by BATCH_SLOWDOWN per other request in the batch."""
        slot = asyncio.Semaphore(batch)
        load = {"running": 0, "waiting": 0}

        async def work(request):
            await request.read()
            load["waiting"] += 1
            async with slot:
                load["waiting"] -= 1
                load["running"] += 1
                try:
                    await asyncio.sleep(seconds * (1 + BATCH_SLOWDOWN * (load["running"] - 1)))
                finally:
                    load["running"] -= 1
            return web.Response(body=b'{"ok":true}', content_type="application/json")

        async def metrics(request):
            text = (f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"m\"}} {load['running']}\n"
                    f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"m\"}} {load['waiting']}\n")
            return web.Response(text=text, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_route("*", "/{tail:.*}", work)
        return app

    async def serve():
        plain = web.Application()
        plain.router.add_get("/small", small)
        plain.router.add_get("/stream", stream)
        urls = []
        apps = [plain] + [gpu_app(GPU_SECONDS[i % len(GPU_SECONDS)]) for i in range(gpus)]
        apps += [gpu_app(BATCH_SECONDS, BATCH_SIZE) for _ in range(gpus)]
        for app in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            host, port = runner.addresses[0][:2]
            urls.append(f"http://{host}:{port}")
        print(json.dumps(urls), flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


# ---- helpers -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def registry_file(urls: list[str], folder: str, name: str) -> str:
    services = [{"container_uuid": f"{'0' * 15}-{index:010x}-{index:08x}", "url": url, "machine_id": f"{index:010x}",
                 "gpu_name": "RTX 4090", "since": "2026-01-01T00:00:00+08:00", "healthy": True}
                for index, url in enumerate(urls)]
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"status": "success", "deployment_uuid": "0" * 15, "generated_at": "2026-01-01T00:00:00+08:00",
                   "services": services}, handle)
    return path


class GatewayProcess:
    def __init__(self, registry: str, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPTS_DIR / "serve_gateway.py"), "--registry", registry, "--listen", "127.0.0.1:0",
             "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        ready = json.loads(self.process.stdout.readline() or "{}")
        if ready.get("status") != "success":
            self.process.kill()
            raise SystemExit(f"gateway did not start: {ready} {self.process.stderr.read()[-2000:]}")
        self.url = ready["url"]

    def cpu_seconds(self) -> float:
        """User + system CPU the gateway process has used so far."""
        with open(f"/proc/{self.process.pid}/stat", encoding="utf-8") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> dict[str, int]:
        found = {}
        with open(f"/proc/{self.process.pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line.split(":")[0]] = int(line.split()[1])
        return found

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


# ---- section 1: overhead -------------------------------------------------------------------


async def overhead(direct_url: str, gateway: "GatewayProcess", requests: int, seconds: float, clients: int):
    gateway_url = gateway.url
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as direct, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as through:
        async def one(session, base):
            started = time.perf_counter()
            async with session.get(base + "/small") as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            return time.perf_counter() - started

        for _ in range(50):  # warm both connections and the gateway
            await one(direct, direct_url)
            await one(through, gateway_url)
        latencies = {"direct": [], "gateway": []}
        for index in range(requests):  # interleaved, so noise hits both alike
            order = (("direct", direct, direct_url), ("gateway", through, gateway_url))
            for name, session, base in (order if index % 2 else order[::-1]):
                latencies[name].append(await one(session, base))

        async def hammer(session, base):
            cpu_before = gateway.cpu_seconds()
            done = errors = 0
            deadline = time.perf_counter() + seconds

            async def worker():
                nonlocal done, errors
                while time.perf_counter() < deadline:
                    try:
                        await one(session, base)
                        done += 1
                    except Exception:
                        errors += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            rate = done / (time.perf_counter() - started)
            return rate, errors, (gateway.cpu_seconds() - cpu_before) / max(1, done)

        throughput = {"direct": await hammer(direct, direct_url), "gateway": await hammer(through, gateway_url)}
    return latencies, throughput


# ---- section 2: policies -------------------------------------------------------------------


async def closed_loop(gateway_urls: list[str], clients_per_gateway: int, requests: int,
                      direct_url: str | None = None, direct_clients: int = 0):
    """Each gateway gets `clients_per_gateway` clients; `requests` in all, as fast as answered.
    With `direct_url`, `direct_clients` more clients load that one replica straight (not
    measured): work the gateway's own in-flight counts cannot see."""
    import aiohttp

    latencies: list[float] = []
    served: dict[str, int] = {}
    errors = 0
    remaining = [requests]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=WAIT_LIMIT_SECONDS)) as session:
        async def client(base):
            nonlocal errors
            while remaining[0] > 0:
                remaining[0] -= 1
                started = time.perf_counter()
                try:
                    async with session.post(base + "/v1/completions", data=b'{"prompt":"x"}') as response:
                        await response.read()
                        by = response.headers.get("X-Served-By", "?")
                        if response.status != 200:
                            errors += 1
                            continue
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                served[by] = served.get(by, 0) + 1

        async def direct_client():
            while remaining[0] > 0:
                try:
                    async with session.post(direct_url + "/v1/completions", data=b"{}") as response:
                        await response.read()
                except Exception:
                    await asyncio.sleep(0.01)

        started = time.perf_counter()
        await asyncio.gather(*(client(base) for base in gateway_urls for _ in range(clients_per_gateway)),
                             *(direct_client() for _ in range(direct_clients if direct_url else 0)))
        wall = time.perf_counter() - started
    return latencies, served, errors, wall


# ---- section 3: streams --------------------------------------------------------------------


async def hold_streams(gateway: GatewayProcess, count: int, events: int, gap: float):
    import aiohttp

    peak = {"VmRSS": 0, "VmHWM": 0}
    complete = errors = 0
    stop_sampling = asyncio.Event()

    async def sample():
        while not stop_sampling.is_set():
            for key, value in gateway.memory_kib().items():
                peak[key] = max(peak[key], value)
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=WAIT_LIMIT_SECONDS)) as session:
        async def one():
            nonlocal complete, errors
            try:
                async with session.get(gateway.url + f"/stream?n={events}&gap={gap}") as response:
                    lines = [line async for line in response.content if line.strip()]
                    if response.status == 200 and len(lines) == events + 1 and lines[-1].strip() == b"data: [DONE]":
                        complete += 1
                    else:
                        errors += 1
            except Exception:
                errors += 1

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        wall = time.perf_counter() - started
        stop_sampling.set()
        await sampler
    return complete, errors, wall, peak


# ---- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path (overhead)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of the throughput run, per path")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive clients (throughput)")
    parser.add_argument("--policy-requests", type=int, default=600, help="requests per policy run")
    parser.add_argument("--policy-clients", type=int, default=6, help="closed-loop clients per gateway (policies)")
    parser.add_argument("--direct-clients", type=int, default=4, help="clients loading one replica straight (policies)")
    parser.add_argument("--streams", type=int, default=256, help="concurrent streams (section 3)")
    parser.add_argument("--scenarios", type=int, default=3, choices=(1, 2, 3),
                        help="policy scenarios to run: 1 gateway, + 2 gateways, + direct clients")
    parser.add_argument("--stream-events", type=int, default=STREAM_EVENTS, help="events per stream (section 3)")
    parser.add_argument("--stream-gap", type=float, default=STREAM_GAP_SECONDS, help="seconds between events")
    parser.add_argument("--upstream", type=int, metavar="GPUS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream is not None:
        upstream_main(args.upstream)
        return 0

    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(len(GPU_SECONDS))],
                                stdout=subprocess.PIPE, text=True)
    gateways: list[GatewayProcess] = []
    try:
        urls = json.loads(upstream.stdout.readline())
        plain, gpus, batching = urls[0], urls[1:1 + len(GPU_SECONDS)], urls[1 + len(GPU_SECONDS):]
        folder = tempfile.mkdtemp(prefix="bench-gateway-")
        print(f"# bench/gateway.py on {os.cpu_count()} cores; replicas and load generator share them")

        gateway = GatewayProcess(registry_file([plain], folder, "plain.json"))
        gateways.append(gateway)
        latencies, throughput = asyncio.run(overhead(plain, gateway, args.requests, args.seconds, args.clients))
        direct, through = latencies["direct"], latencies["gateway"]
        rows = [(name, ms(percentile(values, 0.5)), ms(percentile(values, 0.99)), ms(statistics.mean(values)))
                for name, values in (("direct", direct), ("through gateway", through))]
        rows.append(("added by gateway", ms(percentile(through, 0.5) - percentile(direct, 0.5)),
                     ms(percentile(through, 0.99) - percentile(direct, 0.99)),
                     ms(statistics.mean(through) - statistics.mean(direct))))
        print_markdown_table(f"Overhead: {args.requests} sequential keep-alive GETs per path, interleaved (ms)",
                             ("path", "p50", "p99", "mean"), rows)
        gateway_cpu = throughput["gateway"][2]
        rows = [("direct", f"{throughput['direct'][0]:.0f}", str(throughput["direct"][1]), ""),
                ("through gateway", f"{throughput['gateway'][0]:.0f}", str(throughput["gateway"][1]),
                 f"{gateway_cpu * 1e6:.0f} us/request = {1 / gateway_cpu:.0f} requests/s per core" if gateway_cpu else "")]
        rows.append(("gateway / direct", f"{throughput['gateway'][0] / throughput['direct'][0]:.2f}", "", ""))
        print_markdown_table(f"Throughput: {args.clients} concurrent keep-alive clients, {args.seconds:g} s per path",
                             ("path", "requests/s", "errors", "gateway CPU"), rows)
        print(f"- load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

        complete, errors, wall, peak = asyncio.run(hold_streams(gateway, args.streams, args.stream_events, args.stream_gap))
        print_markdown_table(f"Streams: {args.streams} concurrent SSE streams through one gateway "
                             f"({args.stream_events} events, one per {args.stream_gap:g} s)",
                             ("streams", "complete", "errors", "wall s", "gateway VmRSS peak MB", "VmHWM MB"),
                             [(str(args.streams), str(complete), str(errors), f"{wall:.2f}",
                               f"{peak['VmRSS'] / 1024:.1f}", f"{peak['VmHWM'] / 1024:.1f}")])
        gateway.kill()
        gateways.clear()

        gpu_registry = registry_file(gpus, folder, "gpus.json")
        # registry_file numbers the services from 0 in the order given
        names = {f"{'0' * 15}-{i:010x}-{i:08x}": f"{GPU_SECONDS[i] * 1000:.0f}ms" for i in range(len(gpus))}
        rows = []
        results: dict[tuple[int, str], float] = {}
        scenarios = (("1 gateway", 1, 0), ("2 gateways", 2, 0),
                     ("1 gateway + direct clients", 1, args.direct_clients))[:args.scenarios]
        for label, gateway_count, direct_clients in scenarios:
            for policy in POLICIES:
                extra = ["--policy", policy, "--interval", str(POLICY_INTERVAL)]
                if policy == "queue_aware":
                    extra += ["--load-path", "/metrics"]
                started = [GatewayProcess(gpu_registry, *extra) for _ in range(gateway_count)]
                gateways.extend(started)
                time.sleep(3 * POLICY_INTERVAL)  # first load reports in
                latencies, served, errors, wall = asyncio.run(
                    closed_loop([g.url for g in started], args.policy_clients, args.policy_requests,
                                gpus[0], direct_clients))
                for g in started:
                    g.kill()
                gateways.clear()
                p95 = percentile(latencies, 0.95)
                results[(label, policy)] = p95
                share = " / ".join(f"{names.get(uuid, uuid)}: {served.get(uuid, 0)}" for uuid in names)
                rows.append((label, policy, ms(percentile(latencies, 0.5)), ms(p95), str(errors),
                             f"{len(latencies) / wall:.0f}", share))
        print_markdown_table(f"Policies: 4 one-at-a-time replicas ({', '.join(f'{s * 1000:.0f}' for s in GPU_SECONDS)} ms), "
                             f"{args.policy_clients} closed-loop clients per gateway, {args.policy_requests} requests",
                             ("clients", "policy", "p50 ms", "p95 ms", "errors", "req/s", "served per replica"), rows)
        print(f"- direct clients: {args.direct_clients} more clients send straight to the 10 ms replica (not measured)")
        for label, _, _ in scenarios:
            ratio = results[(label, "queue_aware")] / results[(label, "least_inflight")]
            print(f"- {label}: queue_aware p95 = {ratio:.2f} x least_inflight p95")

        # Batching replicas: a policy that learns "time per request" by dividing by the queue
        # would see the busiest replica as the fastest and pile onto it.
        batch_registry = registry_file(batching, folder, "batching.json")
        rows = []
        for policy in ("least_inflight", "queue_aware"):
            extra = ["--policy", policy, "--interval", str(POLICY_INTERVAL)] + (["--load-path", "/metrics"] if policy == "queue_aware" else [])
            started = [GatewayProcess(batch_registry, *extra)]
            gateways.extend(started)
            time.sleep(3 * POLICY_INTERVAL)
            latencies, served, errors, wall = asyncio.run(
                closed_loop([started[0].url], BATCH_CLIENTS, args.policy_requests))
            started[0].kill()
            gateways.clear()
            counts = sorted(served.values(), reverse=True) + [0] * (len(batching) - len(served))
            rows.append((policy, ms(percentile(latencies, 0.5)), ms(percentile(latencies, 0.95)), str(errors),
                         " / ".join(map(str, counts)), f"{counts[0] / max(sum(counts), 1):.0%}"))
        print_markdown_table(f"Batching replicas: {len(batching)} equal engines ({BATCH_SECONDS * 1000:.0f} ms, up to {BATCH_SIZE} at once), "
                             f"{BATCH_CLIENTS} closed-loop clients, {args.policy_requests} requests",
                             ("policy", "p50 ms", "p95 ms", "errors", "served per replica (most first)", "busiest share"), rows)
    finally:
        for g in gateways:
            g.kill()
        upstream.kill()
        upstream.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
