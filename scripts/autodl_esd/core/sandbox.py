"""Run a script against the embedded simulator instead of the real platform.

`--sim` starts the local AutoDL simulator in-process on a loopback port, points the client
at it with the simulator's own token, and stops it when the script ends. Nothing leaves
this machine and nothing costs money; it is how the demo runs and how a user tries a config.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import AutoDLError, ErrorType
from .output import Progress, register_secret
from .settings import DEFAULT_HTTP_TIMEOUT_SECONDS, Settings

# 20 simulated seconds per real second: a container's ~30 s start-up shows in ~1.5 s, slow
# enough to watch the phases go by, fast enough for a demo.
SIM_SPEED = 20.0
# Background tenants take "every" card of a type; more than any simulated cluster has.
ALL_CARDS = 10_000


@contextmanager
def simulated_platform(
    progress: Progress,
    *,
    cluster: str | Path | None = None,
    busy_seconds: float = 0.0,
    busy_gpus: Iterable[str] = (),
) -> Iterator[Settings]:
    """Yield settings that talk to a fresh in-process simulator."""
    # On demand: the simulator (an HTTP server and a whole fake platform) is only for --sim,
    # and it is its own package (.importlinter: only this module may import it).
    from simulator import ClusterConfigError, Simulator

    try:
        simulator = Simulator(cluster=cluster, speed=SIM_SPEED)
    except ClusterConfigError as error:
        raise AutoDLError(
            ErrorType.CONFIG_ERROR,
            f"模拟器集群文件有误: {error}",
            "对照 references/simulator.md 的集群文件格式修正, 或去掉 --sim-cluster 使用默认集群。",
            {"path": str(cluster)},
        ) from None
    simulator.start()
    register_secret(simulator.token)
    progress.log(f"本地模拟器已启动: {simulator.url} (模拟时间 {SIM_SPEED:g} 倍速, 不会调用真实平台)")
    try:
        if busy_seconds > 0:
            for gpu_name in busy_gpus:
                # busy_seconds is real time, like --timeout and --interval beside it.
                taken = simulator.occupy(gpu_name, ALL_CARDS, seconds=busy_seconds * SIM_SPEED)
                progress.log(f"模拟其他租户占用 {taken} 张 {gpu_name}, {busy_seconds:g} 秒后释放")
        yield Settings(host=simulator.url, http_timeout=DEFAULT_HTTP_TIMEOUT_SECONDS, token=simulator.token)
    finally:
        simulator.stop()
