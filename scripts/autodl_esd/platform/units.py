"""Units of the API and the conversions that catch the classic mistakes.

Requests take memory in whole GB, price in yuan x 1000 per hour, CUDA as an integer code
(118 = CUDA 11.8). Responses report memory in bytes.

Also the platform's documented limits that scripts' parsers quote in --help (blacklist
expiry, WeChat messages): this module imports only math and re, which argparse loads anyway.
"""

from __future__ import annotations

import math
import re

BYTES_PER_GB = 1024**3
PRICE_SCALE = 1000  # API price unit: 1/1000 yuan per hour

# CUDA codes seen in the platform's docs (private `cuda_v` list and the public appendix
# and samples). The schema also allows `0` for the private `cuda_v`: "no CUDA constraint".
KNOWN_CUDA_CODES = (111, 113, 116, 117, 118, 120, 121, 122, 124, 126, 128)

# No host offers this much memory per container; a larger "GB" value is almost surely bytes.
MAX_PLAUSIBLE_MEMORY_GB = 65536

# The low end of a common host's share per GPU (a host's CPU and memory split evenly per
# card; common units are 8-16 vCPU and 30-60 GB). A ceiling below share x gpu_num fits
# almost no host: the range filters the container's share, not what it needs.
TYPICAL_MEMORY_GB_PER_GPU = 30
TYPICAL_CPU_PER_GPU = 8
# A ceiling that excludes no common host, when a config did not mean to limit: above the
# largest per-GPU shares seen (720 GB / 8 cards = 90 GB; 16-core units), with room to spare.
ROOMY_MEMORY_GB_PER_GPU = 256
ROOMY_CPU_PER_GPU = 128

# The most replicas a deployment may ask for (replica_num; schemas/deployment.schema.json):
# a product limit far above any account's GPU quota.
MAX_REPLICA_NUM = 10000

# Public-cloud limits of the blacklist's expire_in_minutes: 1 minute to 30 days.
BLACKLIST_MAX_EXPIRE_MINUTES = 43200

# WeChat notifications (POST /api/v1/wechat/message/send): the platform's documented limits
# on successful messages, and the longest title we send (a template title is a line).
WECHAT_PER_MINUTE = 5
WECHAT_PER_DAY = 50
WECHAT_MAX_TITLE_CHARS = 64

_VERSION = re.compile(r"^\s*(\d{1,2})\.(\d)\s*$")


def cuda_code_for(value: object) -> int | None:
    """The smallest known code that covers a CUDA version given as "11.8", 11.8 or 11.

    Newer drivers run older CUDA, so rounding up to the next known code is safe; returns
    None when the version is newer than every known code or unreadable.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = _VERSION.match(value)
        if not match:
            return None
        wanted = int(match.group(1)) * 10 + int(match.group(2))
    elif isinstance(value, float):
        wanted = round(value * 10)
    elif isinstance(value, int):
        wanted = value * 10 if value < 100 else value  # 12 -> 120; 119 -> next code up
    else:
        return None
    return next((code for code in KNOWN_CUDA_CODES if code >= wanted), None)


def gb_from_bytes(value: int) -> float:
    return round(value / BYTES_PER_GB, 2)


def looks_like_bytes(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > MAX_PLAUSIBLE_MEMORY_GB


def gb_hint_for_bytes(value: int) -> int:
    return max(1, math.ceil(value / BYTES_PER_GB))


def price_units_for_yuan(yuan: float) -> int:
    return round(yuan * PRICE_SCALE)


def yuan_from_price_units(value: int) -> float:
    return value / PRICE_SCALE
