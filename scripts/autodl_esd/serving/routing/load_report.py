"""A replica's own report of its queue: what `--load-path` answers, read into a `LoadReport`.

`parse_load_report` takes Prometheus text with vLLM's `vllm:num_requests_running` and
`vllm:num_requests_waiting` (samples summed over labels, e.g. several models), or JSON
`{"running": N, "waiting": M}`. The gateway polls it; `queue_aware` and the autoscaler read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
# A load report bigger than this is not a metrics page we understand; reading more would let
# one replica make every gateway poll allocate without bound.
MAX_LOAD_REPORT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LoadReport:
    """A replica's own view of its queue, and when (gateway's monotonic clock) it was read."""

    running: float
    waiting: float
    at: float

    @property
    def queue(self) -> float:
        return self.running + self.waiting


class LoadReportError(ValueError):
    """The load path answered something that is not a load report."""


def parse_load_report(body: bytes, content_type: str, at: float) -> LoadReport:
    """A LoadReport from a JSON body or Prometheus text; raises LoadReportError otherwise."""
    if len(body) > MAX_LOAD_REPORT_BYTES:
        raise LoadReportError(f"load report larger than {MAX_LOAD_REPORT_BYTES} bytes")
    text = body.decode("utf-8", "replace")
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as error:
            raise LoadReportError(f"load report is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise LoadReportError("JSON load report must be an object {running, waiting}")
        return LoadReport(_count(document.get("running"), "running"), _count(document.get("waiting"), "waiting"), at)
    from prometheus_client.parser import text_string_to_metric_families  # heavy: only for Prometheus text

    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (VLLM_RUNNING, VLLM_WAITING):
                    totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    except (ValueError, TypeError, IndexError) as error:
        raise LoadReportError(f"load report is neither JSON nor Prometheus text: {error}") from None
    if VLLM_RUNNING not in totals and VLLM_WAITING not in totals:
        raise LoadReportError(f"metrics carry neither {VLLM_RUNNING} nor {VLLM_WAITING}")
    return LoadReport(_count(totals.get(VLLM_RUNNING, 0.0), "running"), _count(totals.get(VLLM_WAITING, 0.0), "waiting"), at)


def _count(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LoadReportError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
