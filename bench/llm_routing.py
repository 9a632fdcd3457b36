#!/usr/bin/env python3
"""LLM routing bench: multi-turn chat on 4 simulated replicas that cache prompt prefixes,
through scripts/serve_gateway.py, comparing least_inflight, queue_aware and cache_aware in
one run; prints tables.

The simulator's prefix-cache model (references/simulator.md) makes each replica keep an LRU
of the prompt prefixes it has seen; its time to first token is a fixed part plus a prefill
time per token of the prompt it does not have cached, then one token per `--token-seconds`.

Section 1, multi-turn chat through one gateway: `--conversations` conversations, each
`--turns` turns with a growing history (system prompt, the opening question, every answer
and follow-up so far), `--concurrency` conversations at once; per policy: client-side time
to first token p50/p95, end-to-end p95, the busiest replica's share of the requests against
the mean share, and the replicas' prefix-cache hit rate (cached prompt tokens / prompt tokens).
Section 2, the same through two gateways that share the registry and in-flight counts in
Redis (one watcher writes it), each conversation's turns alternating between them.
Section 3, no shared prefixes: as many single-turn requests, each with its own prompt.

Every (section, policy) gets a fresh deployment, so no run starts with another's cache.
Everything shares this machine's cores (the simulator and the clients too): compare rows of
one run, not runs of different days.

    python3 bench/llm_routing.py [--conversations N] [--turns N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from scale_out import start_redis
from tables import percentile, print_markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS_DIR))

POLICIES = ("least_inflight", "queue_aware", "cache_aware")
REPLICAS = 4
MACHINES = tuple(f"{digit}e{digit}e{digit}e{digit}e{digit}e" for digit in range(1, REPLICAS + 1))
# Simulated seconds per real second: container start-up (~30 simulated s) takes 0.15 s. The
# services' timing below is real seconds (the simulator does not speed up its HTTP answers).
SPEED = 200.0
# The replicas' model server (simulator llm.py, real seconds): a fixed 20 ms before the first
# token plus 0.2 ms per prompt token not in its prefix cache (about 5,000 tokens/s of
# prefill, a 24 GB card on a 7B model), then 10 ms a token; its cache holds 1,024 blocks
# of 16 tokens (the simulator's default, vLLM's block size).
LLM = {"ttft_seconds": 0.02, "prefill_seconds_per_token": 0.0002, "decode_seconds_per_token": 0.01,
       "prefix_cache_blocks": 1024, "cache_block_tokens": 16}
# The answer's length: short answers keep the run short and make time to first token
# (prefill) the larger part of a turn, as in chat.
MAX_TOKENS = 8
# Requests one replica serves at once (a batch); more wait in its queue.
SERVICE_CONCURRENCY = 4
# A conversation: a system prompt all share, an opening question of its own with a pasted
# document (the simulator counts 4 characters a token: 600 tokens), then short follow-ups.
# By its last turn a conversation is about 1,250 tokens: 48 of them fill the four replicas'
# caches (4 x 16,384 tokens) only if each replica keeps its own share.
SYSTEM_PROMPT = "你是一个耐心的中文助手, 回答要准确、简洁, 必要时给出步骤, 引用用户给出的文档。" * 20
QUESTION_CHARS = 2400
FOLLOW_UP_CHARS = 400
DEFAULT_CONVERSATIONS, DEFAULT_TURNS, DEFAULT_CONCURRENCY = 48, 5, 12
# Each policy runs this often per section, the order alternating, so that the machine's
# other work (this bench shares its cores) does not land on one policy's rows.
DEFAULT_ROUNDS = 2
# The gateway's poll interval here: load reports matter on the scale of a request (~0.1 s).
GATEWAY_INTERVAL = 0.1
KEY_PREFIX = "bench-llm-routing"
# Any single wait longer than this is a failure, not a slow answer.
WAIT_LIMIT_SECONDS = 60.0


def cluster() -> dict:
    """Four one-GPU hosts, so each replica has a machine (and a prefix cache) of its own."""
    default = json.loads((SCRIPTS_DIR / "simulator" / "default_cluster.json").read_text(encoding="utf-8"))
    template = dict(default["machines"][0], gpu_num=1, cpu_num=12, memory_gb=60, service_concurrency=SERVICE_CONCURRENCY, **LLM)
    return {**default, "background_load": [], "machines": [dict(template, machine_id=m) for m in MACHINES]}


@dataclass
class Sample:
    ttft: float
    total: float
    served_by: str
    prompt_tokens: int
    cached_tokens: int


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    busiest: list[float] = field(default_factory=list)  # per run: the busiest replica's requests / the mean

    def add(self, other: "Result") -> None:
        """Another run's requests (on other replicas: each run has its own deployment)."""
        counts: dict[str, int] = {}
        for sample in other.samples:
            counts[sample.served_by] = counts.get(sample.served_by, 0) + 1
        if other.samples:
            self.busiest.append(max(counts.values()) / (len(other.samples) / REPLICAS))
        self.samples += other.samples
        self.errors += other.errors

    def row(self, name: str, anchor: "Result | None") -> tuple:
        ttfts = [s.ttft for s in self.samples]
        totals = [s.total for s in self.samples]
        busiest = max(self.busiest) if self.busiest else float("nan")
        prompt = sum(s.prompt_tokens for s in self.samples)
        cached = sum(s.cached_tokens for s in self.samples)
        p50 = statistics.median(ttfts) if ttfts else float("nan")
        versus = "anchor" if anchor is None or anchor is self else \
            f"{(p50 / statistics.median([s.ttft for s in anchor.samples]) - 1) * 100:+.0f}%"
        return (name, str(len(self.samples)), str(self.errors), f"{p50 * 1000:.0f}", f"{percentile(ttfts, 0.95) * 1000:.0f}",
                versus, f"{percentile(totals, 0.95) * 1000:.0f}", f"{busiest:.2f}x",
                f"{cached / prompt * 100:.0f}%" if prompt else "-")


HEADER = ("policy", "requests", "errors", "TTFT p50 ms", "TTFT p95 ms", "TTFT p50 vs least_inflight", "e2e p95 ms",
          "busiest replica's requests (x mean, worst run)", "cache hit rate")


def text(rng: random.Random, chars: int) -> str:
    """Random Chinese-looking text: no two conversations share more than the system prompt."""
    return "".join(chr(0x4E00 + rng.randrange(0x5000)) for _ in range(chars))


async def ask(session, url: str, messages: list[dict], result: Result) -> str | None:
    """One streamed chat completion; the answer's text, or None on an error."""
    started = time.perf_counter()
    first = None
    answer = []
    usage = {}
    try:
        async with session.post(url + "/v1/chat/completions",
                                json={"model": "bench", "messages": messages, "max_tokens": MAX_TOKENS, "stream": True,
                                      "stream_options": {"include_usage": True}}) as response:
            if response.status != 200:
                await response.read()
                result.errors += 1
                return None
            served_by = response.headers.get("X-Served-By", "?")
            async for line in response.content:
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        first = first or time.perf_counter()
                        answer.append(content)
    except Exception:  # a cut stream or a refused connection: counted, the conversation goes on
        result.errors += 1
        return None
    done = time.perf_counter()
    details = usage.get("prompt_tokens_details") or {}
    result.samples.append(Sample((first or done) - started, done - started, served_by, int(usage.get("prompt_tokens") or 0),
                                 int(details.get("cached_tokens") or 0)))
    return "".join(answer)


async def converse(urls: list[str], conversations: int, turns: int, concurrency: int, seed: int, shared_prefix: bool) -> Result:
    import aiohttp

    result = Result()
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=WAIT_LIMIT_SECONDS)

    async def conversation(index: int, session) -> None:
        rng = random.Random(seed * 100_003 + index)
        async with gate:
            if not shared_prefix:  # one request with a prompt of its own, as long as a late turn's
                messages = [{"role": "user", "content": text(rng, len(SYSTEM_PROMPT) + QUESTION_CHARS + turns * FOLLOW_UP_CHARS)}]
                for turn in range(turns):
                    await ask(session, urls[(index + turn) % len(urls)], messages, result)
                    messages = [{"role": "user", "content": text(rng, len(messages[0]["content"]))}]
                return
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text(rng, QUESTION_CHARS)}]
            for turn in range(turns):
                answer = await ask(session, urls[(index + turn) % len(urls)], messages, result)
                messages += [{"role": "assistant", "content": answer or ""}, {"role": "user", "content": text(rng, FOLLOW_UP_CHARS)}]

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(conversation(index, session) for index in range(conversations)))
    return result


# ---- the simulator, deployments and gateways ------------------------------------------------


class Bench:
    def __init__(self, sim, redis_url: str | None) -> None:
        from autodl_esd.core.http import ApiClient
        from autodl_esd.core.settings import load_settings

        self.sim = sim
        self.redis_url = redis_url
        self.env = {**os.environ, "AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token, "PYTHONPATH": str(SCRIPTS_DIR)}
        self.client = ApiClient(load_settings({"AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token}))
        self.runs = 0

    def deploy(self) -> str:
        from autodl_esd.platform import api

        config = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
        config.update(name=f"bench-llm-{self.runs}", replica_num=REPLICAS, reuse_container=False)
        self.runs += 1
        config["container_template"]["gpu_num"] = 1
        uuid = api.create_deployment(self.client, config)
        self.sim.wait_until(lambda: sum(c["status"] == "running" for c in self.sim.containers(uuid)) == REPLICAS,
                            timeout=WAIT_LIMIT_SECONDS)
        return uuid

    def retire(self, uuid: str) -> None:
        from autodl_esd.platform import api

        api.stop_deployment(self.client, uuid)
        self.sim.wait_until(lambda: all(c["status"] in ("shutdown", "stopped") for c in self.sim.containers(uuid)),
                            timeout=WAIT_LIMIT_SECONDS)

    def gateway(self, uuid: str, policy: str, *extra: str) -> tuple[subprocess.Popen, str]:
        process = subprocess.Popen([sys.executable, str(SCRIPTS_DIR / "serve_gateway.py"), "--deployment-uuid", uuid,
                                    "--policy", policy, "--listen", "127.0.0.1:0", "--interval", str(GATEWAY_INTERVAL),
                                    "--load-path", "/metrics", "--drain-seconds", "1", "--quiet", *extra],
                                   env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = json.loads(process.stdout.readline() or "{}")
        if ready.get("status") != "success":
            raise SystemExit(f"gateway did not start: {ready} {process.stderr.read() if process.poll() is not None else ''}")
        return process, ready["url"]

    def watcher(self, uuid: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(SCRIPTS_DIR / "discover_services.py"), "--deployment-uuid", uuid, "--watch",
                                 "--interval", str(GATEWAY_INTERVAL), "--redis", self.redis_url, "--key-prefix", KEY_PREFIX,
                                 "--quiet"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)

    def run(self, policy: str, gateways: int, args, shared_prefix: bool, seed: int) -> Result:
        uuid = self.deploy()
        started: list[subprocess.Popen] = []
        try:
            if gateways == 1:
                process, url = self.gateway(uuid, policy)
                started.append(process)
                urls = [url]
            else:
                started.append(self.watcher(uuid))
                urls = []
                for _ in range(gateways):
                    process, url = self.gateway(uuid, policy, "--registry-redis", self.redis_url, "--key-prefix", KEY_PREFIX,
                                                "--shared-inflight")
                    started.append(process)
                    urls.append(url)
            for url in urls:
                self.sim.wait_until(lambda: len(_status(url)["replicas"]) == REPLICAS, timeout=WAIT_LIMIT_SECONDS)
            return asyncio.run(converse(urls, args.conversations, args.turns, args.concurrency, seed, shared_prefix))
        finally:
            for process in started:
                process.terminate()
                process.communicate(timeout=WAIT_LIMIT_SECONDS)
            self.retire(uuid)


def _status(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "/_gateway/status", timeout=5) as response:
        return json.loads(response.read())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=DEFAULT_CONVERSATIONS)
    parser.add_argument("--turns", type=int, default=DEFAULT_TURNS)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="conversations at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="runs of each policy per section (other conversations each)")
    parser.add_argument("--no-redis", action="store_true", help="skip section 2 (needs redis-server)")
    args = parser.parse_args(argv)

    from simulator import Simulator

    sim = Simulator(cluster=cluster(), speed=SPEED, seed=args.seed).start()
    redis_process = None
    try:
        with tempfile.TemporaryDirectory() as folder:
            redis_url = None
            if not args.no_redis:
                redis_process, redis_url = start_redis(Path(folder))
            bench = Bench(sim, redis_url)
            shape = (f"{args.rounds} x {args.conversations} conversations x {args.turns} turns, {args.concurrency} at once, "
                     f"{REPLICAS} replicas serving {SERVICE_CONCURRENCY} at once, {MAX_TOKENS} tokens an answer")
            sections = [("1. multi-turn chat, one gateway", 1, True)]
            if redis_url:
                sections.append(("2. multi-turn chat, two gateways sharing Redis", 2, True))
            sections.append(("3. no shared prefix (every request its own prompt), one gateway", 1, False))
            for title, gateways, shared_prefix in sections:
                results = {policy: Result() for policy in POLICIES}
                for round_number in range(args.rounds):  # the order alternates: no policy always runs first
                    for policy in POLICIES if round_number % 2 == 0 else reversed(POLICIES):
                        results[policy].add(bench.run(policy, gateways, args, shared_prefix, args.seed + round_number))
                anchor = results["least_inflight"]
                print_markdown_table(f"{title}: {shape}", HEADER, [results[p].row(p, anchor) for p in POLICIES])
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(10)
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
