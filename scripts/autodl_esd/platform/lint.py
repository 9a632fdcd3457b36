"""Warnings (not errors) for start commands and conditions that bite on AutoDL.

The container lives exactly as long as its `cmd`: these are the ways a command that works
in a terminal ends, hangs, or fails in a container. A warning never blocks a submission.
"""

from __future__ import annotations

import re
from typing import Any

from .units import ROOMY_CPU_PER_GPU, ROOMY_MEMORY_GB_PER_GPU, TYPICAL_CPU_PER_GPU, TYPICAL_MEMORY_GB_PER_GPU

Warning_ = dict[str, str]

CMD_PATH = "container_template.cmd"

_AND_THEN_OR = re.compile(r"&&[^;|&]*\|\|")
# A single `&` (not `&&`, not a redirection like `2>&1`) at the end of a command segment.
_BACKGROUND = re.compile(r"(?<![&>])&(?!&)\s*(?:;|$)|(?<![&>])&(?![&>])\s+\S")
_KEEPS_PARENT_ALIVE = re.compile(r"\bsleep\s+infinity\b|\bwait\b|\btail\s+-f\b")
_CONDA_ACTIVATE = re.compile(r"\b(?:conda|source)\s+activate\b")
_SLEEP_INFINITY = re.compile(r"\bsleep\s+infinity\b")
_CD = re.compile(r"(?:^|[;&|]\s*)cd\s+")
# `python x.py`, `bash run.sh`, `sh run.sh`, `./run.sh`: the script argument is relative.
_RELATIVE_SCRIPT = re.compile(
    r"(?:^|[;&|]\s*)(?:nohup\s+)?(?:\S*python[\d.]*|bash|sh)\s+(?:-\S+\s+)*(?![/~$-])([\w.][\w./-]*\.(?:py|sh))\b"
    r"|(?:^|[;&|]\s*)(\./[\w./-]+)"
)
_BARE_PYTHON3 = re.compile(r"(?:^|[;&|]\s*)python3\b")
# `python` with no directory: whichever interpreter PATH finds first (usually the base env).
_BARE_PYTHON = re.compile(r"(?:^|[;&|]\s*|\bnohup\s+|\bexec\s+)python(?![\w.-])")
# A server told to listen on loopback only: the platform's port mapping cannot reach it.
_LOOPBACK_BIND = re.compile(
    r"(?:--host|--bind|--ip|--listen|--address|--addr|--server[-_]name|--server[-_]address|-b|-H)(?:=|\s+)"
    r"[\"']?(?:127\.0\.0\.1|localhost)\b"
    r"|(?<![\w/.-])(?:127\.0\.0\.1|localhost):600[68]\b(?!\S*/)"
)
_NETWORK_FETCH = re.compile(r"\bpip3?\s+install\b|\bgit\s+clone\b|huggingface-cli\s+download|\bhf\s+download\b|snapshot_download")
_NETWORK_TURBO = re.compile(r"/etc/network_turbo")
# Only ports 6006 and 6008 of a container get a service address.
_SERVICE_PORT = re.compile(r"\b600[68]\b")

# Per-GPU floors above these exclude many hosts: a scheduling unit is the host's CPU and
# memory split evenly per GPU, and common hosts give a unit 8-16 vCPU and 30-60 GB; a
# private RTX 4090 D cluster refused 16 GB for one GPU where 8 GB scheduled.
MEMORY_FLOOR_WARN_GB_PER_GPU = 16
CPU_FLOOR_WARN_PER_GPU = 16
# Below 0.1 yuan/hour no GPU host exists; a value this small is usually yuan, not yuan x 1000.
PRICE_TO_WARN_BELOW = 100
# Ceilings below units.TYPICAL_*_PER_GPU x gpu_num exclude most hosts: a memory_size_to of
# 16 for one GPU fits almost no host (an agent's three creates failed with 当前算力规格暂无库存
# exactly so).
# Current-generation GPUs rent from about 1 yuan/hour; a price_to below that leaves few hosts.
TYPICAL_MIN_PRICE_UNITS = 1000
# Many hosts' drivers stop at CUDA 12.2-12.4; requiring a newer one excludes a large share.
CUDA_FLOOR_LIKELY_EXCLUDES = 124


def _warning(code: str, path: str, message: str, hint: str) -> Warning_:
    return {"code": code, "path": path, "message": message, "hint": hint}


def lint_cmd(cmd: str, deployment_type: str | None) -> list[Warning_]:
    warnings: list[Warning_] = []
    if _AND_THEN_OR.search(cmd):
        warnings.append(_warning(
            "and_or_chain", CMD_PATH,
            "cmd 用了 `a && b || c` 组合: 已知会让 Job 容器一直不结束。",
            "改用分号顺序执行, 如 `ls /data ; python run.py ; true`, 或把逻辑写进脚本文件。",
        ))
    if _BACKGROUND.search(cmd) and not _KEEPS_PARENT_ALIVE.search(cmd):
        warnings.append(_warning(
            "background_without_keepalive", CMD_PATH,
            "cmd 把程序放到后台 (&) 后命令就结束了, 容器会随之停止并杀掉后台进程。",
            "前台运行程序; 确需后台时在末尾加 `; sleep infinity` 保持父进程。",
        ))
    if _CONDA_ACTIVATE.search(cmd):
        warnings.append(_warning(
            "conda_activate", CMD_PATH,
            "cmd 里的 conda activate 在非交互 shell 中通常不生效。",
            "直接用环境的解释器, 如 /root/miniconda3/envs/my-env/bin/python app.py。",
        ))
    relative = _RELATIVE_SCRIPT.search(cmd)
    if relative and not _CD.search(cmd[: relative.start() + 1]):
        script = relative.group(1) or relative.group(2)
        warnings.append(_warning(
            "relative_path_without_cd", CMD_PATH,
            f"cmd 用相对路径 {script} 却没有先 cd, 工作目录不一定是你以为的目录。",
            f"先切换目录, 如 `cd /root/project && python {script}`, 或写绝对路径。",
        ))
    if _SLEEP_INFINITY.search(cmd) and deployment_type in ("Job", "Container"):
        warnings.append(_warning(
            "sleep_infinity_in_job", CMD_PATH,
            f"{deployment_type} 的 cmd 含 sleep infinity: 容器永远不会完成, 会一直计费。",
            "只在调试时这样用 (SSH 进去手动排查), 调试完改回真实命令并停止部署。",
        ))
    if _BARE_PYTHON3.search(cmd):
        warnings.append(_warning(
            "bare_python3", CMD_PATH,
            "AutoDL 镜像常常只有 python 没有 python3, 裸 python3 可能报 command not found (退出码 127)。",
            "用解释器的完整路径, 如 /root/miniconda3/bin/python。",
        ))
    if _BARE_PYTHON.search(cmd):
        warnings.append(_warning(
            "bare_python", CMD_PATH,
            "cmd 用裸 python (没有路径): 它是 PATH 上的第一个解释器, 通常是 miniconda 基础环境, "
            "不一定是装了你依赖的那个环境 (cmd 里 conda activate 也不生效)。",
            "按文档写解释器的完整路径, 如 /root/miniconda3/bin/python (基础环境) 或 "
            "/root/miniconda3/envs/my-env/bin/python; 确认镜像基础环境就是你要的, 可忽略本警告。",
        ))
    if deployment_type == "ReplicaSet" and _LOOPBACK_BIND.search(cmd):
        warnings.append(_warning(
            "service_binds_loopback", CMD_PATH,
            "cmd 让服务只监听 127.0.0.1 / localhost: 平台的端口映射从容器外访问, 连不上回环地址, 服务地址会一直不可用。",
            "监听所有地址: 如 `--host 0.0.0.0 --port 6006`。",
        ))
    if _NETWORK_FETCH.search(cmd) and not _NETWORK_TURBO.search(cmd):
        warnings.append(_warning(
            "network_without_turbo", CMD_PATH,
            "cmd 在容器里联网下载 (pip/git/HuggingFace), 没有学术加速时可能极慢或卡住。",
            "在前面加 `source /etc/network_turbo ;`; HuggingFace 另设 HF_ENDPOINT=https://hf-mirror.com "
            "与 HF_HUB_DISABLE_XET=1; 更好的做法是把依赖打进镜像。",
        ))
    if deployment_type == "ReplicaSet" and not _SERVICE_PORT.search(cmd):
        warnings.append(_warning(
            "service_port_not_in_cmd", CMD_PATH,
            "ReplicaSet 通常用于服务, 但 cmd 里看不到 6006 或 6008 端口: 平台只为这两个端口提供服务地址。",
            "让服务监听 0.0.0.0:6006 (或 6008), 如 `--port 6006`; 若端口已在脚本或配置文件中设好, 可忽略。",
        ))
    return warnings


def lint_config(config: dict[str, Any]) -> list[Warning_]:
    """Warnings for a config that already passed validation."""
    template = config["container_template"]
    deployment_type = config.get("deployment_type")
    warnings = lint_cmd(template["cmd"], deployment_type)
    gpu_num = template["gpu_num"]

    if template["memory_size_from"] > MEMORY_FLOOR_WARN_GB_PER_GPU * gpu_num:
        warnings.append(_warning(
            "high_memory_floor", "container_template.memory_size_from",
            f"memory_size_from={template['memory_size_from']} GB 对 {gpu_num} 张卡偏高, 可能没有主机满足而一直等不到。",
            "范围只是选主机的条件, 容器实际拿到主机按卡均分的内存; 把下限调低 (如 1), 需要大内存时增加 gpu_num。",
        ))
    if template["cpu_num_from"] > CPU_FLOOR_WARN_PER_GPU * gpu_num:
        warnings.append(_warning(
            "high_cpu_floor", "container_template.cpu_num_from",
            f"cpu_num_from={template['cpu_num_from']} 对 {gpu_num} 张卡偏高, 可能没有主机满足。",
            "把下限调低 (如 1); 容器实际拿到主机按卡均分的 CPU。",
        ))
    if template["price_to"] < PRICE_TO_WARN_BELOW:
        warnings.append(_warning(
            "price_looks_like_yuan", "container_template.price_to",
            f"price_to={template['price_to']} 即 {template['price_to'] / 1000} 元/小时, 低于任何 GPU 的价格。",
            f"价格单位是 元×1000/小时: 若想表示 {template['price_to']} 元/小时, 应写 {template['price_to'] * 1000}。",
        ))
    for stem, typical, unit in (("memory_size", TYPICAL_MEMORY_GB_PER_GPU, "GB"), ("cpu_num", TYPICAL_CPU_PER_GPU, "vCPU")):
        ceiling = template[f"{stem}_to"]
        if ceiling < typical * gpu_num:
            warnings.append(_warning(
                f"low_{stem.split('_')[0]}_ceiling", f"container_template.{stem}_to",
                f"{stem}_to={ceiling} {unit} 低于常见主机给 {gpu_num} 张卡的份额 (约每卡 {typical} {unit} 起): "
                "范围筛选的是容器分到的份额 (主机每卡份额 × gpu_num), 上限太低会排除几乎所有主机, 创建报 当前算力规格暂无库存。",
                f"上限不是\"我只要这么多\": 容器总会拿到主机每卡份额 × gpu_num; 不想限制就放宽 {stem}_to (如 "
                f"{max(ceiling, ROOMY_MEMORY_GB_PER_GPU if stem == 'memory_size' else ROOMY_CPU_PER_GPU) * gpu_num}), 只用 {stem}_from 表示最低需要。",
            ))
    if deployment_type == "Container" and ("replica_num" in config or "parallelism_num" in config):
        warnings.append(_warning(
            "container_ignores_counts", "replica_num",
            "Container 类型只运行一个容器, replica_num/parallelism_num 不起作用。",
            "删除这两个字段; 需要多个容器请用 Job 或 ReplicaSet。",
        ))
    if deployment_type == "Job" and config.get("parallelism_num", 0) > config.get("replica_num", 0):
        warnings.append(_warning(
            "parallelism_above_replicas", "parallelism_num",
            "parallelism_num 大于 replica_num: 最多只会同时运行 replica_num 个容器。",
            "把 parallelism_num 调到不大于 replica_num。",
        ))
    if "reuse_container_scope" in config and not config.get("reuse_container"):
        warnings.append(_warning(
            "scope_without_reuse", "reuse_container_scope",
            "设置了 reuse_container_scope 但没有开启 reuse_container, 该字段不起作用。",
            "需要复用时设 reuse_container: true。",
        ))
    public_only = ("reuse_container_scope", "service_6006_port_protocol", "service_6008_port_protocol")
    template_public_only = ("cmd_before_shutdown", "service_6006_port_protocol", "service_6008_port_protocol")
    if "dc_list" not in template:
        used = [f for f in public_only if f in config] + [f"container_template.{f}" for f in template_public_only if f in template]
        if used:
            warnings.append(_warning(
                "public_field_on_private", used[0],
                f"私有云文档没有这些字段: {', '.join(used)}; 平台可能忽略或拒绝。",
                "私有云上去掉它们; 若目标是公有云, 请在 container_template 中加 dc_list。",
            ))
    return warnings


# --- why a create found no capacity ----------------------------------------------------

def capacity_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every template filter that can exclude all hosts with free cards, each with `likely`:
    whether this config's value is one that commonly does (see the TYPICAL_* constants).

    The platform says only 当前算力规格暂无库存; naming every bound, the upper ones included,
    keeps an agent from relaxing the floors while a ceiling is the culprit.
    """
    template = config.get("container_template") or {}
    gpu_num = template.get("gpu_num") if isinstance(template.get("gpu_num"), int) else 1
    found: list[dict[str, Any]] = []

    def add(field: str, why: str, likely: bool) -> None:
        if field in template:
            found.append({"field": f"container_template.{field}", "value": template[field], "why": why, "likely": bool(likely)})

    def number(field: str) -> Any:
        value = template.get(field)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    memory_from, memory_to = number("memory_size_from"), number("memory_size_to")
    cpu_from, cpu_to = number("cpu_num_from"), number("cpu_num_to")
    price_to = number("price_to")
    add("memory_size_from", f"下限高于主机每卡内存份额 × gpu_num ({gpu_num}) 的主机都被排除",
        memory_from is not None and memory_from > MEMORY_FLOOR_WARN_GB_PER_GPU * gpu_num)
    add("memory_size_to", f"上限低于主机每卡内存份额 × gpu_num 的主机都被排除, 常见每卡 {TYPICAL_MEMORY_GB_PER_GPU} GB 起",
        memory_to is not None and memory_to < TYPICAL_MEMORY_GB_PER_GPU * gpu_num)
    add("cpu_num_from", "下限高于主机每卡 CPU 份额 × gpu_num 的主机都被排除",
        cpu_from is not None and cpu_from > CPU_FLOOR_WARN_PER_GPU * gpu_num)
    add("cpu_num_to", f"上限低于主机每卡 CPU 份额 × gpu_num 的主机都被排除, 常见每卡 {TYPICAL_CPU_PER_GPU} vCPU 起",
        cpu_to is not None and cpu_to < TYPICAL_CPU_PER_GPU * gpu_num)
    add("price_to", "上限低于主机价格 (元×1000/小时) 的主机都被排除",
        price_to is not None and price_to < TYPICAL_MIN_PRICE_UNITS)
    add("price_from", "下限高于主机价格的主机都被排除", False)
    for field in ("cuda_v", "cuda_v_from"):
        code = number(field)
        add(field, "驱动支持的 CUDA 低于它的主机都被排除", code is not None and code >= CUDA_FLOOR_LIKELY_EXCLUDES)
    add("cuda_v_to", "CUDA 上限: 若平台按上限筛选, 驱动更新的主机会被排除", False)
    return found


def no_capacity_suggestion(config: dict[str, Any]) -> str:
    """The submission_error suggestion for no_capacity: the likely culprits first, then every filter."""
    filters = capacity_filters(config)
    likely = [f"{item['field'].split('.')[-1]}={item['value']} ({item['why']})" for item in filters if item["likely"]]
    every = ", ".join(item["field"].split(".")[-1] for item in filters)
    text = "库存显示有空闲卡, 但它们所在的主机可能都不满足配置的筛选条件 (范围筛选的是容器分到的份额 = 主机每卡份额 × gpu_num)。"
    if likely:
        text += "这个配置最可能卡在: " + "; ".join(likely) + "。"
    text += f"能把所有主机都排除的条件 (上限和下限都算): {every}; 逐个放宽 (先放宽上面点名的), 或增加可选 GPU 型号。"
    return text
