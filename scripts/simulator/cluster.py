"""The simulated cluster: machines, images, and the rules that place a container on a machine.

Cluster file format (JSON; `scripts/simulator/default_cluster.json` is the default)::

    {
      "default_job_seconds": 60,          # optional: run time of a Job/Container whose cmd
                                          #   has no recognisable lifetime (simulated seconds)
      "machines": [                       # required, non-empty
        {"machine_id": "4f1c2a9be0",      # 10 lowercase hex, unique
         "region": "westDC2",             # data_center / dc_list / region_sign code
         "gpu_name": "RTX 4090",          # exact string clients put in gpu_name_set
         "gpu_num": 8,                    # GPUs on the host
         "cpu_num": 96, "memory_gb": 480, # split evenly per GPU into scheduling units
         "price": 1980,                   # per GPU, yuan x 1000 per hour
         "max_cuda": 124,                 # highest CUDA code the driver supports (124 = 12.4)
         "latency_seconds": 0.02,         # optional: real delay of its /svc answers
         "service_concurrency": 1,        # optional: requests one container serves at once
                                          #   (a GPU runs one batch; the rest queue); 0 = no limit
         "ttft_seconds": 0.05,            # optional model-server timing (real seconds, see
         "prefill_seconds_per_token": 0.0002,  # llm.py): time to first token = ttft +
         "decode_seconds_per_token": 0.02,     #   prefill x uncached prompt tokens; then one
                                          #   token per decode step (unset: latency_seconds)
         "prefix_cache_blocks": 1024,     # optional: prompt blocks one container caches (LRU)
         "cache_block_tokens": 16,        # optional: tokens per cache block
         "faulty": false,                 # optional: its containers crash soon after start
         "chip_corp": "nvidia", "cpu_arch": "x86"}   # optional, shown by region stock
      ],
      "images": [                         # private images (image list endpoint)
        {"image_uuid": "image-0a1b2c3d4e", "name": "torch-serve"}
      ],
      "base_images": [                    # optional system images (/api/v2/image/list)
        {"image_uuid": "base-image-l2t43iu6uk", "name": "PyTorch 2.0.0", "cuda_version": "11.8"}
      ],
      "background_load": [                # optional: other tenants holding GPUs at start
        {"gpu_name": "NVIDIA A40", "gpus": 4, "until_seconds": 300}   # null = forever
      ]
    }

Scheduling follows the platform's concept page: a host's CPU and memory are split evenly per
GPU into scheduling units; a container of `gpu_num` GPUs takes `gpu_num` whole units on ONE
host and reports that real allocation. Request ranges only select hosts.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CLUSTER_FILE = Path(__file__).with_name("default_cluster.json")

# Run time of a Job/Container whose cmd says nothing about its lifetime: long enough to watch
# it run, short enough that a demo finishes (simulated seconds).
DEFAULT_JOB_SECONDS = 60.0

GIB = 1024**3

_MACHINE_ID = re.compile(r"^[0-9a-f]{10}$")
_PRIVATE_IMAGE_UUID = re.compile(r"^image-[0-9a-f]{10}$")
_BASE_IMAGE_UUID = re.compile(r"^base-image-[0-9a-z]{10,12}$")


class ClusterConfigError(ValueError):
    """A cluster file that cannot be used; `problems` lists every fault found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


# A container's prefix cache: 1,024 blocks of 16 tokens (vLLM's default block size) keep a
# few long conversations; the caps bound what one container's cache can hold in memory.
DEFAULT_PREFIX_CACHE_BLOCKS = 1024
DEFAULT_CACHE_BLOCK_TOKENS = 16
# Model-server settings of a machine: (type, minimum, maximum, may be null).
LLM_SETTINGS: dict[str, tuple[type, float, float, bool]] = {
    "ttft_seconds": (float, 0, 3600, True),
    "prefill_seconds_per_token": (float, 0, 60, False),
    "decode_seconds_per_token": (float, 0, 60, True),
    "prefix_cache_blocks": (int, 0, 100_000, False),
    "cache_block_tokens": (int, 1, 4096, False),
}


@dataclass
class Machine:
    machine_id: str
    region: str
    gpu_name: str
    gpu_num: int
    cpu_num: int
    memory_gb: int
    price: int
    max_cuda: int
    latency_seconds: float = 0.0
    service_concurrency: int = 0  # 0 = unlimited: every /svc request is served at once
    # The model server's timing and prefix cache (llm.py); None = latency_seconds.
    ttft_seconds: float | None = None
    prefill_seconds_per_token: float = 0.0
    decode_seconds_per_token: float | None = None
    prefix_cache_blocks: int = DEFAULT_PREFIX_CACHE_BLOCKS
    cache_block_tokens: int = DEFAULT_CACHE_BLOCK_TOKENS
    faulty: bool = False
    chip_corp: str = "nvidia"
    cpu_arch: str = "x86"

    @property
    def cpu_per_gpu(self) -> int:
        return self.cpu_num // self.gpu_num

    @property
    def memory_gb_per_gpu(self) -> int:
        return self.memory_gb // self.gpu_num

    def describe(self) -> dict[str, Any]:
        return {
            "machine_id": self.machine_id,
            "region": self.region,
            "gpu_name": self.gpu_name,
            "gpu_num": self.gpu_num,
            "cpu_num": self.cpu_num,
            "memory_gb": self.memory_gb,
            "price": self.price,
            "max_cuda": self.max_cuda,
            "latency_seconds": self.latency_seconds,
            "service_concurrency": self.service_concurrency,
            **{key: getattr(self, key) for key in LLM_SETTINGS},
            "faulty": self.faulty,
        }


@dataclass(frozen=True)
class Image:
    image_uuid: str
    name: str
    cuda_version: str = ""


@dataclass(frozen=True)
class BackgroundLoad:
    gpu_name: str
    gpus: int
    until_seconds: float | None


@dataclass
class ClusterSpec:
    machines: list[Machine]
    images: list[Image]
    base_images: list[Image] = field(default_factory=list)
    background_load: list[BackgroundLoad] = field(default_factory=list)
    default_job_seconds: float = DEFAULT_JOB_SECONDS


@dataclass(frozen=True)
class PlacementFilter:
    """The host-selecting part of a container template, in request units (GB, yuan x 1000)."""

    gpu_name_set: tuple[str, ...]
    gpu_num: int
    cpu_num_from: int
    cpu_num_to: int
    memory_gb_from: int
    memory_gb_to: int
    price_from: int
    price_to: int
    min_cuda: int  # 0 = any driver
    regions: tuple[str, ...] = ()  # empty = any region

    def selects(self, machine: Machine) -> bool:
        """Would this host qualify if it had free GPUs? Capacity is checked by the caller."""
        cpu = machine.cpu_per_gpu * self.gpu_num
        memory_gb = machine.memory_gb_per_gpu * self.gpu_num
        return (
            machine.gpu_name in self.gpu_name_set
            and machine.gpu_num >= self.gpu_num
            and self.cpu_num_from <= cpu <= self.cpu_num_to
            and self.memory_gb_from <= memory_gb <= self.memory_gb_to
            # The price range is the per-GPU base price, the figure the console shows.
            and self.price_from <= machine.price <= self.price_to
            # Newer drivers run older CUDA, so only the lower bound can exclude a host.
            and machine.max_cuda >= self.min_cuda
            and (not self.regions or machine.region in self.regions)
        )


def load_cluster(source: str | Path | dict | None) -> ClusterSpec:
    """Build a ClusterSpec from None (the default file), a path, or an already parsed dict."""
    if source is None:
        source = DEFAULT_CLUSTER_FILE
    if isinstance(source, dict):
        return _parse_cluster(source, "cluster")
    path = Path(source)
    return _parse_cluster(_read_cluster_json(path), str(path))


# A cluster file lists a few dozen machines; anything bigger is the wrong file (or /dev/zero).
MAX_CLUSTER_FILE_BYTES = 4 * 1024 * 1024
# No cluster figure needs more digits; int() itself refuses over 4,300 with a ValueError.
MAX_INT_DIGITS = 18
# Why the file could not be opened, in the words a user acts on; others keep the OS's text.
# (The bundle's core.files has the fuller table; the simulator imports nothing from it.)
_OPEN_REASONS = {
    errno.ENOENT: "文件不存在",
    errno.EACCES: "没有读取权限",
    errno.EPERM: "没有读取权限",
    errno.ENOTDIR: "路径中的某一级不是目录",
    errno.ENAMETOOLONG: "文件名过长",
    errno.ELOOP: "符号链接层数过多 (可能是循环链接)",
}


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"数字 {text[:20]} 超出浮点数范围")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"整数 {text[:12]}... 超过 {MAX_INT_DIGITS} 位")
    return int(text)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} 不是 JSON 允许的数字")


def _read_cluster_json(path: Path) -> Any:
    """The parsed file: a regular UTF-8 JSON file of bounded size, else ClusterConfigError."""
    try:
        # O_NONBLOCK: a FIFO with no writer must not hang the start-up; it is refused below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ClusterConfigError(str(path), [f"无法读取文件: {_OPEN_REASONS.get(exc.errno) or exc.strerror or exc}"]) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ClusterConfigError(str(path), ["不是普通文件"])
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_CLUSTER_FILE_BYTES + 1)
    if len(data) > MAX_CLUSTER_FILE_BYTES:
        raise ClusterConfigError(str(path), [f"文件超过 {MAX_CLUSTER_FILE_BYTES} 字节"])
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant,
                          parse_float=_finite_float, parse_int=_bounded_int)
    except UnicodeDecodeError as exc:
        raise ClusterConfigError(str(path), [f"不是 UTF-8 编码 (第 {exc.start} 字节)"]) from None
    except RecursionError:
        raise ClusterConfigError(str(path), ["不是合法的 JSON: 嵌套过深"]) from None
    except json.JSONDecodeError as exc:  # the decoder's own words stay, after where it stopped
        raise ClusterConfigError(str(path), [f"不是合法的 JSON: 第 {exc.lineno} 行第 {exc.colno} 列 ({exc.msg})"]) from None
    except ValueError as exc:  # a number refused by the parse hooks above
        raise ClusterConfigError(str(path), [f"不是合法的 JSON: {exc}"]) from None


def _parse_cluster(raw: Any, source: str) -> ClusterSpec:
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ClusterConfigError(source, ["顶层必须是 JSON 对象"])

    machines = [_parse_machine(item, f"machines[{i}]", problems) for i, item in enumerate(_list(raw, "machines", problems))]
    machines = [m for m in machines if m is not None]
    if not machines and "machines" in raw:
        problems.append("machines: 至少需要一台机器")
    seen: set[str] = set()
    for machine in machines:
        if machine.machine_id in seen:
            problems.append(f"machines: machine_id {machine.machine_id} 重复")
        seen.add(machine.machine_id)

    images = [_parse_image(item, f"images[{i}]", _PRIVATE_IMAGE_UUID, problems) for i, item in enumerate(_list(raw, "images", problems))]
    base_images = [
        _parse_image(item, f"base_images[{i}]", _BASE_IMAGE_UUID, problems)
        for i, item in enumerate(_list(raw, "base_images", problems, required=False))
    ]
    gpu_names = {m.gpu_name for m in machines}
    loads = [
        _parse_load(item, f"background_load[{i}]", gpu_names, problems)
        for i, item in enumerate(_list(raw, "background_load", problems, required=False))
    ]
    job_seconds = raw.get("default_job_seconds", DEFAULT_JOB_SECONDS)
    if not _is_number(job_seconds) or job_seconds <= 0:
        problems.append("default_job_seconds: 必须是正数")
    unknown = set(raw) - {"machines", "images", "base_images", "background_load", "default_job_seconds"}
    if unknown:
        problems.append(f"未知的顶层键: {', '.join(sorted(unknown))}")
    if problems:
        raise ClusterConfigError(source, problems)
    return ClusterSpec(
        machines=machines,
        images=[i for i in images if i is not None],
        base_images=[i for i in base_images if i is not None],
        background_load=[x for x in loads if x is not None],
        default_job_seconds=float(job_seconds),
    )


def _list(raw: dict, key: str, problems: list[str], required: bool = True) -> list:
    value = raw.get(key)
    if value is None:
        if required:
            problems.append(f"{key}: 缺少这个必填列表")
        return []
    if not isinstance(value, list):
        problems.append(f"{key}: 必须是列表")
        return []
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_machine(item: Any, where: str, problems: list[str]) -> Machine | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: 必须是对象")
        return None
    count_before = len(problems)
    machine_id = item.get("machine_id")
    if not isinstance(machine_id, str) or not _MACHINE_ID.match(machine_id):
        problems.append(f"{where}.machine_id: 必须是 10 位小写十六进制字符")
    for key in ("region", "gpu_name"):
        if not isinstance(item.get(key), str) or not item.get(key):
            problems.append(f"{where}.{key}: 必须是非空字符串")
    for key, minimum in (("gpu_num", 1), ("cpu_num", 1), ("memory_gb", 1), ("price", 0), ("max_cuda", 0)):
        if not _is_int(item.get(key)) or item[key] < minimum:
            problems.append(f"{where}.{key}: 必须是 >= {minimum} 的整数")
    if _is_int(item.get("gpu_num")) and _is_int(item.get("cpu_num")) and item["cpu_num"] < item["gpu_num"]:
        problems.append(f"{where}.cpu_num: 每块 GPU 至少要 1 个 CPU (不能小于 gpu_num)")
    latency = item.get("latency_seconds", 0.0)
    if not _is_number(latency) or latency < 0:
        problems.append(f"{where}.latency_seconds: 必须是 >= 0 的数")
    if not _is_int(item.get("service_concurrency", 0)) or item.get("service_concurrency", 0) < 0:
        problems.append(f"{where}.service_concurrency: 必须是 >= 0 的整数 (0 = 不限)")
    if not isinstance(item.get("faulty", False), bool):
        problems.append(f"{where}.faulty: 必须是 true 或 false")
    problems += llm_setting_problems({k: v for k, v in item.items() if k in LLM_SETTINGS}, where)
    known = {f for f in Machine.__dataclass_fields__}
    unknown = set(item) - known
    if unknown:
        problems.append(f"{where}: 未知的键 {', '.join(sorted(unknown))}")
    if len(problems) > count_before:
        return None
    return Machine(**{**item, "latency_seconds": float(latency), **llm_settings(item)})


def llm_setting_problems(settings: dict, where: str) -> list[str]:
    """What is wrong with model-server settings (keys of LLM_SETTINGS), one line each."""
    problems = []
    for key, value in settings.items():
        kind, minimum, maximum, nullable = LLM_SETTINGS[key]
        if value is None and nullable:
            continue
        number = _is_int(value) if kind is int else _is_number(value)
        if not number or not minimum <= value <= maximum:
            what = "整数" if kind is int else "数"
            problems.append(f"{where}.{key}: 必须是 {minimum}..{maximum} 之间的{what}" + ("或 null" if nullable else ""))
    return problems


def llm_settings(settings: dict) -> dict:
    """The model-server settings among `settings`, as the Machine fields' types."""
    return {key: None if settings[key] is None else LLM_SETTINGS[key][0](settings[key])
            for key in LLM_SETTINGS if key in settings}


def _parse_image(item: Any, where: str, pattern: re.Pattern, problems: list[str]) -> Image | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: 必须是对象")
        return None
    uuid, name = item.get("image_uuid"), item.get("name")
    if not isinstance(uuid, str) or not pattern.match(uuid):
        problems.append(f"{where}.image_uuid: 不符合格式 {pattern.pattern}")
        return None
    if not isinstance(name, str) or not name:
        problems.append(f"{where}.name: 必须是非空字符串")
        return None
    return Image(image_uuid=uuid, name=name, cuda_version=str(item.get("cuda_version", "")))


def _parse_load(item: Any, where: str, gpu_names: set[str], problems: list[str]) -> BackgroundLoad | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: 必须是对象")
        return None
    count_before = len(problems)
    if item.get("gpu_name") not in gpu_names:
        problems.append(f"{where}.gpu_name: 没有哪台机器的 GPU 是 {item.get('gpu_name')!r}")
    if not _is_int(item.get("gpus")) or item["gpus"] < 1:
        problems.append(f"{where}.gpus: 必须是 >= 1 的整数")
    until = item.get("until_seconds")
    if until is not None and (not _is_number(until) or until <= 0):
        problems.append(f"{where}.until_seconds: 必须是正数或 null")
    if len(problems) > count_before:
        return None
    return BackgroundLoad(gpu_name=item["gpu_name"], gpus=item["gpus"], until_seconds=until)


# The private cloud's stock and containers name GPUs the way the driver does (facts §15:
# "NVIDIA GeForce RTX 4090", "NVIDIA A40"); the public cloud uses the short marketing names
# the default cluster file is written in. GeForce models are the consumer RTX/GTX cards.
_GEFORCE = re.compile(r"^(RTX|GTX) \d{4}")


def vendor_gpu_name(name: str) -> str:
    """The vendor spelling of a short GPU name: "RTX 4090" -> "NVIDIA GeForce RTX 4090",
    "RTX A5000" -> "NVIDIA RTX A5000"; a name already starting with NVIDIA is kept."""
    if name.upper().startswith("NVIDIA"):
        return name
    if _GEFORCE.match(name):
        return f"NVIDIA GeForce {name}"
    return f"NVIDIA {name}"


def with_vendor_names(spec: ClusterSpec) -> ClusterSpec:
    """The same cluster with every GPU named the private cloud's way (vendor_gpu_name)."""
    for machine in spec.machines:
        machine.gpu_name = vendor_gpu_name(machine.gpu_name)
    spec.background_load = [BackgroundLoad(vendor_gpu_name(load.gpu_name), load.gpus, load.until_seconds)
                            for load in spec.background_load]
    return spec
