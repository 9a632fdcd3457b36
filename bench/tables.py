"""What the benchmarks share: percentiles of samples and a Markdown table on stdout."""

from __future__ import annotations

import sys


def percentile(samples: list[float], fraction: float) -> float:
    """The sample at `fraction` of the sorted list (nearest rank below); NaN for no samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def print_markdown_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()  # tables interleave with child processes' output
