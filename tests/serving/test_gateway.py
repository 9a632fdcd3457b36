"""The serving gateway in-process: policies, the replica table and queue, proxying, retries,
ejection, streaming failures, security, hostile clients, request totals that reconcile across
replicas that left. Upstreams are tiny aiohttp servers on loopback port 0; the simulator end
to end is in test_serve_gateway.py."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import time

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

import requests  # noqa: E402
from aiohttp import web  # noqa: E402

from helpers.loop_thread import item  # noqa: E402


def static(*items):
    from autodl_esd.serving.routing.sources import StaticSource

    return StaticSource(list(items))


def counting(name: str, hits: list, status: int = 200, delay: float = 0.0):
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        hits.append({"name": name, "path": request.path_qs, "headers": dict(request.headers), "body": body})
        if delay:
            await asyncio.sleep(delay)
        return web.json_response({"name": name}, status=status)

    return handler


# ---- load reports and policies -------------------------------------------------------------


def test_load_report_reads_vllm_prometheus_text_and_json():
    from autodl_esd.serving.routing.load_report import LoadReportError, parse_load_report

    text = ("# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{model_name="a"} 2.0\nvllm:num_requests_running{model_name="b"} 1.0\n'
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"a\"} 4.0\n")
    report = parse_load_report(text.encode(), "text/plain; version=0.0.4", at=1.0)
    assert (report.running, report.waiting, report.queue) == (3.0, 4.0, 7.0)
    assert parse_load_report(b'{"running": 1, "waiting": 5}', "application/json", at=0).queue == 6
    for bad in (b"<html>oops</html>", b'{"running": -1}', b'{"running": "x"}', b"[1, 2]", b"other_metric 1\n"):
        with pytest.raises(LoadReportError):
            parse_load_report(bad, "", at=0)


def table(policy_name="least_inflight", **kwargs):
    from autodl_esd.serving.routing.policies import POLICIES
    from autodl_esd.serving.routing.replicas import ReplicaTable

    return ReplicaTable(POLICIES[policy_name](random.Random(1)), **kwargs)


def test_queue_aware_scores_the_report_plus_what_was_sent_since():
    from autodl_esd.serving.routing.load_report import LoadReport

    t = table("queue_aware")
    t.update([item("a", "http://a"), item("b", "http://b")])
    a, b = t.replicas["a"], t.replicas["b"]
    t.record_report(a, LoadReport(running=1, waiting=5, at=time.monotonic()))
    t.record_report(b, LoadReport(running=1, waiting=0, at=time.monotonic()))
    picks = [t.try_start().replica.container_uuid for _ in range(5)]
    # b scores 1, 2, 3, 4, 5 after each send; a stays at 6
    assert picks == ["b"] * 5
    assert b.sent_since_report == 5
    t.record_report(b, LoadReport(running=6, waiting=3, at=time.monotonic()))
    assert b.sent_since_report == 0
    assert t.try_start().replica.container_uuid == "a"


def test_counts_never_go_negative_or_leak_when_a_replica_leaves_mid_request():
    t = table()
    t.update([item("a", "http://a")])
    tickets = [t.try_start() for _ in range(3)]
    t.update([])  # the replica leaves with three requests in flight
    assert "a" in t.draining and t.draining["a"].inflight == 3
    for ticket in tickets:
        t.finish(ticket, "failure")
        t.finish(ticket, "failure")  # twice is harmless
    assert t.draining == {} and tickets[0].replica.inflight == 0
    assert tickets[0].replica.outcomes["failure"] == 3


def test_withdrawn_replicas_stay_out_while_the_registry_still_lists_them():
    # Before a scale to zero the autoscaler withdraws the replicas; the registry keeps listing
    # the stopping containers for a moment, and a refresh must not route to them again.
    t = table()
    t.update([item("a", "http://a")])
    t.withdraw_all()
    t.update([item("a", "http://a")])
    assert t.replicas == {} and t.try_start() is None
    t.update([item("a", "http://a"), item("new", "http://new")])  # a replacement is usable
    assert sorted(t.replicas) == ["new"]
    t.update([item("new", "http://new")])  # "a" left the registry: nothing to remember
    assert t.withdrawn == set()
    t.withdraw_all()
    t.restore()  # the scale to zero failed: route to them again on the next update
    t.update([item("new", "http://new")])
    assert sorted(t.replicas) == ["new"]


def test_ejected_replica_waits_for_a_probe_then_returns():
    clock = [100.0]
    t = table(eject_seconds=5, probe_before_readmit=True, clock=lambda: clock[0])
    t.update([item("a", "http://a"), item("b", "http://b")])
    a = t.replicas["a"]
    t.eject(a, "test")
    assert [r.container_uuid for r in t.candidates()] == ["b"]
    clock[0] += 6
    assert t.due_for_probe() == [a]
    assert [r.container_uuid for r in t.candidates()] == ["b"]  # still out until a good probe
    t.readmit(a)
    assert {r.container_uuid for r in t.candidates()} == {"a", "b"}


def test_every_replica_ejected_still_serves_the_one_ejected_longest_ago():
    clock = [0.0]
    t = table(eject_seconds=30, clock=lambda: clock[0])
    t.update([item("a", "http://a"), item("b", "http://b")])
    t.eject(t.replicas["a"], "x")
    clock[0] += 1
    t.eject(t.replicas["b"], "y")
    assert [r.container_uuid for r in t.candidates()] == ["a"]
    assert t.candidates(frozenset({"a"}))[0].container_uuid == "b"


def test_queue_serves_in_order_when_room_appears_and_refuses_when_full():
    from autodl_esd.serving.routing.replicas import NoReplicas, Overloaded

    async def scenario():
        t = table(max_inflight_per_replica=1, max_queue=2, queue_timeout=5)
        t.update([item("a", "http://a")])
        first = await t.acquire()
        second = asyncio.create_task(t.acquire())
        third = asyncio.create_task(t.acquire())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await t.acquire()  # the queue holds two
        assert t.queued == 2
        t.finish(first, "success")
        got = await asyncio.wait_for(second, 10)
        assert not third.done()
        t.finish(got, "success")
        t.finish(await asyncio.wait_for(third, 10), "success")
        assert t.replicas["a"].inflight == 0

        empty = table(max_queue=4, queue_timeout=0.05)
        with pytest.raises(NoReplicas):
            await empty.acquire()
        # The queued request gets a long timeout before it starts waiting (a 50 ms one could
        # run out on a loaded machine before the scale-up below), and the scale-up comes
        # once it is really in the queue.
        empty.queue_timeout = 30
        late = asyncio.create_task(empty.acquire())
        while empty.queued == 0:
            await asyncio.sleep(0.001)
        empty.update([item("z", "http://z")])  # a scale-up serves the queued request
        assert (await asyncio.wait_for(late, 10)).replica.container_uuid == "z"

    asyncio.run(scenario())


# ---- proxying ------------------------------------------------------------------------------


def test_proxy_forwards_method_path_query_body_and_headers(loop_thread):
    hits: list = []
    url = loop_thread.upstream(counting("a", hits))
    gateway = loop_thread.gateway(static(item("ctr-a", url + "/root")))
    response = requests.post(gateway.url + "/v1/x?q=1&r=%2F", data=b"hello", timeout=5,
                             headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "X-Keep": "yes",
                                      "X-Forwarded-For": "10.0.0.9"})
    assert response.status_code == 200 and response.json() == {"name": "a"}
    assert response.headers["X-Served-By"] == "ctr-a"
    hit = hits[0]
    assert hit["path"] == "/root/v1/x?q=1&r=%2F" and hit["body"] == b"hello"
    assert hit["headers"]["X-Keep"] == "yes" and "X-Secret-Hop" not in hit["headers"]
    assert hit["headers"]["X-Forwarded-For"] == "10.0.0.9, 127.0.0.1"
    assert hit["headers"]["X-Forwarded-Proto"] == "http"


def dead_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_a_failure_is_retried_on_a_different_replica_and_the_failed_one_is_ejected(loop_thread):
    hits: list = []
    bad_hits: list = []
    good = loop_thread.upstream(counting("good", hits))
    unavailable = loop_thread.upstream(counting("busy", bad_hits, status=503))
    gateway = loop_thread.gateway(static(item("dead", dead_url()), item("busy", unavailable), item("good", good)),
                                  policy="round_robin", retries=2, eject_seconds=60)
    for _ in range(6):
        response = requests.post(gateway.url + "/p", data=b"payload", timeout=5)
        assert response.status_code == 200 and response.headers["X-Served-By"] == "good"
    assert len(hits) == 6 and all(hit["body"] == b"payload" for hit in hits)
    assert len(bad_hits) <= 1  # ejected after its first 503
    status = requests.get(gateway.url + "/_gateway/status", timeout=5).json()
    states = {r["container_uuid"]: r for r in status["replicas"]}
    assert states["dead"]["state"] == "ejected" and states["dead"]["ejections"] == 1
    assert status["totals"]["retries"] >= 2


def test_retries_exhausted_answer_502_in_the_error_shape(loop_thread):
    gateway = loop_thread.gateway(static(item("d1", dead_url()), item("d2", dead_url())), retries=5)
    response = requests.get(gateway.url + "/x", timeout=5)
    assert response.status_code == 502
    body = response.json()
    assert body["status"] == "error" and body["error_type"] == "upstream_error"
    assert sorted(body["details"]["tried"]) == ["d1", "d2"]  # each tried once, never twice


def test_a_response_that_started_is_never_retried_and_the_client_sees_the_cut(loop_thread):
    hits: list = []

    async def dies_mid_stream(request):
        hits.append(1)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.sleep(0.05)
        request.transport.close()  # the process died
        return response

    other: list = []
    gateway = loop_thread.gateway(static(item("dying", loop_thread.upstream(dies_mid_stream)),
                                         item("other", loop_thread.upstream(counting("other", other)))),
                                  policy="round_robin", retries=2)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # a hang would be a read timeout instead
        with requests.get(gateway.url + "/stream", stream=True, timeout=30) as response:
            assert response.headers["X-Served-By"] == "dying"
            for _ in response.iter_content(None):
                pass
    assert time.monotonic() - started < 30  # ended, not hung
    assert len(hits) == 1 and other == []  # not replayed anywhere
    # the next request goes elsewhere (the dying replica is ejected)
    assert requests.get(gateway.url + "/x", timeout=5).headers["X-Served-By"] == "other"


def test_streamed_chunks_reach_the_client_as_the_replica_writes_them(loop_thread):
    # The replica writes the rest only after the client has read the first event: a gateway
    # that buffered the answer would never deliver it (no timing involved, so no load can
    # make this flaky).
    first_read = asyncio.Event()
    waited: list = []

    async def held_stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 0\n\n")
        try:
            await asyncio.wait_for(first_read.wait(), 20)
            waited.append("client read the first event")
        except asyncio.TimeoutError:
            waited.append("timed out: the first event never reached the client")
        for index in range(1, 5):
            await response.write(f"data: {index}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    gateway = loop_thread.gateway(static(item("s", loop_thread.upstream(held_stream))))
    lines = []
    with requests.get(gateway.url + "/v1/completions", stream=True, timeout=30) as response:
        for line in response.iter_lines():
            if line:
                lines.append(line)
                if len(lines) == 1:
                    loop_thread.loop.call_soon_threadsafe(first_read.set)
    assert waited == ["client read the first event"]
    assert lines == [b"data: 0", b"data: 1", b"data: 2", b"data: 3", b"data: 4", b"data: [DONE]"]


def test_zero_replicas_queue_then_answer_503_no_replicas(loop_thread):
    gateway = loop_thread.gateway(static(), queue_timeout=0.3, max_queue=8)
    started = time.monotonic()
    response = requests.get(gateway.url + "/x", timeout=5)
    assert response.status_code == 503 and time.monotonic() - started >= 0.25
    assert response.json()["error_type"] == "no_replicas" and response.headers["Retry-After"].isdigit()


def test_zero_replicas_then_a_scale_up_serves_the_queued_request(loop_thread):
    from concurrent.futures import ThreadPoolExecutor

    source = static()
    hits: list = []
    url = loop_thread.upstream(counting("late", hits))
    gateway = loop_thread.gateway(source, queue_timeout=60, max_queue=8)
    with ThreadPoolExecutor(2) as pool:
        pending = pool.submit(requests.get, gateway.url + "/x", timeout=60)
        deadline = time.monotonic() + 30
        while loop_thread.call(lambda: gateway.table.queued) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gateway.status()["queue"]["depth"] == 1
        loop_thread.call(lambda: source.set([item("late", url)]))
        response = pending.result(60)
    assert response.status_code == 200 and response.headers["X-Served-By"] == "late"


def test_backpressure_answers_503_overloaded_with_retry_after(loop_thread):
    from concurrent.futures import ThreadPoolExecutor

    # The replica holds its one request until the test lets it go, so the slot stays taken
    # for as long as the test needs (three racing clients and a 0.5 s answer could see the
    # slot free again on a loaded machine).
    release = asyncio.Event()
    hits: list = []

    async def held(request):
        hits.append(request.path)
        await asyncio.wait_for(release.wait(), 30)
        return web.json_response({"name": "one"})

    gateway = loop_thread.gateway(static(item("one", loop_thread.upstream(held))),
                                  max_inflight_per_replica=1, max_queue=1, queue_timeout=0.2)

    def wait_until(condition, what):
        deadline = time.monotonic() + 30
        while not loop_thread.call(condition):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    with ThreadPoolExecutor(2) as pool:
        served = pool.submit(requests.get, gateway.url + "/x", timeout=60)
        wait_until(lambda: gateway.table.replicas["one"].inflight == 1, "the first request to take the slot")
        timed_out = requests.get(gateway.url + "/x", timeout=60)  # queued 0.2 s, the slot still taken
        # A long queue timeout from here on, so the next one is surely still queued when the
        # one after it finds the queue full.
        loop_thread.call(lambda: setattr(gateway.table, "queue_timeout", 60))
        queued = pool.submit(requests.get, gateway.url + "/x", timeout=60)
        wait_until(lambda: gateway.table.queued == 1, "a request to queue")
        full = requests.get(gateway.url + "/x", timeout=60)  # the queue holds one: refused at once
        assert hits == ["/x"]
        loop_thread.loop.call_soon_threadsafe(release.set)
        assert served.result(60).status_code == 200 and queued.result(60).status_code == 200
    for refused in (full, timed_out):
        assert refused.status_code == 503
        assert refused.json()["error_type"] == "overloaded" and "Retry-After" in refused.headers
    assert "排队已满" in full.json()["message"] and "排队超过" in timed_out.json()["message"]


# ---- security ------------------------------------------------------------------------------


def test_host_header_must_be_loopback(loop_thread):
    gateway = loop_thread.gateway(static())
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        response = requests.get(gateway.url + "/_gateway/status", headers={"Host": host}, timeout=5)
        assert response.status_code == 421 and response.json()["error_type"] == "bad_request"
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert requests.get(gateway.url + "/_gateway/status", headers={"Host": host}, timeout=5).status_code == 200
    allowed = loop_thread.gateway(static(), allowed_hosts=("gw.internal",))
    assert requests.get(allowed.url + "/_gateway/status", headers={"Host": "gw.internal:8000"}, timeout=5).status_code == 200


def test_auth_token_is_checked_stripped_and_the_autodl_token_never_forwarded(loop_thread):
    hits: list = []
    url = loop_thread.upstream(counting("a", hits))
    gateway = loop_thread.gateway(static(item("a", url)), auth_token="gateway-secret-0123456789",
                                  never_forward=("autodl-token-abcdef123456",))
    assert requests.get(gateway.url + "/x", timeout=5).status_code == 401
    assert requests.get(gateway.url + "/_gateway/status", timeout=5).status_code == 401
    assert requests.get(gateway.url + "/x", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    good = {"Authorization": "Bearer gateway-secret-0123456789", "X-Api-Key": "autodl-token-abcdef123456"}
    assert requests.get(gateway.url + "/x", headers=good, timeout=5).status_code == 200
    assert "Authorization" not in hits[0]["headers"] and "X-Api-Key" not in hits[0]["headers"]
    status = requests.get(gateway.url + "/_gateway/status", headers=good, timeout=5).text
    metrics = requests.get(gateway.url + "/_gateway/metrics", headers=good, timeout=5).text
    for text in (status, metrics):
        assert "gateway-secret" not in text and "autodl-token" not in text


def test_non_loopback_listen_requires_auth(run):
    code, out, _ = run("serve_gateway.py", "--registry-url", "http://127.0.0.1:9", "--listen", "0.0.0.0:0")
    assert code == 1 and out["error_type"] == "usage_error" and "--auth-token-env" in out["message"]


# ---- hostile clients -----------------------------------------------------------------------


# How long a raw client waits for the gateway to answer and close: far past the gateway's
# own bounds (0.5 s idle + 1 s linger in the test below), so only a gateway that never
# closes runs it out, however loaded the machine.
RAW_READ_TIMEOUT_SECONDS = 30.0


def raw_exchange(url: str, payload: bytes, timeout: float = RAW_READ_TIMEOUT_SECONDS) -> bytes:
    """Send `payload`, read until the gateway closes the connection; fails if it never does."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(payload)
        chunks = []
        try:
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # closed by the gateway, abruptly
        except socket.timeout:
            pytest.fail(f"the gateway kept the connection open {timeout:g} s: {payload[:60]!r}")
        return b"".join(chunks)


def test_malformed_and_hostile_requests_get_4xx_json_and_others_are_still_served(loop_thread):
    hits: list = []
    gateway = loop_thread.gateway(static(item("a", loop_thread.upstream(counting("a", hits)))), idle_timeout=0.5,
                                  body_idle_timeout=0.5)
    cases = {
        "bad content-length": b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        "huge content-length": b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999\r\n\r\nab",
        "oversized header": b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        "garbage": b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n",
    }
    for name, payload in cases.items():
        answer = raw_exchange(gateway.url, payload)
        status_line = answer.split(b"\r\n", 1)[0]
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), (name, answer[:200])
        body = answer.split(b"\r\n\r\n", 1)[1]
        assert json.loads(body)["status"] == "error", name
    # half a request, then silence: the gateway answers 408 or closes, within its bounds
    # (raw_exchange fails if the gateway leaves the connection open)
    stalled_body = raw_exchange(gateway.url, b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc")
    stalled_headers = raw_exchange(gateway.url, b"GET /x HTTP/1.1\r\nHost: 127.0.0")
    assert re.match(rb"HTTP/1\.[01] 408 ", stalled_body) and stalled_headers == b""
    assert hits == []  # nothing half-sent reached a replica
    assert requests.get(gateway.url + "/ok", timeout=5).status_code == 200


def test_status_and_metrics_use_the_documented_names(loop_thread):
    hits: list = []
    gateway = loop_thread.gateway(static(item("ctr-a", loop_thread.upstream(counting("a", hits)))))
    requests.get(gateway.url + "/x", timeout=5)
    metrics = requests.get(gateway.url + "/_gateway/metrics", timeout=5)
    assert metrics.headers["Content-Type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    families = {family.name: family for family in text_string_to_metric_families(metrics.text)}
    for name in ("http_server_request_duration_seconds", "http_server_active_requests", "gateway_replica_inflight",
                 "gateway_replica_requests", "gateway_replica_retries", "gateway_replica_ejections", "gateway_queue_depth",
                 "gateway_replicas", "gateway_registry_stale"):
        assert name in families, name
    assert families["http_server_request_duration_seconds"].type == "histogram"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["gateway_replica_requests"].samples}
    assert samples[("gateway_replica_requests_total", (("container_uuid", "ctr-a"), ("outcome", "success")))] == 1
    status = requests.get(gateway.url + "/_gateway/status", timeout=5).json()
    assert status["status"] == "success" and status["registry"]["stale"] is False
    assert set(status["load"]) >= {"inflight", "queued", "reported_running", "reported_waiting", "replicas_by_state"}
    assert requests.get(gateway.url + "/_gateway/nope", timeout=5).json()["error_type"] == "not_found"


def test_queue_aware_weights_the_queue_by_each_replicas_time_per_request():
    from autodl_esd.serving.routing.load_report import LoadReport

    t = table("queue_aware")
    t.update([item("fast", "http://f"), item("slow", "http://s")])
    fast, slow = t.replicas["fast"], t.replicas["slow"]
    fast.service_seconds, slow.service_seconds = 0.01, 0.06
    now = time.monotonic()
    t.record_report(fast, LoadReport(running=1, waiting=3, at=now))  # (4+1) x 10 ms = 50 ms
    t.record_report(slow, LoadReport(running=1, waiting=0, at=now))  # (1+1) x 60 ms = 120 ms
    assert t.try_start().replica is fast
    slow.service_seconds = None  # not measured yet: plain queue length decides
    assert t.try_start().replica is slow


def test_service_time_is_learned_from_requests_that_ran_alone():
    clock = [0.0]
    t = table(clock=lambda: clock[0])
    t.update([item("a", "http://a")])
    first, second = t.try_start(), t.try_start()  # the second had one request ahead of it
    clock[0] = 0.1
    t.finish(first, "success")
    clock[0] = 0.15  # served beside the first (a batching engine): says nothing of one alone
    t.finish(second, "success")
    assert first.ahead == 0 and second.ahead == 1
    assert t.replicas["a"].service_seconds == pytest.approx(0.1)
    third = t.try_start()
    clock[0] = 0.35
    t.finish(third, "success")  # alone again: 0.2 s, averaged in
    assert 0.1 < t.replicas["a"].service_seconds < 0.2


def test_until_a_request_ran_alone_the_plain_duration_stands_in():
    clock = [0.0]
    t = table(clock=lambda: clock[0])
    t.update([item("a", "http://a")])
    busy = [t.try_start() for _ in range(4)]
    clock[0] = 0.4
    t.finish(busy[-1], "success")  # three ahead of it: over-states, never under-states
    assert t.replicas["a"].service_seconds == pytest.approx(0.4)
    for ticket in busy[:-1]:
        t.finish(ticket, "cancelled")  # (a cancelled request teaches nothing)
    alone = t.try_start()
    clock[0] = 0.5
    t.finish(alone, "success")
    assert t.replicas["a"].service_seconds == pytest.approx(0.1)  # replaced, not averaged


def test_queue_aware_does_not_pile_onto_a_batching_replica():
    """A batching engine finishes ten requests in about the time of one: queue_aware must
    still send new work to the replica with the shorter queue (it piled 377 of 448 requests
    onto one of four replicas before)."""
    from autodl_esd.serving.routing.load_report import LoadReport

    clock = [0.0]
    t = table("queue_aware", clock=lambda: clock[0])
    t.update([item("a", "http://a"), item("b", "http://b")])
    a, b = t.replicas["a"], t.replicas["b"]
    for replica in (a, b):  # each served one request alone in 0.1 s
        t.record_report(replica, LoadReport(running=0, waiting=0, at=clock[0]))
        ticket = t.start(replica)
        clock[0] += 0.1
        t.finish(ticket, "success")
    t.record_report(a, LoadReport(running=9, waiting=0, at=clock[0]))
    batch = [t.start(a) for _ in range(9)]
    clock[0] += 0.12  # nine at once, barely slower than one
    for ticket in batch:
        t.finish(ticket, "success")
    t.record_report(a, LoadReport(running=5, waiting=0, at=clock[0]))
    t.record_report(b, LoadReport(running=0, waiting=0, at=clock[0]))
    assert a.service_seconds == pytest.approx(0.1) and b.service_seconds == pytest.approx(0.1)
    assert all(t.try_start().replica is b for _ in range(3))


def test_an_ejected_replica_returns_after_a_good_health_probe(loop_thread):
    state = {"healthy": False, "fail": True}
    probes: list = []

    async def flaky(request):
        if request.path == "/health":
            probes.append(state["healthy"])
            return web.json_response({"ok": state["healthy"]}, status=200 if state["healthy"] else 503)
        return web.json_response({}, status=503 if state["fail"] else 200)

    other: list = []
    gateway = loop_thread.gateway(static(item("flaky", loop_thread.upstream(flaky)),
                                         item("steady", loop_thread.upstream(counting("steady", other)))),
                                  policy="round_robin", eject_seconds=0.2, health_path="/health", interval=0.05)
    for _ in range(4):
        assert requests.get(gateway.url + "/x", timeout=5).headers["X-Served-By"] == "steady"

    def flaky_state():
        return next(r for r in gateway.status()["replicas"] if r["container_uuid"] == "flaky")

    assert flaky_state()["state"] == "ejected" and flaky_state()["ejections"] == 1
    # cool-down over, but its probes still fail: stays out (waits for two failed probes, so
    # at least one finished before the state is read, however slow the machine)
    deadline = time.monotonic() + 30
    while len(probes) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(probes) >= 2 and flaky_state()["state"] == "ejected"
    state.update(healthy=True, fail=False)
    deadline = time.monotonic() + 30
    while flaky_state()["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flaky_state()["state"] == "ready"
    served = {requests.get(gateway.url + "/x", timeout=5).headers["X-Served-By"] for _ in range(4)}
    assert served == {"flaky", "steady"}


def test_a_stale_registry_keeps_serving_the_last_good_set_and_says_so(loop_thread):
    hits: list = []
    source = static(item("a", loop_thread.upstream(counting("a", hits))))
    gateway = loop_thread.gateway(source)
    loop_thread.call(lambda: source.set([item("a", source.current().services[0]["url"])], stale_reason="查询 AutoDL 失败"))
    deadline = time.monotonic() + 30  # the gateway reads its source every 0.1 s
    while not gateway.status()["registry"]["stale"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert requests.get(gateway.url + "/x", timeout=5).status_code == 200
    status = requests.get(gateway.url + "/_gateway/status", timeout=5).json()
    assert status["registry"]["stale"] is True and "AutoDL" in status["registry"]["stale_reason"]
    assert "gateway_registry_stale 1.0" in requests.get(gateway.url + "/_gateway/metrics", timeout=5).text


def test_a_registry_file_that_stops_being_rewritten_is_flagged_stale(loop_thread, tmp_path):
    from autodl_esd.serving.registry.document import registry_document, write_atomically
    from autodl_esd.serving.routing.sources import FileSource

    hits: list = []
    url = loop_thread.upstream(counting("a", hits))
    uuid = "833f1cd5a764fa3-aaaaaaaaaa-00000001"
    path = tmp_path / "registry.json"
    write_atomically(path, registry_document("833f1cd5a764fa3", [item(uuid, url)]))
    # A generous stale_after, so a loaded machine cannot make the fresh file look stale; the
    # file is then aged past it (as if its watcher stopped 2 minutes ago) instead of waiting.
    source = FileSource(str(path), interval=0.05, stale_after=60)
    source.start()
    try:
        gateway = loop_thread.gateway(source)
        assert requests.get(gateway.url + "/x", timeout=5).headers["X-Served-By"] == uuid
        assert gateway.status()["registry"]["stale"] is False
        last_written = time.time() - 120  # the watcher that writes the file is gone (or its poll hangs)
        os.utime(path, (last_written, last_written))
        deadline = time.monotonic() + 30
        while not gateway.status()["registry"]["stale"] and time.monotonic() < deadline:
            time.sleep(0.02)
        registry = gateway.status()["registry"]
        assert registry["stale"] is True and "没有更新" in registry["stale_reason"]
        assert requests.get(gateway.url + "/x", timeout=5).status_code == 200  # the last good set
    finally:
        source.stop()


def test_the_in_process_watcher_never_lets_the_autodl_token_out(sim, run, monkeypatch):
    import argparse

    from autodl_esd.core import cli
    from autodl_esd.serving import serve

    instance = sim()
    code, out, _ = run("queue_submit.py", str(__import__("helpers").ROOT / "examples" / "replicaset-service.json"),
                       "--wait-running", "--interval", "0.05", "--quiet")
    assert code == 0, out
    args = argparse.Namespace(listen="127.0.0.1:0", auth_token_env=None, registry=None, registry_url=None, health_path=None,
                              load_path=None, policy="least_inflight", interval=0.1, retries=2, upstream_timeout=5.0,
                              max_inflight_per_replica=0, max_queue=4, queue_timeout=1.0, drain_seconds=1.0,
                              eject_seconds=1.0, allow_host=None, deployment_uuid=out["deployment_uuid"], name=None,
                              config=None, port=None)
    ctx = cli.Context(args=args, progress=__import__("autodl_esd.core.output", fromlist=["Progress"]).Progress(quiet=True))
    options = serve.build_options(args)
    source = serve.build_source(args, ctx, options)
    assert instance.token in options.never_forward and options.deployment_uuid == out["deployment_uuid"]
    assert source.description.endswith(out["deployment_uuid"])


def test_a_body_over_the_replay_limit_streams_through_and_is_not_retried(loop_thread):
    from autodl_esd.serving.routing.gateway import REPLAY_LIMIT_BYTES

    hits: list = []
    big = b"x" * (REPLAY_LIMIT_BYTES + 4096)
    good = loop_thread.upstream(counting("good", hits))
    gateway = loop_thread.gateway(static(item("good", good)), retries=2)
    response = requests.post(gateway.url + "/upload", data=big, timeout=10)
    assert response.status_code == 200 and hits[0]["body"] == big  # streamed through whole

    dead_first = loop_thread.gateway(static(item("dead", dead_url()), item("good", good)), policy="round_robin", retries=2)
    answers = [requests.post(dead_first.url + "/upload", data=big, timeout=10) for _ in range(2)]
    assert sorted(a.status_code for a in answers) == [200, 502]  # the one that hit the dead replica is not replayed
    small = requests.post(dead_first.url + "/upload", data=b"small", timeout=10)
    assert small.status_code == 200  # a replayable body is retried


def test_the_registry_endpoint_feeds_the_gateway_and_one_access_log_line_per_request(loop_thread):
    from autodl_esd.serving.routing.gateway import Gateway, GatewayOptions
    from autodl_esd.serving.registry.document import registry_document
    from autodl_esd.serving.registry.endpoint import RegistryEndpoint
    from autodl_esd.serving.routing.sources import UrlSource

    hits: list = []
    url = loop_thread.upstream(counting("a", hits))
    uuid = "833f1cd5a764fa3-aaaaaaaaaa-00000001"
    endpoint = RegistryEndpoint("127.0.0.1", 0, registry=lambda: registry_document("833f1cd5a764fa3", [item(uuid, url)])).start()
    source = UrlSource(endpoint.url, interval=0.05, stale_after=1.0)
    source.start()
    lines: list[str] = []
    gateway = Gateway(source, GatewayOptions(host="127.0.0.1", port=0, interval=0.1), access_log=lines.append)
    try:
        loop_thread.run(gateway.start())
        assert requests.get(gateway.url + "/v1/models?x=1", timeout=5).headers["X-Served-By"] == uuid
        assert gateway.status()["registry"]["source"].startswith("registry endpoint")
        assert len(lines) == 1 and '"GET /v1/models" 200' in lines[0] and f"served_by={uuid}" in lines[0]
    finally:
        loop_thread.run(gateway.stop())
        source.stop()
        endpoint.stop()


def test_a_replica_silent_past_the_upstream_timeout_is_retried_elsewhere(loop_thread):
    release = asyncio.Event()
    slow_hits: list = []
    fast_hits: list = []

    async def silent(request):  # answers only when the test ends
        slow_hits.append(request.path)
        await release.wait()
        return web.json_response({"name": "slow"})

    # 1 s: the fast replica answers in milliseconds, even on a loaded machine.
    gateway = loop_thread.gateway(static(item("slow", loop_thread.upstream(silent)),
                                         item("fast", loop_thread.upstream(counting("fast", fast_hits)))),
                                  policy="round_robin", upstream_timeout=1.0, retries=1)
    try:
        started = time.monotonic()
        served = [requests.get(gateway.url + "/x", timeout=60).headers["X-Served-By"] for _ in range(2)]
        assert served == ["fast", "fast"] and time.monotonic() - started < 30  # cut at 1 s, not held until the end
        assert len(slow_hits) == 1  # timed out once, then ejected
    finally:
        loop_thread.loop.call_soon_threadsafe(release.set)


@pytest.mark.parametrize("argv, fragment", [
    (["--listen", "nonsense"], "--listen"),
    (["--listen", "127.0.0.1:99999"], "--listen"),
    (["--health-path", "health"], "--health-path"),
    (["--registry-url", "ftp://x"], "--registry-url"),
    (["--auth-token-env", "GATEWAY_TEST_EMPTY"], "GATEWAY_TEST_EMPTY"),
    (["--interval", "-1"], "--interval"),
])
def test_bad_flags_are_usage_errors_before_anything_listens(run, monkeypatch, argv, fragment):
    monkeypatch.setenv("GATEWAY_TEST_EMPTY", "")
    source = [] if any(a.startswith("--registry") for a in argv) else ["--registry-url", "http://127.0.0.1:9"]
    code, out, _ = run("serve_gateway.py", *source, *argv, "--quiet")
    assert code == 1 and out["error_type"] == "usage_error" and fragment in out["message"] + out["hint"], out


def test_registry_health_false_is_skipped_and_null_means_not_probed_so_usable():
    t = table()
    t.update([item("probed-bad", "http://a", healthy=False), {**item("unprobed", "http://b"), "healthy": None}])
    assert [r.container_uuid for r in t.candidates()] == ["unprobed"]


def test_a_request_without_a_body_is_forwarded_without_one(loop_thread):
    hits: list = []
    gateway = loop_thread.gateway(static(item("a", loop_thread.upstream(counting("a", hits)))))
    requests.get(gateway.url + "/x", timeout=5)
    requests.post(gateway.url + "/y", data=b"", timeout=5)  # an explicit empty body stays an empty body
    assert "Content-Length" not in hits[0]["headers"] and "Transfer-Encoding" not in hits[0]["headers"]
    assert hits[1]["headers"].get("Content-Length") == "0"


# ---- totals that add up across replicas that left -------------------------------------------


def replica_handler(name: str, fail_first: int = 0):
    from aiohttp import web

    failures = [fail_first]

    async def handler(request):
        await request.read()
        if failures[0] > 0:
            failures[0] -= 1
            return web.json_response({"name": name}, status=503)
        return web.json_response({"name": name})

    return handler


def outcome_sum(entries: list[dict]) -> int:
    return sum(sum(entry["requests"].values()) for entry in entries)


def assert_reconciles(document: dict, totals: dict) -> None:
    """requests = sent + answered by the gateway = the answers by class; the replicas' outcomes
    (live and departed) = sent + retries."""
    assert totals["requests"] == totals["sent_to_replicas"] + totals["answered_by_gateway"] + totals.get("active", 0)
    assert totals["requests"] == sum(totals["by_status_class"].values()) + totals.get("active", 0)
    assert outcome_sum(document["replicas"]) + outcome_sum(document["departed_replicas"]) == \
        totals["sent_to_replicas"] + totals["retries"]


def test_gateway_totals_reconcile_after_a_replica_leaves_and_exclude_its_own_endpoints(loop_thread):
    import requests as http
    from autodl_esd.serving.routing.sources import StaticSource
    from helpers.loop_thread import item

    a = loop_thread.upstream(replica_handler("a"))
    b = loop_thread.upstream(replica_handler("b", fail_first=1))  # one 503: retried on a
    source = StaticSource([item("a", a), item("b", b)])
    gateway = loop_thread.gateway(source, policy="round_robin")
    for _ in range(6):
        assert http.get(gateway.url + "/v1/x", timeout=10).status_code == 200
    assert http.get(gateway.url + "/_gateway/metrics", timeout=10).status_code == 200
    refused = http.get(gateway.url + "/v1/x", headers={"Host": "evil.example"}, timeout=10)  # answered by the gateway
    assert refused.status_code == 421
    status = http.get(gateway.url + "/_gateway/status", timeout=10).json()
    # Idle: the status request itself is not a proxied request in flight.
    assert status["totals"]["active"] == 0 and status["load"]["active_requests"] == 0
    assert status["totals"]["requests"] == 7 and status["totals"]["gateway_endpoint_requests"] == 1  # this one counts when done
    assert status["totals"]["retries"] == 1 and status["totals"]["answered_by_gateway"] == 1
    assert_reconciles(status, status["totals"])

    source.set([item("a", a)])  # b leaves (a scale-down)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not loop_thread.call(lambda: "b" in gateway.table.departed):
        time.sleep(0.05)
    for _ in range(3):
        assert http.get(gateway.url + "/v1/x", timeout=10).status_code == 200
    status = http.get(gateway.url + "/_gateway/status", timeout=10).json()
    assert [entry["container_uuid"] for entry in status["departed_replicas"]] == ["b"]
    assert [entry["container_uuid"] for entry in status["replicas"]] == ["a"]
    departed = status["departed_replicas"][0]
    assert departed["requests"]["error"] == 1 and departed["retries"] == 1  # its 503, retried on a; then ejected
    assert status["totals"]["requests"] == 10 and status["totals"]["gateway_endpoint_requests"] == 2
    assert_reconciles(status, status["totals"])

    summary = loop_thread.call(gateway.summary)
    assert summary["requests"] == 10 and summary["departed_replicas"][0]["container_uuid"] == "b"
    assert_reconciles(summary, summary)
    metrics = http.get(gateway.url + "/_gateway/metrics", timeout=10).text
    # Prometheus keeps OpenTelemetry's meaning: this scrape is the one request in flight.
    assert "http_server_active_requests 1.0" in metrics


def test_a_replica_that_comes_back_continues_its_counts_and_is_no_longer_departed(loop_thread):
    import requests as http
    from autodl_esd.serving.routing.sources import StaticSource
    from helpers.loop_thread import item

    a = loop_thread.upstream(replica_handler("a"))
    source = StaticSource([item("a", a)])
    gateway = loop_thread.gateway(source)
    for _ in range(2):
        assert http.get(gateway.url + "/x", timeout=10).status_code == 200
    source.set([])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not loop_thread.call(lambda: "a" in gateway.table.departed):
        time.sleep(0.05)
    source.set([item("a", a)])
    while time.monotonic() < deadline and not loop_thread.call(lambda: "a" in gateway.table.replicas):
        time.sleep(0.05)
    assert http.get(gateway.url + "/x", timeout=10).status_code == 200
    summary = loop_thread.call(gateway.summary)
    assert summary["replicas"][0]["requests"]["success"] == 3 and summary["departed_replicas"] == []
    assert_reconciles(summary, summary)


def test_departed_replicas_beyond_the_kept_ones_are_summed_not_lost():
    from autodl_esd.serving.routing import replicas as replicas_module
    from autodl_esd.serving.routing.policies import POLICIES
    from helpers.loop_thread import item

    table = replicas_module.ReplicaTable(POLICIES["least_inflight"](random.Random(1)))
    kept = replicas_module.DEPARTED_KEPT
    for n in range(kept + 5):
        table.update([item(f"r{n}", f"http://r{n}")])
        ticket = table.try_start()
        table.finish(ticket, "success")
    table.update([])
    assert len(table.departed) == kept and table.departed_beyond["replicas"] == 5
    total = sum(r.outcomes["success"] for r in table.departed.values()) + table.departed_beyond["requests"]["success"]
    assert total == kept + 5


# ---- a follower of someone else's registry -------------------------------------------------


def test_a_follower_gateway_keeps_listening_and_says_why_there_are_no_replicas(tmp_path):
    """A gateway reading someone else's registry (file, URL, Redis) does not own the watch: it stays up."""
    pytest.importorskip("aiohttp")
    from helpers.loop_thread import LoopThread

    from autodl_esd.serving.routing.sources import FileSource

    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"status": "success", "deployment_uuid": "833f1cd5a764fa3", "generated_at": "2026-12-02T09:00:00+08:00",
                                    "services": [], "ended": "deployment_gone", "ended_reason": "部署 833f1cd5a764fa3 已不存在 (被删除)"}),
                        encoding="utf-8")
    source = FileSource(str(registry), 0.05, 1.0)
    source.start()
    loop = LoopThread()
    try:
        gateway = loop.gateway(source, interval=0.05, queue_timeout=30)  # answered at once all the same
        answer = requests.get(gateway.url + "/predict", timeout=10)  # not queued for 30 s: nothing will come
        assert answer.status_code == 503 and answer.json()["error_type"] == "no_replicas"
        assert answer.json()["details"]["ended"] == "deployment_gone"
        assert "已不存在" in answer.json()["message"]
        state = requests.get(gateway.url + "/_gateway/status", timeout=5).json()["registry"]
        assert state["ended"] == "deployment_gone" and state["stale"] is False
        assert gateway.ended_by is None
    finally:
        loop.close()
        source.stop()
