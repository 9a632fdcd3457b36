"""GPU stock in one shape, whichever of the documented shapes the platform sent.

Known shapes of `data`:
- a list of single-key objects: `[{"RTX 4090": {"idle_gpu_num": 5, "total_gpu_num": 8}}]`
  (older private docs, and the public region endpoint);
- an object keyed by GPU name: `{"RTX 4090": {"gpu_name": "RTX 4090", "idle_gpu_num": 5, ...}}`
  (seen on a live private cluster).
Both normalize to `{"RTX 4090": {"idle": 5, "total": 8}}`.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

StockByGpu = dict[str, dict[str, int]]


def _count(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def _entries(data: Any) -> Iterable[tuple[str, dict[str, Any]]]:
    if isinstance(data, dict):
        for name, figures in data.items():
            if isinstance(figures, dict):
                yield str(figures.get("gpu_name") or name), figures
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                continue
            if "gpu_name" in item and "idle_gpu_num" in item:  # flat record, defensive
                yield str(item["gpu_name"]), item
                continue
            for name, figures in item.items():
                if isinstance(figures, dict):
                    yield str(name), figures


def normalize_stock(data: Any) -> StockByGpu:
    stock: StockByGpu = {}
    for name, figures in _entries(data):
        entry = stock.setdefault(name, {"idle": 0, "total": 0})
        entry["idle"] += _count(figures.get("idle_gpu_num"))
        entry["total"] += _count(figures.get("total_gpu_num"))
    return stock


def merge_stock(parts: Iterable[StockByGpu]) -> StockByGpu:
    merged: StockByGpu = {}
    for part in parts:
        for name, figures in part.items():
            entry = merged.setdefault(name, {"idle": 0, "total": 0})
            entry["idle"] += figures["idle"]
            entry["total"] += figures["total"]
    return merged


def requested_stock(stock: StockByGpu, gpu_names: Iterable[str]) -> StockByGpu:
    """The part of the stock a config asked for (names are exact, as the API matches them)."""
    return {name: stock[name] for name in gpu_names if name in stock}


def first_fit(stock: StockByGpu, gpu_names: Iterable[str], gpu_num: int) -> str | None:
    """The first requested GPU type with enough idle cards, in the config's order."""
    for name in gpu_names:
        if stock.get(name, {}).get("idle", 0) >= gpu_num:
            return name
    return None



def similar_gpu_names(name: str, available: Iterable[str]) -> list[str]:
    """Models the user probably meant: "rtx 4090" -> "RTX 4090", "4090" -> "NVIDIA GeForce RTX 4090".

    Model numbers must agree: "RTX 3090" is one character from "RTX 4090" but a different
    card, and suggesting it would be worse than suggesting nothing.
    """

    def folded(text: str) -> str:
        return "".join(text.casefold().split())

    models = sorted(available)
    contained = [model for model in models if folded(name) in folded(model)]
    if contained:
        return contained
    by_folded = {folded(model): model for model in models}
    close = [by_folded[key] for key in difflib.get_close_matches(folded(name), list(by_folded), n=3, cutoff=0.6)]
    return [model for model in close if re.findall(r"\d+", model) == re.findall(r"\d+", name)]


# Vendor words a platform may or may not put in front of a model ("NVIDIA GeForce RTX 4090"
# on the private cloud, "RTX 4090" on the public one); they never tell two cards apart.
_VENDOR_WORDS = ("nvidia", "geforce")


def _model_key(name: str) -> str:
    words = name.casefold().split()
    while words and words[0] in _VENDOR_WORDS:
        words = words[1:]
    return "".join(words)


def same_model_names(name: str, available: Iterable[str]) -> list[str]:
    """The platform's names for the card `name` spells differently: equal once case, spaces
    and leading vendor words are ignored ("RTX 4090" -> ["NVIDIA GeForce RTX 4090"]).
    "RTX 4090 D" is another card and never matches "RTX 4090"."""
    key = _model_key(name)
    return sorted(model for model in available if model != name and _model_key(model) == key)
