#!/usr/bin/env python3
"""Serving gateway benchmarks: serve_gateway.py beside HAProxy and nginx, in one run; prints tables.

Section anchors: wrk against a fast static upstream (HAProxy answering a small JSON body
itself on REPLICAS ports, so the upstream is never the limit): direct to one replica,
serve_gateway.py, HAProxy with the config serving/haproxy.py renders (haproxy_config.py's,
fed through the runtime API as discover_services.py does) and nginx least_conn when installed.
requests/s, p50/p99 added over direct, CPU per request of the proxy process (/proc), at
concurrency 1/16/64; each figure the median of alternating rounds; ratios to HAProxy.

Section streams: STREAMS simultaneous SSE streams (replicas that stream tokens after a short
prefill): time to first token direct and through each proxy, added over direct; the
gateway's peak memory.

Section scaling: gateway requests/s (wrk, 16 connections) with 3 / 30 / 300 / 3,000 replicas
in the registry (the entries share the static upstream's ports: only the registry grows).

Section policies: 4 replicas of unequal speed that serve one request at a time (as GPUs
do) and report their queue at /metrics in vLLM's format; closed-loop clients through one
gateway, then two uncoordinated gateways: p50/p95 and each replica's share for
round_robin, least_inflight and queue_aware; then batching replicas.

Before/after in the same run: the gateway runs twice when uvloop is installed, once with
uvloop hidden from it ("no uvloop"), and `--baseline REF` adds the gateway of that commit
(extracted with git archive) to every gateway table. Everything shares this machine's cores
(wrk too): compare rows of one run, not runs of different days.

    python3 bench/gateway.py [--quick] [--baseline REF] [--sections anchors,streams,scaling,policies]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from servers import (cpu_seconds, find_binary, free_port, least_conn_proxy_body, listening, start_haproxy, start_nginx, stop,
                     wait_for, wrk)
from tables import percentile, print_markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS_DIR))  # serving.haproxy renders HAProxy's config

DEPLOYMENT = "0" * 15
REPLICAS = 4
CONCURRENCIES = (1, 16, 64)
SCALING = (3, 30, 300, 3000)
SMALL_BODY = '{"ok":true}'
# The streamed answer: first token after a short prefill, then tokens at a model's pace.
PREFILL_SECONDS, TOKENS, TOKEN_GAP_SECONDS = 0.05, 10, 0.02
STREAMS = 256
# One-token streams sent one after another, per path and round (the "one stream alone" column).
ALONE_STREAMS = 10
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
# Any single wait longer than this is a failure, not a slow answer.
WAIT_LIMIT_SECONDS = 30.0


def run_async(coroutine):
    """The bench's own Python (replicas, stream client) on uvloop when installed: less of the
    shared cores for them, less noise in what the proxies are measured by."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# ---- the Python replicas (child process) ------------------------------------------------


def upstream_main(plain: int, gpus: int) -> None:
    """Serve `plain` streaming replicas (/stream, /small, /health), `gpus` one-at-a-time
    replicas and `gpus` batching ones; print their URLs."""
    from aiohttp import web

    async def small(request):
        return web.Response(body=SMALL_BODY.encode(), content_type="application/json")

    async def stream(request):
        tokens = int(request.query.get("n", TOKENS))
        gap = float(request.query.get("gap", TOKEN_GAP_SECONDS))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await asyncio.sleep(float(request.query.get("first", PREFILL_SECONDS)))
        for index in range(tokens):
            if index:
                await asyncio.sleep(gap)
            await response.write(f"data: {{\"token\": {index}}}\n\n".encode())
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

    def plain_app():
        app = web.Application()
        app.router.add_get("/small", small)
        app.router.add_get("/health", small)
        app.router.add_get("/stream", stream)
        return app

    async def serve():
        urls = []
        apps = [plain_app() for _ in range(plain)] + [gpu_app(GPU_SECONDS[i % len(GPU_SECONDS)]) for i in range(gpus)]
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

    run_async(serve())


# ---- the proxies -----------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def signed_ms(seconds: float) -> str:
    return f"{seconds * 1000:+.2f}"


def services(urls: list[str], count: Optional[int] = None) -> list[dict]:
    """`count` registry items (default one per URL) over `urls` in turn."""
    count = len(urls) if count is None else count
    return [{"container_uuid": f"{DEPLOYMENT}-{index % 16 ** 10:010x}-{index:08x}", "url": urls[index % len(urls)],
             "machine_id": f"{index % 16 ** 10:010x}", "gpu_name": "RTX 4090", "since": "2026-01-01T00:00:00+08:00",
             "healthy": True} for index in range(count)]


def registry_file(folder: str, name: str, items: list[dict]) -> str:
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"status": "success", "deployment_uuid": DEPLOYMENT, "generated_at": "2026-01-01T00:00:00+08:00",
                   "services": items}, handle)
    return path


@dataclass
class Proxy:
    name: str
    url: str
    process: subprocess.Popen
    kind: str  # gateway / haproxy / nginx
    stop_with: Callable[[subprocess.Popen], None] = field(default=stop)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def memory_mib(self) -> float:
        """Peak resident memory (VmHWM)."""
        with open(f"/proc/{self.process.pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


@dataclass(frozen=True)
class GatewayBuild:
    """One gateway to measure: this tree, or a baseline commit; optionally without uvloop."""

    label: str
    root: Path
    hide_uvloop: bool = False


def start_gateway(build: GatewayBuild, registry: str, folder: str, *extra: str) -> Proxy:
    env = dict(os.environ)
    if build.hide_uvloop:
        # A uvloop module that fails to import: the gateway runs as where uvloop is not installed.
        blocker = Path(folder) / "no-uvloop"
        blocker.mkdir(exist_ok=True)
        (blocker / "uvloop.py").write_text("raise ImportError('hidden by bench/gateway.py')\n", encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, str(build.root / "scripts" / "serve_gateway.py"), "--registry", registry, "--listen", "127.0.0.1:0",
         "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=build.root, env=env)
    ready = json.loads(process.stdout.readline() or "{}")
    if ready.get("status") != "success":
        process.kill()
        raise SystemExit(f"gateway {build.label} did not start: {ready} {process.stderr.read()[-2000:]}")
    return Proxy(build.label, ready["url"], process, "gateway", stop_with=lambda p: (p.kill(), p.communicate()))


def start_fed_haproxy(directory: Path, name: str, items: list[dict]) -> Proxy:
    """HAProxy with our rendered config and default server options, its backend fed from a
    registry document through the runtime API (BackendSync, what the watcher runs)."""
    from autodl_esd.serving import haproxy

    process, url, socket_path = start_haproxy(directory, DEPLOYMENT, haproxy.DEFAULT_SERVER_OPTIONS, name)
    api = haproxy.RuntimeApi(socket_path)
    haproxy.BackendSync(api, "replicas", DEPLOYMENT).sync({"deployment_uuid": DEPLOYMENT, "services": items})
    wait_for(lambda: [row["status"] for row in api.stats("replicas")] == ["UP"] * len(items), "HAProxy's health checks to pass")
    return Proxy("HAProxy (our config)", url, process, "haproxy")


def start_static_upstream(directory: Path, ports: list[int]) -> subprocess.Popen:
    """The fast replicas: one HAProxy process answering SMALL_BODY itself on every port."""
    binds = "\n".join(f"    bind 127.0.0.1:{port}" for port in ports)
    config = f"""global
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend replicas
{binds}
    http-request return status 200 content-type application/json string '{SMALL_BODY}'
"""
    path = directory / "static-upstream.cfg"
    path.write_text(config, encoding="utf-8")
    process = subprocess.Popen([find_binary("haproxy"), "-f", str(path), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in ports:
            wait_for(lambda: listening(port), f"the static upstream on port {port}")
    except SystemExit:
        stop(process)
        raise
    return process


def start_proxies(directory: Path, folder: str, label: str, upstream_urls: list[str], builds: list[GatewayBuild],
                  proxies: list[Proxy]) -> None:
    """Every proxy of a section in front of the same replicas (the gateway builds, HAProxy,
    nginx), each added to `proxies` as it starts, so the caller stops what did start."""
    items = services(upstream_urls)
    registry = registry_file(folder, f"{label}.json", items)
    for build in builds:
        proxies.append(start_gateway(build, registry, folder))
    proxies.append(start_fed_haproxy(directory, f"haproxy-{label}", items))
    if find_binary("nginx"):
        port = free_port()
        addresses = [urlsplit(url).netloc for url in upstream_urls]
        process = start_nginx(directory, label, least_conn_proxy_body(port, addresses), [port], workers=2)
        proxies.append(Proxy("nginx least_conn", f"http://127.0.0.1:{port}", process, "nginx"))


def stop_all(proxies: list[Proxy]) -> None:
    for proxy in proxies:
        proxy.stop_with(proxy.process)


# ---- section: anchors (wrk) ------------------------------------------------------------


def rotated(items: list, offset: int) -> list:
    offset %= len(items)
    return items[offset:] + items[:offset]


def measure_wrk(targets: list[tuple[str, str, Optional[Proxy]]], path: str, connections: int, seconds: int,
                rounds: int) -> dict[str, dict[str, float]]:
    """Median per target over `rounds` alternating rounds: rps, p50, p99, CPU per request, errors."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
    for round_index in range(rounds):
        for name, url, proxy in rotated(targets, round_index):
            before = proxy.cpu() if proxy else 0.0
            result = wrk(url + path, connections, seconds)
            result["cpu"] = (proxy.cpu() - before) / max(1, result["requests"]) if proxy else float("nan")
            samples[name].append(result)
    return {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for name, runs in samples.items()}


def anchors(directory: Path, folder: str, builds: list[GatewayBuild], concurrencies: tuple[int, ...], seconds: int,
            rounds: int, warm: bool) -> None:
    ports = [free_port() for _ in range(REPLICAS)]
    upstream = start_static_upstream(directory, ports)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    proxies: list[Proxy] = []
    try:
        start_proxies(directory, folder, "anchors", urls, builds, proxies)
        targets = [("direct", urls[0], None)] + [(p.name, p.url, p) for p in proxies]
        for name, url, _ in targets if warm else ():  # warm: connection pools, first requests
            wrk(url + "/small", 16, 1)
        rows = []
        for connections in concurrencies:
            medians = measure_wrk(targets, "/small", connections, seconds, rounds)
            direct, anchor = medians["direct"], medians["HAProxy (our config)"]
            for name, _, proxy in targets:
                m = medians[name]
                rows.append((str(connections), name, f"{m['rps']:,.0f}", f"{m['rps'] / anchor['rps']:.2f}",
                             "" if proxy is None else signed_ms(m["p50"] - direct["p50"]),
                             "" if proxy is None else signed_ms(m["p99"] - direct["p99"]),
                             "" if proxy is None else f"{m['cpu'] * 1e6:.0f}",
                             "" if proxy is None else f"{m['cpu'] / anchor['cpu']:.1f}",
                             str(int(m["errors"]))))
        print_markdown_table(f"Anchors: wrk, {REPLICAS} static replicas, {seconds} s per run, median of {rounds} alternating "
                             f"round(s); added latency over direct (ms), CPU of the proxy process per request (µs)",
                             ("connections", "path", "req/s", "× HAProxy", "added p50", "added p99", "CPU µs/req",
                              "CPU × HAProxy", "errors"), rows)
        print("- HAProxy runs with its default threads (one per core), nginx with 2 workers, the gateway is one"
              " Python process (one core at most)")
        if not find_binary("nginx"):
            print("- nginx is not installed (apt-get install nginx-light): its row is skipped")
    finally:
        stop_all(proxies)
        stop(upstream)


# ---- section: streams (time to first token) --------------------------------------------


async def first_tokens(url: str, path: str, count: int) -> tuple[list[float], int]:
    """Open `count` connections, send every request at once, and time each first `data:` line;
    then read every stream to its end. (seconds to first token, streams that failed)"""
    parts = urlsplit(url)
    request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
               "Connection: close\r\n\r\n").encode()
    connections = await asyncio.gather(*(asyncio.open_connection(parts.hostname, parts.port) for _ in range(count)))
    go = asyncio.Event()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Optional[float]:
        await go.wait()
        started = time.perf_counter()
        writer.write(request)
        seen = b""
        try:
            while b"data:" not in seen:
                chunk = await asyncio.wait_for(reader.read(65536), WAIT_LIMIT_SECONDS)
                if not chunk:
                    return None
                seen += chunk
            first = time.perf_counter() - started
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), WAIT_LIMIT_SECONDS)
                if not chunk:
                    break
                seen += chunk
            return first if b"data: [DONE]" in seen else None
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(reader, writer)) for reader, writer in connections]
    await asyncio.sleep(0)
    go.set()
    results = await asyncio.gather(*tasks)
    return [r for r in results if r is not None], sum(1 for r in results if r is None)


def streams(directory: Path, folder: str, builds: list[GatewayBuild], stream_urls: list[str], count: int, rounds: int,
            warm: bool) -> None:
    proxies: list[Proxy] = []
    path = "/stream"
    try:
        start_proxies(directory, folder, "streams", stream_urls, builds, proxies)
        targets = [("direct", stream_urls[0], None)] + [(p.name, p.url, p) for p in proxies]
        for _, url, _ in targets if warm else ():  # warm: the proxies' connections to the replicas
            run_async(first_tokens(url, path, count))
        samples: dict[str, list[tuple[float, float, int, float]]] = {name: [] for name, _, _ in targets}
        for round_index in range(rounds):
            for name, url, proxy in rotated(targets, round_index):
                before = proxy.cpu() if proxy else 0.0
                firsts, failed = run_async(first_tokens(url, path, count))
                cpu = (proxy.cpu() - before) / count if proxy else float("nan")
                samples[name].append((percentile(firsts, 0.5), percentile(firsts, 0.99), failed, cpu))
        # One stream at a time (a one-token answer): what the path adds when nothing competes,
        # where a token held back (Nagle, a buffer waiting to fill) would show as tens of ms.
        alone: dict[str, list[float]] = {name: [] for name, _, _ in targets}
        for round_index in range(rounds):
            for name, url, _ in rotated(targets, round_index):
                for _ in range(ALONE_STREAMS):
                    firsts, _failed = run_async(first_tokens(url, path + "?n=1", 1))
                    alone[name].extend(firsts)
        medians = {name: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs), max(s[2] for s in runs),
                          statistics.median(s[3] for s in runs)) for name, runs in samples.items()}
        direct = medians["direct"]
        direct_alone = percentile(alone["direct"], 0.5)
        rows = []
        for name, _, proxy in targets:
            p50, p99, failed, cpu = medians[name]
            rows.append((name, ms(p50), ms(p99), "" if proxy is None else signed_ms(p50 - direct[0]),
                         "" if proxy is None else signed_ms(p99 - direct[1]),
                         "" if proxy is None else signed_ms(percentile(alone[name], 0.5) - direct_alone),
                         "" if proxy is None else f"{cpu * 1e6:.0f}", "" if proxy is None else f"{cpu * count * 1000:.1f}",
                         str(failed), f"{proxy.memory_mib():.1f}" if proxy is not None and proxy.kind == "gateway" else ""))
        print_markdown_table(f"Streams: {count} simultaneous SSE streams (first token after {PREFILL_SECONDS * 1000:.0f} ms, "
                             f"{TOKENS} tokens {TOKEN_GAP_SECONDS * 1000:.0f} ms apart), {REPLICAS} replicas; time to first "
                             f"token (ms), median of {rounds} alternating round(s)",
                             ("path", "TTFT p50", "TTFT p99", "added p50", "added p99", "added, one stream alone", "CPU µs/stream",
                              f"CPU ms for {count}", "failed", "peak RSS MiB"), rows)
        print(f"- CPU ms for {count}: the proxy's CPU for the whole burst (every request and every token relayed), "
              "a bound on what the proxy's own work adds to any stream's first token when it has a core to itself")
    finally:
        stop_all(proxies)


# ---- section: selection scaling --------------------------------------------------------


def scaling(directory: Path, folder: str, builds: list[GatewayBuild], sizes: tuple[int, ...], seconds: int, rounds: int,
            warm: bool) -> None:
    """Every (build, registry size) gateway runs at once, measured in alternating rounds."""
    ports = [free_port() for _ in range(REPLICAS)]
    upstream = start_static_upstream(directory, ports)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    gateways: list[Proxy] = []
    try:
        for size in sizes:
            registry = registry_file(folder, f"scaling-{size}.json", services(urls, size))
            for build in builds:
                gateway = start_gateway(build, registry, folder)
                gateway.name = f"{build.label} @ {size}"
                gateways.append(gateway)
        targets = [(g.name, g.url, g) for g in gateways]
        for _, url, _ in targets if warm else ():
            wrk(url + "/small", 16, 1)
        results = {name: median["rps"] for name, median in measure_wrk(targets, "/small", 16, seconds, rounds).items()}
        rows = []
        for size in sizes:
            row = [f"{size:,}"]
            for build in builds:
                rps = results[f"{build.label} @ {size}"]
                row += [f"{rps:,.0f}", f"{rps / results[f'{build.label} @ {sizes[0]}']:.2f}"]
            rows.append(tuple(row))
        header = ["replicas in the registry"]
        for build in builds:
            header += [f"{build.label} req/s", f"× at {sizes[0]}"]
        print_markdown_table(f"Selection scaling: gateway req/s (wrk, 16 connections, {seconds} s, median of {rounds} alternating "
                             f"round(s)) by registry size; the entries share {REPLICAS} static ports", tuple(header), rows)
    finally:
        stop_all(gateways)
        stop(upstream)


# ---- section: policies -----------------------------------------------------------------


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


def run_policy(build: GatewayBuild, registry: str, folder: str, policy: str, gateway_count: int, clients: int, requests: int,
               direct_url: Optional[str] = None, direct_clients: int = 0):
    extra = ["--policy", policy, "--interval", str(POLICY_INTERVAL)] + (["--load-path", "/metrics"] if policy == "queue_aware" else [])
    started: list[Proxy] = []
    try:
        for _ in range(gateway_count):
            started.append(start_gateway(build, registry, folder, *extra))
        time.sleep(3 * POLICY_INTERVAL)  # first load reports in
        return asyncio.run(closed_loop([g.url for g in started], clients, requests, direct_url, direct_clients))
    finally:
        stop_all(started)


def policies(folder: str, build: GatewayBuild, gpus: list[str], batching: list[str], args) -> None:
    items = services(gpus)
    gpu_registry = registry_file(folder, "gpus.json", items)
    names = {item["container_uuid"]: f"{GPU_SECONDS[i] * 1000:.0f}ms" for i, item in enumerate(items)}
    rows = []
    results: dict[tuple[str, str], float] = {}
    scenarios = (("1 gateway", 1, 0), ("2 gateways", 2, 0),
                 ("1 gateway + direct clients", 1, args.direct_clients))[:args.scenarios]
    for label, gateway_count, direct_clients in scenarios:
        for policy in POLICIES:
            latencies, served, errors, wall = run_policy(build, gpu_registry, folder, policy, gateway_count, args.policy_clients,
                                                         args.policy_requests, gpus[0], direct_clients)
            p95 = percentile(latencies, 0.95)
            results[(label, policy)] = p95
            share = " / ".join(f"{names[uuid]}: {served.get(uuid, 0)}" for uuid in names)
            rows.append((label, policy, ms(percentile(latencies, 0.5)), ms(p95), str(errors), f"{len(latencies) / wall:.0f}", share))
    print_markdown_table(f"Policies: 4 one-at-a-time replicas ({', '.join(f'{s * 1000:.0f}' for s in GPU_SECONDS)} ms), "
                         f"{args.policy_clients} closed-loop clients per gateway, {args.policy_requests} requests",
                         ("clients", "policy", "p50 ms", "p95 ms", "errors", "req/s", "served per replica"), rows)
    print(f"- direct clients: {args.direct_clients} more clients send straight to the 10 ms replica (not measured)")
    for label, _, _ in scenarios:
        print(f"- {label}: queue_aware p95 = {results[(label, 'queue_aware')] / results[(label, 'least_inflight')]:.2f} x least_inflight p95")

    # Batching replicas: a policy that learns "time per request" by dividing by the queue
    # would see the busiest replica as the fastest and pile onto it.
    batch_registry = registry_file(folder, "batching.json", services(batching))
    rows = []
    for policy in ("least_inflight", "queue_aware"):
        latencies, served, errors, wall = run_policy(build, batch_registry, folder, policy, 1, BATCH_CLIENTS, args.policy_requests)
        counts = sorted(served.values(), reverse=True) + [0] * (len(batching) - len(served))
        rows.append((policy, ms(percentile(latencies, 0.5)), ms(percentile(latencies, 0.95)), str(errors),
                     " / ".join(map(str, counts)), f"{counts[0] / max(sum(counts), 1):.0%}"))
    print_markdown_table(f"Batching replicas: {len(batching)} equal engines ({BATCH_SECONDS * 1000:.0f} ms, up to {BATCH_SIZE} at once), "
                         f"{BATCH_CLIENTS} closed-loop clients, {args.policy_requests} requests",
                         ("policy", "p50 ms", "p95 ms", "errors", "served per replica (most first)", "busiest share"), rows)


# ---- main ------------------------------------------------------------------------------


def baseline_tree(ref: str, folder: str) -> Path:
    """The repository at `ref`, extracted (git archive) beside the run: the 'before' gateway."""
    target = Path(folder) / f"baseline-{ref.replace('/', '_')}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {ref}: git archive failed: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one round, 2 s wrk runs, no warm-up runs, 64 streams, registry sizes 3 and 300")
    parser.add_argument("--sections", default="anchors,streams,scaling,policies",
                        help="comma-separated: anchors, streams, scaling, policies")
    parser.add_argument("--baseline", metavar="REF", help="also measure the gateway of this git commit (the 'before')")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 5; --quick 2)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per figure (default 3; --quick 1)")
    parser.add_argument("--streams", type=int, help=f"simultaneous streams (default {STREAMS}; --quick 64)")
    parser.add_argument("--scaling", help="registry sizes, comma-separated (default 3,30,300,3000; --quick 3,300)")
    parser.add_argument("--connections", default=",".join(map(str, CONCURRENCIES)),
                        help="wrk connections of the anchors, comma-separated (default 1,16,64)")
    parser.add_argument("--policy-requests", type=int, default=600, help="requests per policy run")
    parser.add_argument("--policy-clients", type=int, default=6, help="closed-loop clients per gateway (policies)")
    parser.add_argument("--direct-clients", type=int, default=4, help="clients loading one replica straight (policies)")
    parser.add_argument("--scenarios", type=int, default=3, choices=(1, 2, 3),
                        help="policy scenarios to run: 1 gateway, + 2 gateways, + direct clients")
    parser.add_argument("--upstream", type=int, nargs=2, metavar=("PLAIN", "GPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream is not None:
        upstream_main(*args.upstream)
        return 0
    seconds = args.seconds or (2 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 3)
    count = args.streams or (64 if args.quick else STREAMS)
    sizes = tuple(int(n) for n in args.scaling.split(",")) if args.scaling else ((3, 300) if args.quick else SCALING)
    sections = set(args.sections.split(","))
    unknown = sections - {"anchors", "streams", "scaling", "policies"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if sections & {"anchors", "streams", "scaling"}:
        for program in ("wrk", "haproxy"):
            if not find_binary(program):
                raise SystemExit(f"{program} is not installed (apt-get install -y {program}): the anchors need it")

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as folder:
        return run(args, sections, Path(folder), seconds, rounds, count, sizes)


def run(args, sections: set[str], directory: Path, seconds: int, rounds: int, count: int, sizes: tuple[int, ...]) -> int:
    folder = str(directory)
    concurrencies = tuple(int(n) for n in args.connections.split(","))
    warm = not args.quick  # a warm-up run per path (1 s each) before the measured rounds
    builds = [GatewayBuild("gateway", ROOT)]
    if importlib.util.find_spec("uvloop") is not None:
        builds.append(GatewayBuild("gateway, no uvloop", ROOT, hide_uvloop=True))
    if args.baseline:
        builds.append(GatewayBuild(f"gateway @ {args.baseline}", baseline_tree(args.baseline, folder)))
    print(f"# bench/gateway.py on {os.cpu_count()} cores; replicas, proxies and load generator share them; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    if len(builds) == 1:
        print("- uvloop is not installed: the gateway runs on asyncio's own loop (no 'no uvloop' row)")

    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(REPLICAS), str(len(GPU_SECONDS))],
                                stdout=subprocess.PIPE, text=True)
    try:
        urls = json.loads(upstream.stdout.readline())
        stream_urls, rest = urls[:REPLICAS], urls[REPLICAS:]
        gpus, batching = rest[:len(GPU_SECONDS)], rest[len(GPU_SECONDS):]
        if "anchors" in sections:
            anchors(directory, folder, builds, concurrencies, seconds, rounds, warm)
        if "streams" in sections:
            streams(directory, folder, builds, stream_urls, count, rounds, warm)
        if "scaling" in sections:
            scaling(directory, folder, [b for b in builds if not b.hide_uvloop], sizes, seconds, rounds, warm)
        if "policies" in sections:
            policies(folder, builds[0], gpus, batching, args)
        print(f"- load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        upstream.kill()
        upstream.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
