"""Time to first token and time per output token of streamed answers: the SSE event count
however the stream is cut into reads, the quantiles /_gateway/status reports, and the
gen_ai_server_* histograms per route and replica after a streamed request."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

import requests  # noqa: E402
from aiohttp import web  # noqa: E402
from hypothesis import given, strategies as st  # noqa: E402

from helpers.loop_thread import item  # noqa: E402

TOKENS = 6
STREAM = b"".join(b'data: {"choices": [{"delta": {"content": " tok%d"}}]}\n\n' % i for i in range(TOKENS)) + b"data: [DONE]\n\n"


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=30, unique=True))
def test_events_are_counted_once_however_the_stream_is_cut(cuts):
    from autodl_esd.serving.routing.stream_timing import SseClock

    clock = SseClock()
    edges = [0, *sorted(cuts), len(STREAM)]
    for moment, (start, stop) in enumerate(zip(edges, edges[1:])):
        clock.feed(STREAM[start:stop], float(moment))
    assert clock.events == TOKENS
    assert clock.time_to_first_token(-1.0) == clock.first_at + 1.0


def test_time_per_output_token_spreads_the_stream_over_its_events():
    from autodl_esd.serving.routing.stream_timing import SseClock

    clock = SseClock()
    events = STREAM.split(b"\n\n")
    for moment, event in enumerate(events[:-1]):  # one event per read, one second apart
        clock.feed(event + b"\n\n", 10.0 + moment)
    assert clock.events == TOKENS and clock.time_to_first_token(9.5) == 0.5
    assert clock.time_per_output_token() == 1.0  # 5 seconds between 6 events ([DONE] at 16 is not one)
    one = SseClock()
    one.feed(b"data: x\n\n", 1.0)
    assert one.time_per_output_token() is None and SseClock().time_to_first_token(0.0) is None


@pytest.mark.parametrize("q, counts, expected", [
    (0.5, [0, 4, 0], 1.5),  # bounds (1, 2): all four in (1, 2]: the median is halfway
    (0.5, [2, 2, 0], 1.0),
    (0.95, [0, 0, 3], 2.0),  # in +Inf: the highest finite bound
    (0.5, [0, 0, 0], None),
])
def test_quantiles_interpolate_inside_their_bucket_like_prometheus(q, counts, expected):
    from autodl_esd.serving.routing.metrics import histogram_quantile

    assert histogram_quantile(q, (1.0, 2.0), counts) == expected


def sse_upstream(loop_thread):
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.path.endswith("/plain"):
            return web.json_response({"ok": True})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in STREAM.split(b"\n\n")[:-1]:
            await response.write(event + b"\n\n")
            await asyncio.sleep(0.002)  # separate reads at the gateway; nothing asserts on time
        return response

    return loop_thread.upstream(handler)


def samples(url: str, name: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/_gateway/metrics", timeout=5).text
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def test_streamed_answers_fill_the_histograms_per_route_and_replica(loop_thread):
    from autodl_esd.serving.routing.sources import StaticSource

    gateway = loop_thread.gateway(None, routes=[("qwen", StaticSource([item("q1", sse_upstream(loop_thread))]), {"model": "qwen"}),
                                                ("bge", StaticSource([item("b1", sse_upstream(loop_thread))]), {"model": "bge"})])
    for path in ("/v1/chat/completions", "/v1/chat/completions", "/plain"):
        with requests.post(gateway.url + path, json={"model": "qwen", "stream": True}, stream=True, timeout=10) as response:
            assert response.status_code == 200
            body = b"".join(response.iter_content(None))
    assert body == b'{"ok": true}'
    key = (("container_uuid", "q1"), ("route", "qwen"))
    assert samples(gateway.url, "gen_ai_server_time_to_first_token_seconds_count") == {key: 2.0}  # the plain answer is not one
    assert samples(gateway.url, "gen_ai_server_time_per_output_token_seconds_count") == {key: 2.0}
    status = gateway.status()
    route = next(r for r in status["routes"] if r["route"] == "qwen")
    for latency in (route["latency"], route["replicas"][0]["latency"]):
        ttft = latency["time_to_first_token_seconds"]
        assert ttft["count"] == 2 and 0 < ttft["p50"] <= ttft["p95"] <= 10.0 and 0 < ttft["mean"] <= 10.0
        assert latency["time_per_output_token_seconds"]["count"] == 2
    other = next(r for r in status["routes"] if r["route"] == "bge")["latency"]["time_to_first_token_seconds"]
    assert other == {"count": 0, "mean": None, "p50": None, "p95": None}
    # The whole gateway: every route's streams together (the doc's 整体 figure).
    assert status["latency"]["time_to_first_token_seconds"]["count"] == 2
    assert status["latency"]["time_to_first_token_seconds"]["p50"] == route["latency"]["time_to_first_token_seconds"]["p50"]


def test_one_deployment_keeps_its_label_set_and_a_departed_replica_leaves_no_series(loop_thread):
    from autodl_esd.serving.routing.sources import StaticSource

    source = StaticSource([item("s1", sse_upstream(loop_thread))])
    gateway = loop_thread.gateway(source)
    with requests.post(gateway.url + "/v1/completions", json={"stream": True}, stream=True, timeout=10) as response:
        b"".join(response.iter_content(None))
    assert samples(gateway.url, "gen_ai_server_time_to_first_token_seconds_count") == {(("container_uuid", "s1"),): 1.0}
    assert gateway.status()["latency"]["time_to_first_token_seconds"]["count"] == 1
    loop_thread.call(lambda: (source.set([]), gateway._refresh_registry(), gateway.table.departed.clear()))
    assert samples(gateway.url, "gen_ai_server_time_to_first_token_seconds_count") == {}


def test_the_mean_is_exact_where_the_buckets_only_estimate_and_the_exit_summary_keeps_it(loop_thread):
    from autodl_esd.serving.routing.sources import StaticSource

    gateway = loop_thread.gateway(StaticSource([item("s1", sse_upstream(loop_thread))]))
    for seconds in (0.021, 0.022, 0.023):  # all inside one bucket (0.02-0.04 s)
        gateway._metrics.observe_stream(gateway.default_route.name, "s1", seconds, None)
    ttft = gateway.status()["latency"]["time_to_first_token_seconds"]
    assert ttft["count"] == 3 and ttft["mean"] == pytest.approx(0.022)
    assert ttft["p50"] != pytest.approx(0.022)  # interpolated inside the bucket, as Prometheus does
    assert gateway.summary()["latency"]["time_to_first_token_seconds"] == ttft
