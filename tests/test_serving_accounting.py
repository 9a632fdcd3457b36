"""Serving numbers that must add up: the autoscaler's spend on the platform's clock (as
cost_report.py and the wallet count it), the gateway's request totals across replicas that
left, and decision lines that say why and when."""

from __future__ import annotations

import random
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest

from helpers import envelope, url

from autodl_esd.platform import api
from autodl_esd.core.http import ApiClient
from autodl_esd.core.settings import load_settings
from autodl_esd.core.clock import iso, parse_timestamp, platform_now
from autodl_esd.serving.autoscale_policy import AutoscaleConfig, Observed, PolicyState, Sample, decide

HOUR = 3600.0
DATE_RESOLUTION_SECONDS = 1.0  # the Date header's whole seconds (spend_meter's constant)


def SpendMeter():
    from autodl_esd.serving.spend_meter import SpendMeter as meter

    return meter()

UUID = "a1b2c3d4e5f6a7b"
GPU = "RTX 4090"


# ---- the spend meter -----------------------------------------------------------------------


def true_bill(times: list[float], rates: list[float]) -> float:
    """What the platform billed at these rates, each gap charged at the dearer end's rate."""
    return sum(max(rates[i - 1], rates[i]) * (times[i] - times[i - 1]) for i in range(1, len(times))) / HOUR


@pytest.mark.parametrize("seed", range(20))
def test_spend_on_whole_second_dates_is_never_under_and_off_by_at_most_a_second_per_rate_change(seed):
    rng = random.Random(seed)
    meter = SpendMeter()
    times, rates = [], []
    t = 1_800_000_000 + rng.random()
    rate = rng.choice([0.0, 2.0, 4.0])
    changes = 0
    for step in range(200):
        t += rng.uniform(0.3, 90.0)  # ticks from sub-second (a loaded sim) to a minute and a half
        if rng.random() < 0.1:
            rate, changes = rng.choice([0.0, 2.0, 4.0, 6.0]), changes + 1
        times.append(t)
        rates.append(rate)
        meter.observe(rate, float(int(t)), local_at=step * 2.0, real_at=step * 2.0)  # the Date header: whole seconds
        billed = true_bill(times, rates)
        assert meter.spent >= billed - 1e-12
        # At most one resolution step per run of equal charged rates (a run per change, plus one).
        assert meter.spent <= billed + (2 * changes + 2) * 6.0 * DATE_RESOLUTION_SECONDS / HOUR + 1e-12
    assert meter.clock == "platform"


def test_spend_gaps_telescope_instead_of_losing_the_fraction_each_tick():
    meter = SpendMeter()
    for i in range(1000):  # 0.7 platform seconds per tick: most gaps read 0 or 1 whole seconds
        meter.observe(3600.0, float(int(i * 0.7)), local_at=i * 0.7, real_at=i * 0.7)
    # 999 gaps x 0.7 s at 3600 yuan/h = 699.3 yuan; whole-second differences telescope to 699.
    assert 699.3 <= meter.spent <= 699.3 + 1.0


def test_a_platform_time_that_steps_back_charges_nothing_negative_and_nothing_twice():
    meter = SpendMeter()
    for at in (100.0, 160.0, 159.0, 220.0):  # the third answer's Date is a second behind
        meter.observe(3600.0, at, local_at=0.0, real_at=0.0)
        assert meter.integrated >= 0
    assert meter.integrated == pytest.approx(120.0)  # 100 -> 220, each second once


def test_without_a_date_header_the_local_clock_measures_the_gap_and_says_so():
    meter = SpendMeter()
    meter.observe(7200.0, None, local_at=10.0, real_at=10.0)
    meter.observe(7200.0, None, local_at=12.0, real_at=12.0)
    assert meter.integrated == pytest.approx(4.0) and meter.clock == "local"
    shown = meter.shown()
    assert shown["spend_clock"] == "local" and "clock_note" not in shown and "spent_since" not in shown


def test_a_platform_clock_at_another_pace_is_measured_and_named():
    meter = SpendMeter()
    for second in range(4):  # 30 platform seconds per real second, like the simulator's --speed 30
        meter.observe(2.0, 1_800_000_000.0 + 30 * second, local_at=second, real_at=second)
    shown = meter.shown()
    assert shown["spend_clock"] == "platform" and shown["platform_clock_rate"] == pytest.approx(30.0)
    assert "30 倍速" in shown["clock_note"] and "真实秒数" in shown["clock_note"]
    assert shown["spent_since"] == "2027-01-15T16:00:00+08:00"
    steady = SpendMeter()
    for second in range(30):
        steady.observe(2.0, 1_800_000_000.0 + second, local_at=second, real_at=second)
    assert steady.platform_clock_rate == pytest.approx(1.0) and "clock_note" not in steady.shown()


# ---- the autoscaler's spend follows the platform's Date header -----------------------------


def deployment_record(replica_num: int) -> dict:
    return {"uuid": UUID, "name": "svc", "deployment_type": "ReplicaSet", "status": "running", "replica_num": replica_num,
            "template": {"gpu_name_set": [GPU], "gpu_num": 1, "price_to": 3000}}


def test_the_autoscaler_charges_platform_seconds_not_local_ones(mocked):
    """Two looks at the platform 2 local seconds apart whose Date headers are 60 s apart (a
    platform clock at 30x): two replicas at 2 yuan/h cost 4 yuan/h x 60 s, not x 2 s."""
    from autodl_esd.serving.autoscaler import Autoscaler, LoadSnapshot, ReplicaScaler

    containers = {"list": [{"uuid": f"{UUID}-0c0c0c0c0c-0000000{i}", "status": "running", "price": 2000} for i in range(2)],
                  "max_page": 1}
    start = datetime(2026, 12, 2, 1, 0, 0, tzinfo=timezone.utc)
    for seconds in (0, 60):
        date = {"Date": format_datetime(start + timedelta(seconds=seconds), usegmt=True)}
        mocked.add("POST", url(api.DEPLOYMENTS_PATH), json=envelope({"list": [deployment_record(2)], "max_page": 1}), headers=date)
        mocked.add("POST", url(api.CONTAINERS_PATH), json=envelope(containers), headers=date)
    local = [100.0]
    autoscaler = Autoscaler(ReplicaScaler(ApiClient(load_settings()), deployment_record(2)),
                            AutoscaleConfig(min_replicas=2, max_replicas=2), LoadSnapshot, clock=lambda: local[0],
                            emit=lambda record: None)
    autoscaler.tick()
    local[0] += 2.0
    record = autoscaler.tick()
    expected = 4.0 * 60 / HOUR
    # Above by the one-second allowance, plus the local time between an answer and its
    # reading (platform_now adds it: milliseconds, a second allowed for a loaded machine).
    assert expected <= autoscaler.spent <= expected + 4.0 * (DATE_RESOLUTION_SECONDS + 1.0) / HOUR
    assert record["spent_yuan"] == round(autoscaler.spent, 4)
    summary = autoscaler.summary()
    assert summary["spend_clock"] == "platform" and summary["spent_since"] == "2026-12-02T09:00:00+08:00"


# ---- against the simulator: the autoscaler's spend is what cost_report.py says ---------------

# The autoscaler tests' one 6-card machine and ReplicaSet, under this test's name.
from test_autoscaler import CLUSTER, REQUEST as AUTOSCALE_REQUEST  # noqa: E402

REQUEST = {**AUTOSCALE_REQUEST, "name": "spend-clock"}


def test_at_speed_the_autoscalers_spend_agrees_with_cost_report_for_the_same_window(sim, run):
    from autodl_esd.serving.autoscaler import Autoscaler, LoadSnapshot, ReplicaScaler

    instance = sim(cluster=CLUSTER)  # 200 platform seconds per real second
    client = ApiClient(load_settings())
    uuid = api.create_deployment(client, REQUEST)
    instance.wait_until(lambda: any(c["status"] == "running" for c in instance.containers(uuid)), 10)
    deployment = api.list_deployments(client, deployment_uuid=uuid)[0]
    busy = LoadSnapshot(inflight=4, requests_total=1)  # wants 2 replicas at target 2
    autoscaler = Autoscaler(ReplicaScaler(client, deployment), AutoscaleConfig(min_replicas=1, max_replicas=2, upscale_delay=0,
                                                                                look_back=0.1), lambda: busy,
                            emit=lambda record: None)
    first_look = iso(platform_now(client))
    deadline = time.monotonic() + 1.5  # ~300 platform seconds, a scale-up 1 -> 2 early on
    while time.monotonic() < deadline:
        autoscaler.tick()
        time.sleep(0.05)
    # What a user passes to cost_report.py --since; it starts within the platform second of
    # the first look.
    since = autoscaler.summary().get("spent_since", first_look)
    assert 0 <= (parse_timestamp(since) - parse_timestamp(first_look)).total_seconds() <= 5

    def reported() -> float:
        code, out, _ = run("cost_report.py", "--deployment-uuid", uuid, "--since", since, "--quiet")
        assert code == 0, out
        return out["totals"]["cost_yuan"]

    # The autoscaler's window ends at its last look: cost_report just before and just after
    # bracket it (each has its own "now"), so a slow machine cannot make this flaky.
    before = reported()
    autoscaler.tick()
    spent = autoscaler.spent
    after = reported()
    assert running_count(instance, uuid) == 2
    assert before > 0.1  # hundreds of platform seconds of 1-2 replicas at 2 yuan/h
    # Lower: never under the bill (cost_report rounds per container to 0.001 yuan).
    assert spent >= before - 0.002
    # Upper: the dearer rate for the gap in which the second replica started, and a second
    # per rate; a loaded machine's slower ticks make that gap longer, hence 15 %.
    assert spent <= after * 1.15 + 0.002
    summary = autoscaler.summary()
    assert summary["spend_clock"] == "platform" and summary["platform_clock_rate"] > 30
    assert "倍速" in summary["clock_note"]


def running_count(instance, uuid: str) -> int:
    return sum(1 for c in instance.containers(uuid) if c["status"] == "running")


# ---- decision wording ----------------------------------------------------------------------


def flat(load: float, until: float, step: float = 5.0) -> list:
    return [Sample(t, load) for t in range(0, int(until) + 1, int(step))]


def test_a_scale_up_trimmed_by_max_says_load_with_the_cap_beside_it():
    config = AutoscaleConfig(min_replicas=1, max_replicas=3, target_inflight=2, upscale_delay=10)
    decision, _ = decide(config, flat(7.6, 100), Observed(current=2), PolicyState(above_since=80), 100)
    shown = decision.as_dict()
    assert (shown["action"], shown["current"], shown["target"], shown["reason"]) == ("scale_up", 2, 3, "load")
    assert shown["wanted"] == 4 and shown["desired"] == 3 and shown["limited_by"] == ["max_replicas"]
    # At the cap with the load still pushing, the hold's reason is the cap.
    held, _ = decide(config, flat(7.6, 100), Observed(current=3), PolicyState(), 100)
    assert (held.action, held.reason) == ("hold", "max_replicas") and held.as_dict()["limited_by"] == ["max_replicas"]
    # A money cap that trims the wish is listed once, beside the load.
    capped, _ = decide(AutoscaleConfig(max_replicas=8, max_hourly_cost=6.5, upscale_delay=0), flat(100, 100),
                       Observed(current=1, price_per_replica=2.0), PolicyState(), 100)
    assert capped.reason == "load" and capped.as_dict()["limited_by"] == ["hourly_cost_cap"]
    # Within the bounds: no wanted, no limited_by.
    free, _ = decide(config, flat(4.4, 100), Observed(current=1), PolicyState(above_since=0), 100)
    assert free.reason == "load" and "wanted" not in free.as_dict() and "limited_by" not in free.as_dict()


def test_a_delay_hold_says_how_long_it_has_held_and_when_it_may_act():
    config = AutoscaleConfig(min_replicas=1, max_replicas=3, target_inflight=2, upscale_delay=10, downscale_delay=30)
    first, state = decide(config, flat(6, 100), Observed(current=1), PolicyState(), 100)
    assert first.as_dict()["reason"] == "upscale_delay"
    assert first.as_dict()["held_seconds"] == 0.0 and first.as_dict()["act_in_seconds"] == 10.0
    later, _ = decide(config, flat(6, 104), Observed(current=1), state, 104)
    assert later.as_dict()["held_seconds"] == 4.0 and later.as_dict()["act_in_seconds"] == 6.0
    down, _ = decide(config, flat(0.5, 100), Observed(current=3), PolicyState(below_since=88), 100)
    assert down.reason == "downscale_delay" and down.as_dict()["act_in_seconds"] == 18.0
    on_target, _ = decide(config, flat(4, 100), Observed(current=2), PolicyState(), 100)
    assert "act_in_seconds" not in on_target.as_dict() and "held_seconds" not in on_target.as_dict()


# ---- gateway totals ------------------------------------------------------------------------

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")


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
    from autodl_esd.serving.sources import StaticSource
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
    from autodl_esd.serving.sources import StaticSource
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
    from autodl_esd.serving import replicas as replicas_module
    from autodl_esd.serving.policies import POLICIES
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
