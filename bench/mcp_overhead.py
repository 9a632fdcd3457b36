#!/usr/bin/env python3
"""What a tool call through the MCP server costs, next to running the script.

Against one loopback simulator, the same read (`gpu_stock`) three ways, N times each:

  - in-process: the script's `main()` called in this process (what an in-process server
    would cost per call; the server does not do this, see autodl_esd/mcp/server.py);
  - subprocess: `python scripts/gpu_stock.py`, as an agent with a shell runs it;
  - MCP tool: `tools/call gpu_stock` over stdio through one server session (the SDK client).

It also times the server's start-up to a finished handshake, and `tools/list`.

    python bench/mcp_overhead.py              # 15 calls each
    python bench/mcp_overhead.py --calls 41
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

TOKEN = "bench-mcp-token-0123456789"


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_in_process(calls: int) -> list[float]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu_stock", ROOT / "scripts" / "gpu_stock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert module.main(["--quiet"]) == 0
        samples.append(time.perf_counter() - started)
    return samples


def time_subprocess(calls: int, env: dict[str, str]) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        subprocess.run([sys.executable, "scripts/gpu_stock.py", "--quiet"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        samples.append(time.perf_counter() - started)
    return samples


def time_mcp(calls: int, env: dict[str, str]) -> tuple[float, list[float], list[float]]:
    from anyio.from_thread import start_blocking_portal
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=[str(ROOT / "scripts" / "mcp_server.py"), "--quiet"],
                                   env={key: env[key] for key in ("AUTODL_HOST", "AUTODL_TOKEN")})
    listing, samples = [], []
    with start_blocking_portal() as portal, open(os.devnull, "w") as errlog:
        started = time.perf_counter()
        with portal.wrap_async_context_manager(Client(stdio_client(params, errlog=errlog))) as client:
            handshake = time.perf_counter() - started
            for _ in range(calls):
                started = time.perf_counter()
                portal.call(client.list_tools)
                listing.append(time.perf_counter() - started)
                started = time.perf_counter()
                result = portal.call(client.call_tool, "gpu_stock", {})
                samples.append(time.perf_counter() - started)
                assert not result.is_error, result
    return handshake, listing, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=15, help="calls per way (default 15)")
    args = parser.parse_args()

    import simulator

    with simulator.Simulator(token=TOKEN, speed=200) as platform:
        env = {**os.environ, "AUTODL_HOST": platform.url, "AUTODL_TOKEN": TOKEN}
        os.environ.update(AUTODL_HOST=platform.url, AUTODL_TOKEN=TOKEN)
        in_process = median_ms(time_in_process(args.calls))
        direct = median_ms(time_subprocess(args.calls, env))
        handshake, listing, via_mcp = time_mcp(args.calls, env)

    print(f"gpu_stock against the simulator, median of {args.calls} calls each\n")
    print("| way | median | × subprocess |")
    print("|---|---|---|")
    for label, value in (("in-process `main()`", in_process), ("subprocess `python scripts/gpu_stock.py`", direct),
                         ("MCP `tools/call gpu_stock`", median_ms(via_mcp))):
        print(f"| {label} | {value:.1f} ms | {value / direct:.3f} |")
    print()
    print("| server | time |")
    print("|---|---|")
    print(f"| start-up to finished handshake | {handshake * 1000:.0f} ms |")
    print(f"| `tools/list` | {median_ms(listing):.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
