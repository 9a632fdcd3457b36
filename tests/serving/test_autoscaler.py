"""The autoscaler's actuator and control loop: `responses` for the platform's answers we
cannot provoke in the simulator (a refused replica_num 0, an ambiguous PUT), and the
in-process simulator for the rest, with simulated time moved by hand (`advance`), so a
600 s downscale delay costs no real time. Its spend follows the platform's clock (the
Date header) and agrees with cost_report.py; the meter itself is in test_spend_meter.py.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from responses import matchers

from helpers import envelope, url

from autodl_esd.platform import api
from autodl_esd.core.clock import iso, parse_timestamp, platform_now
from autodl_esd.core.http import ApiClient
from autodl_esd.core.settings import load_settings
from autodl_esd.serving.autoscale.policy import AutoscaleConfig
from autodl_esd.serving.autoscale.controller import Autoscaler, LoadSnapshot, ReplicaLoad, load_of
from autodl_esd.serving.autoscale.scaler import ReplicaScaler, startup_bounds

UUID = "a1b2c3d4e5f6a7b"
GPU = "RTX 4090"
HOUR = 3600.0
DATE_RESOLUTION_SECONDS = 1.0  # the Date header's whole seconds (spend_meter's constant)
# One machine of 6 cards at 2 yuan per card-hour: small enough to run out of stock.
CLUSTER = {
    "machines": [{"machine_id": "0c0c0c0c0c", "region": "westDC2", "gpu_name": GPU, "gpu_num": 6, "cpu_num": 48,
                  "memory_gb": 240, "price": 2000, "max_cuda": 124, "latency_seconds": 0.0}],
    "images": [{"image_uuid": "image-db8346e037", "name": "llm"}],
}
REQUEST = {
    "name": "autoscale-test", "deployment_type": "ReplicaSet", "replica_num": 1, "reuse_container": False,
    "container_template": {"gpu_name_set": [GPU], "gpu_num": 1, "cuda_v": 118, "cpu_num_from": 1, "cpu_num_to": 100,
                           "memory_size_from": 1, "memory_size_to": 256, "price_from": 100, "price_to": 3000,
                           "image_uuid": "image-db8346e037", "cmd": "python server.py --port 6006"},
}
STEP = 5.0  # simulated seconds per controller tick


def deployment_record(replica_num: int, **extra) -> dict:
    return {"uuid": UUID, "name": "svc", "deployment_type": "ReplicaSet", "status": "running", "replica_num": replica_num,
            "template": {"gpu_name_set": [GPU], "gpu_num": 1, "price_to": 3000}, **extra}


def client() -> ApiClient:
    return ApiClient(load_settings())


# ---- load signal ------------------------------------------------------------------------


def test_load_counts_queue_plus_the_larger_of_our_inflight_and_the_replicas_report():
    snapshot = LoadSnapshot(queued=3, inflight=2, replicas=(ReplicaLoad("a", inflight=2, reported=5), ReplicaLoad("b", inflight=0, reported=None)))
    assert load_of(snapshot) == 3 + 5
    # A report older than our own requests: our count wins.
    assert load_of(LoadSnapshot(inflight=4, replicas=(ReplicaLoad("a", inflight=4, reported=1),))) == 4
    assert load_of(LoadSnapshot()) == 0


# ---- actuator with mocked HTTP ------------------------------------------------------------


def list_deployments_returns(mocked, replica_num: int) -> None:
    mocked.add("POST", url(api.DEPLOYMENTS_PATH), json=envelope({"list": [deployment_record(replica_num)], "max_page": 1}))


def test_set_replicas_reads_the_value_back(mocked):
    mocked.add("PUT", url(api.REPLICA_NUM_PATH), json=envelope(None),
               match=[matchers.json_params_matcher({"deployment_uuid": UUID, "replica_num": 3})])
    list_deployments_returns(mocked, 3)
    outcome = ReplicaScaler(client(), deployment_record(1)).set_replicas(3)
    assert outcome == {"requested_replica_num": 3, "took_effect": True, "verified": True}


def test_a_refused_set_replicas_took_no_effect(mocked):
    mocked.add("PUT", url(api.REPLICA_NUM_PATH), json=envelope(None, code="BadRequest", msg="replica_num 必须大于 0"))
    outcome = ReplicaScaler(client(), deployment_record(1)).set_replicas(0)
    assert outcome["took_effect"] is False and outcome["refused"] is True


def test_a_lost_answer_is_read_back_and_reported_not_resent(mocked, monkeypatch):
    from autodl_esd.platform import effects

    now = [0.0]
    monkeypatch.setattr(effects, "_now", lambda: now[0])
    monkeypatch.setattr(effects, "_sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    for _ in range(4):  # every retry of the idempotent PUT times out with a 504
        mocked.add("PUT", url(api.REPLICA_NUM_PATH), status=504, json=envelope(None, code="GatewayTimeout"))
    mocked.add("POST", url(api.DEPLOYMENTS_PATH), json=envelope({"list": [deployment_record(1)], "max_page": 1}))
    outcome = ReplicaScaler(client(), deployment_record(1)).set_replicas(2)
    # Not visible within the grace period is no proof: it may still land, and is not resent.
    assert outcome["took_effect"] == "unknown" and outcome["refused"] is False
    assert outcome["last_seen"] == {"status": "running", "replica_num": 1}
    assert outcome["check"].startswith("python3 scripts/list_deployments.py")
    puts = [call for call in mocked.calls if call.request.method == "PUT"]
    assert len(puts) == 4  # the client's own retries of an absolute value; the scaler sent it once


@pytest.mark.parametrize(("listed", "took_effect"), [
    ({"status": 404, "body": "404 page not found"}, "unknown"),  # private cloud: no list to look at
    ({"json": envelope([{"machine_id": "0c0c0c0c0c"}])}, True),
])
def test_a_blacklisting_whose_answer_was_lost_is_true_only_when_seen(mocked, monkeypatch, listed, took_effect):
    from autodl_esd.platform import effects

    now = [0.0]
    monkeypatch.setattr(effects, "_now", lambda: now[0])
    monkeypatch.setattr(effects, "_sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    mocked.add("POST", url(api.BLACKLIST_PATH), status=503, json=envelope(None, code="ServiceUnavailable"))
    mocked.add("GET", url(api.BLACKLIST_PATH), **listed)
    outcome = ReplicaScaler(client(), deployment_record(1)).blacklist(f"{UUID}-0c0c0c0c0c-00000001", "0c0c0c0c0c")
    assert outcome["took_effect"] == took_effect
    assert outcome.get("refused", False) is False  # a lost answer is never a refusal


def test_zero_refused_falls_back_to_one_and_says_so_once(mocked):
    """The platform's acceptance of replica_num 0 is unsettled: a refusal means the floor is 1."""
    containers = {"list": [{"uuid": f"{UUID}-0c0c0c0c0c-0000000{i}", "status": "running", "price": 2000, "machine_id": "0c0c0c0c0c"} for i in range(2)], "max_page": 1}
    mocked.add("POST", url(api.DEPLOYMENTS_PATH), json=envelope({"list": [deployment_record(2)], "max_page": 1}))
    mocked.add("POST", url(api.CONTAINERS_PATH), json=envelope(containers))
    mocked.add("PUT", url(api.REPLICA_NUM_PATH), json=envelope(None, code="BadRequest", msg="副本数必须大于0"),
               match=[matchers.json_params_matcher({"deployment_uuid": UUID, "replica_num": 0})])
    mocked.add("PUT", url(api.REPLICA_NUM_PATH), json=envelope(None),
               match=[matchers.json_params_matcher({"deployment_uuid": UUID, "replica_num": 1})])
    mocked.add("POST", url(api.DEPLOYMENTS_PATH), json=envelope({"list": [deployment_record(1)], "max_page": 1}))
    logs, lines = [], []
    now = [1000.0]
    config = AutoscaleConfig(min_replicas=0, max_replicas=4, scale_to_zero_after=60, budget=0.0)
    scaler = Autoscaler(ReplicaScaler(client(), deployment_record(2)), config, LoadSnapshot, clock=lambda: now[0],
                        emit=lines.append, log=logs.append)
    record = scaler.tick()
    assert record["zero_refused"] is True and record["target"] == 1 and record["applied"] is True
    assert record["outcome"]["fallback_from"] == 0
    assert scaler.zero_refused and len([log for log in logs if "replica_num 0" in log]) == 1
    assert lines[-1]["action"] == "scale_down"


def test_no_stock_keeps_the_scale_up_pending_without_any_mutation(mocked):
    mocked.add("POST", url(api.DEPLOYMENTS_PATH), json=envelope({"list": [deployment_record(1)], "max_page": 1}))
    mocked.add("POST", url(api.CONTAINERS_PATH), json=envelope({"list": [{"uuid": f"{UUID}-0c0c0c0c0c-00000001", "status": "running", "price": 2000}], "max_page": 1}))
    mocked.add("GET", url(api.GLOBAL_STOCK_PATH), json=envelope([{GPU: {"idle_gpu_num": 0, "total_gpu_num": 8}}]))
    lines = []
    config = AutoscaleConfig(max_replicas=4, upscale_delay=0)
    busy = LoadSnapshot(inflight=8, requests_total=8)
    scaler = Autoscaler(ReplicaScaler(client(), deployment_record(1)), config, lambda: busy, clock=lambda: 100.0, emit=lines.append)
    record = scaler.tick()
    assert record["action"] == "scale_up" and record["applied"] is False
    assert record["pending_reason"] == "no_stock" and record["last_stock"] == {GPU: {"idle": 0, "total": 8}}
    assert scaler.status()["pending_reason"] == "no_stock"
    # No PUT was registered: the strict mock would have failed on any mutation.


def test_startup_bounds_say_what_the_autoscaler_may_spend():
    scaler = ReplicaScaler(None, deployment_record(1))
    bounds = startup_bounds(AutoscaleConfig(min_replicas=0, max_replicas=10, max_hourly_cost=7), scaler, 1)
    assert bounds["price_per_replica_yuan"] == 3.0  # the template's price_to before a container runs
    assert bounds["effective_max_replicas"] == 2 and bounds["max_hourly_cost_yuan"] == 6.0
    assert bounds["scale_to_zero_after"] == 600


# ---- the autoscaler's spend follows the platform's Date header -----------------------------


def test_the_autoscaler_charges_platform_seconds_not_local_ones(mocked):
    """Two looks at the platform 2 local seconds apart whose Date headers are 60 s apart (a
    platform clock at 30x): two replicas at 2 yuan/h cost 4 yuan/h x 60 s, not x 2 s."""
    from autodl_esd.serving.autoscale.controller import Autoscaler, LoadSnapshot
    from autodl_esd.serving.autoscale.scaler import ReplicaScaler

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

# This file's one 6-card machine and ReplicaSet, under this test's name.
SPEND_CLOCK_REQUEST = {**REQUEST, "name": "spend-clock"}


def test_at_speed_the_autoscalers_spend_agrees_with_cost_report_for_the_same_window(sim, run):
    from autodl_esd.serving.autoscale.controller import Autoscaler, LoadSnapshot
    from autodl_esd.serving.autoscale.scaler import ReplicaScaler

    instance = sim(cluster=CLUSTER)  # 200 platform seconds per real second
    client = ApiClient(load_settings())
    uuid = api.create_deployment(client, SPEND_CLOCK_REQUEST)
    instance.wait_until(lambda: any(c["status"] == "running" for c in instance.containers(uuid)), 10)
    deployment = api.list_deployments(client, deployment_uuid=uuid)[0]
    busy = LoadSnapshot(inflight=4, requests_total=1)  # wants 2 replicas at target 2
    autoscaler = Autoscaler(ReplicaScaler(client, deployment), AutoscaleConfig(min_replicas=1, max_replicas=2, upscale_delay=0,
                                                                                look_back=0.1), lambda: busy,
                            emit=lambda record: None)
    first_look = iso(platform_now(client))
    # ~300 platform seconds, a scale-up 1 -> 2 early on; on a loaded machine, on until the second
    # replica runs (bounded), so the window holds both rates however slow the ticks were.
    started = time.monotonic()
    while time.monotonic() < started + 1.5 or (running_count(instance, uuid) < 2 and time.monotonic() < started + 30):
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


# ---- what it says when it ends and before anything runs --------------------------------------


def test_autoscaler_summary_after_deployment_ended_does_not_claim_a_size_left_running():
    from autodl_esd.serving.autoscale.controller import Autoscaler

    autoscaler = Autoscaler.__new__(Autoscaler)  # summary() reads only its counters
    from autodl_esd.serving.autoscale.spend_meter import SpendMeter

    autoscaler.view, autoscaler.change_in_flight, autoscaler.changes = None, None, 0
    autoscaler.meter, autoscaler.zero_refused, autoscaler.blacklist_candidates = SpendMeter(), False, {}
    for ended in ("deployment_stopped", "deployment_gone"):
        summary = autoscaler.summary(ended)
        assert summary["left_at_last_size"] is False and summary["deployment_ended"] == ended
        assert "最后的副本数" not in summary["note"] and "不再产生费用" in summary["note"]
    assert autoscaler.summary()["left_at_last_size"] is True  # Ctrl-C: the size is left as it was


def test_before_any_container_runs_a_replica_costs_up_to_price_to_times_its_cards():
    from autodl_esd.serving.autoscale.policy import AutoscaleConfig
    from autodl_esd.serving.autoscale.scaler import ReplicaScaler, startup_bounds

    deployment = {"uuid": "d" * 15, "name": "svc", "deployment_type": "ReplicaSet", "status": "running", "replica_num": 1,
                  "template": {"gpu_name_set": [GPU], "gpu_num": 2, "price_from": 100, "price_to": 3000}}
    bounds = startup_bounds(AutoscaleConfig(min_replicas=1, max_replicas=3, max_hourly_cost=13), ReplicaScaler(None, deployment), 1)
    assert bounds["price_source"] == "template_price_to" and bounds["price_per_replica_yuan"] == 6.0  # 3 yuan x 2 cards
    assert bounds["effective_max_replicas"] == 2  # 13 yuan/h buys two 6-yuan replicas, not four 3-yuan ones
    assert bounds["worst_case_hourly_yuan"] == 18.0 and bounds["worst_case"]["gpu_num"] == 2


# ---- control loop against the simulator ------------------------------------------------------


class Harness:
    """A deployment on the simulator, an autoscaler on the simulator's clock, a scripted load."""

    def __init__(self, instance, config: AutoscaleConfig, replica_num: int = 1, **kwargs):
        self.sim = instance
        body = {**REQUEST, "replica_num": replica_num}
        self.client = client()
        self.deployment_uuid = api.create_deployment(self.client, body)
        self.advance(40)  # the first containers start
        deployment = next(d for d in api.list_deployments(self.client, deployment_uuid=self.deployment_uuid))
        self.load = 0.0
        self.requests = 0
        self.lines: list[dict] = []
        self.logs: list[str] = []
        self.scaler = Autoscaler(ReplicaScaler(self.client, deployment, log=self.logs.append), config, self.snapshot,
                                 clock=instance.now, emit=self.lines.append, log=self.logs.append, **kwargs)
        self.history: list[tuple[float, int, int]] = []

    def snapshot(self) -> LoadSnapshot:
        if self.load > 0:
            self.requests += 1
        return LoadSnapshot(inflight=int(round(self.load)), requests_total=self.requests)

    def advance(self, seconds: float) -> None:
        self.sim.advance(seconds)

    def run(self, seconds: float, load: float | None = None) -> None:
        if load is not None:
            self.load = load
        for _ in range(int(seconds / STEP)):
            self.advance(STEP)
            record = self.scaler.tick()
            view = self.scaler.view
            self.history.append((self.sim.now(), view.replica_num if view else -1, len(view.running) if view else -1))
            assert record["event"] == "autoscale"
            assert "at_local" in record and "at" not in record  # this machine's clock, labelled

    def running(self) -> int:
        return sum(1 for c in self.sim.containers(self.deployment_uuid) if c["status"] == "running")

    def replica_num(self) -> int:
        return next(d for d in self.sim.deployments() if d["uuid"] == self.deployment_uuid)["replica_num"]

    def changes(self) -> int:
        counts = [n for _, n, _ in self.history]
        return sum(1 for a, b in zip(counts, counts[1:]) if a != b)

    def creates(self) -> int:
        return sum(1 for method, path, _ in self.sim.request_log() if method == "POST" and path == api.DEPLOYMENT_PATH)


@pytest.fixture
def harness(sim):
    def make(config: AutoscaleConfig, replica_num: int = 1, cluster: dict = CLUSTER, **kwargs) -> Harness:
        # Simulated time moves only when the test advances it: at speed 1 every real second
        # of a loaded machine also counted, eating into the delays the tests measure (a
        # 100 s step under a 120 s downscale delay); 1 ms a real second is nothing.
        return Harness(sim(cluster=cluster, speed=0.001), config, replica_num, **kwargs)

    return make


def test_a_step_of_load_scales_up_within_delay_plus_start_and_back_down_one_step_at_a_time(harness):
    h = harness(AutoscaleConfig(min_replicas=1, max_replicas=5, upscale_delay=30, downscale_delay=120, look_back=30))
    h.run(60, load=1)
    assert h.replica_num() == 1
    stepped_at = h.sim.now()
    h.run(120, load=8)  # wants 4
    up_at = next(t for t, n, _ in h.history if n == 4)
    assert up_at - stepped_at <= 30 + 30 + STEP  # look-back fill + upscale delay + one tick
    running_at = next(t for t, _, running in h.history if running == 4)
    assert running_at - up_at <= 40  # the simulated start-up (~29 s) plus a tick
    h.run(100, load=1)
    assert h.replica_num() == 4  # the downscale delay has not passed
    h.run(900, load=1)
    assert h.replica_num() == 1
    downs = [t for (t, a, _), (_, b, _) in zip(h.history, h.history[1:]) if b < a]
    assert len(downs) == 3 and all(b - a >= 120 for a, b in zip(downs, downs[1:]))
    assert max(n for _, n, _ in h.history) <= 5 and h.creates() == 1  # only the test's own create
    summary = h.scaler.stop()
    assert summary["left_at_last_size"] is True and summary["final_replica_num"] == 1 == h.replica_num()
    assert all(json.dumps(line) for line in h.lines) and {"scale_up", "scale_down"} <= {line["action"] for line in h.lines}


def test_a_burst_is_clamped_to_max_and_max_is_never_exceeded(harness):
    h = harness(AutoscaleConfig(min_replicas=1, max_replicas=3, upscale_delay=10, downscale_delay=60))
    h.run(200, load=50)
    assert max(n for _, n, _ in h.history) == 3 and h.replica_num() == 3
    assert any(line.get("reason") == "max_replicas" for line in h.lines)


def test_no_stock_stays_pending_then_scales_when_other_tenants_free_the_cards(harness):
    h = harness(AutoscaleConfig(min_replicas=1, max_replicas=4, upscale_delay=10))
    assert h.sim.occupy(GPU, 5) == 5  # every free card on the machine
    h.run(60, load=8)
    assert h.replica_num() == 1
    pending = [line for line in h.lines if line.get("pending_reason") == "no_stock"]
    assert pending and pending[-1]["last_stock"][GPU]["idle"] == 0
    assert h.scaler.status()["pending"] is True
    h.sim.release_occupied()
    h.run(60)
    assert h.replica_num() == 4 and h.running() == 4
    assert h.scaler.status()["pending"] is False
    assert h.creates() == 1  # never a second deployment to find capacity


def test_partial_stock_places_what_it_can_and_keeps_the_rest_pending(harness):
    h = harness(AutoscaleConfig(min_replicas=1, max_replicas=5, upscale_delay=10))
    h.sim.occupy(GPU, 3)  # 2 cards stay free
    h.run(30, load=10)
    assert h.replica_num() == 3
    assert h.scaler.status()["pending_reason"] == "no_stock"


def test_scale_to_zero_when_idle_and_back_from_zero_at_once(harness):
    h = harness(AutoscaleConfig(min_replicas=0, max_replicas=3, scale_to_zero_after=120, downscale_delay=600), replica_num=2)
    h.run(60, load=1)
    assert h.replica_num() == 2
    h.run(200, load=0)
    assert h.replica_num() == 0
    zero = next(line for line in h.lines if line.get("target") == 0)
    assert zero["reason"] == "idle"
    h.run(STEP, load=1)  # the first request after zero
    assert h.replica_num() == 1
    assert any(line.get("reason") == "from_zero" for line in h.lines)


def test_hourly_cost_cap_holds_at_the_containers_price(harness):
    # 2 yuan per replica-hour: 5 yuan buys 2 replicas.
    h = harness(AutoscaleConfig(min_replicas=1, max_replicas=6, upscale_delay=10, max_hourly_cost=5))
    h.run(120, load=20)
    assert max(n for _, n, _ in h.history) == 2
    assert any(line.get("reason") == "hourly_cost_cap" for line in h.lines)


def test_budget_scales_to_the_floor_once_spent(harness):
    # 3 replicas x 2 yuan/h = 6 yuan/h: a 0.5 yuan budget lasts 5 simulated minutes.
    h = harness(AutoscaleConfig(min_replicas=1, max_replicas=3, upscale_delay=10, budget=0.5), replica_num=3)
    h.run(600, load=20)
    assert h.replica_num() == 1
    exhausted = [line for line in h.lines if line.get("reason") == "budget_exhausted"]
    assert exhausted and 0.5 <= exhausted[0]["spent_yuan"] < 0.5 + 6 * 2 * STEP / 3600  # overshoot: a tick or two
    assert len([log for log in h.logs if "预算" in log]) == 1  # said once
    # The floor keeps running (and costing) after that; nothing above it is bought again.
    counts = [n for _, n, _ in h.history]
    assert set(counts[counts.index(1):]) == {1}


def test_steady_noisy_load_against_the_simulator_changes_at_most_once(harness):
    import random

    rng = random.Random(3)
    h = harness(AutoscaleConfig(min_replicas=1, max_replicas=6, upscale_delay=30, downscale_delay=300), replica_num=2)
    for _ in range(120):
        h.run(STEP, load=max(0.0, 4.4 + rng.uniform(-1.5, 1.5)))
    assert h.changes() <= 1


def test_a_faulty_replica_is_replaced_without_lowering_the_count_and_its_machine_reported(harness):
    h = harness(AutoscaleConfig(min_replicas=2, max_replicas=2), replica_num=2)
    victims = [c["uuid"] for c in h.sim.containers(h.deployment_uuid) if c["status"] == "running"]
    failures = {victims[0]: 0}

    def snapshot() -> LoadSnapshot:
        replicas = [ReplicaLoad(c["uuid"], c["machine_id"], failures=failures.get(c["uuid"], 0))
                    for c in h.sim.containers(h.deployment_uuid) if c["status"] == "running"]
        return LoadSnapshot(replicas=tuple(replicas))

    h.scaler.load_source = snapshot
    h.run(STEP)
    failures[victims[0]] = 2  # two ejections: a retry absorbs them, not yet faulty
    h.run(STEP)
    assert not [line for line in h.lines if line["action"] == "replace"]
    failures[victims[0]] = 3
    h.run(STEP)
    replaced = [line for line in h.lines if line["action"] == "replace"]
    assert [line["container_uuid"] for line in replaced] == [victims[0]]
    assert replaced[0]["outcome"]["took_effect"] is True and h.replica_num() == 2
    assert not h.scaler.blacklist_candidates
    h.run(40)  # the replacement starts (same machine: the only one)
    replacement = next(c["uuid"] for c in h.sim.containers(h.deployment_uuid) if c["status"] == "running" and c["uuid"] not in victims)
    h.run(STEP)
    failures[replacement] = 3
    h.run(STEP)
    candidates = h.scaler.status()["blacklist_candidates"]
    assert candidates and candidates[0]["machine_id"] == "0c0c0c0c0c" and "blacklist" not in candidates[0]
    assert not any(m["blacklisted"] for m in h.sim.machines())  # only with --blacklist-faulty
    assert h.replica_num() == 2


def test_a_replica_failing_health_is_replaced_and_with_blacklist_faulty_its_machine_blacklisted(harness):
    h = harness(AutoscaleConfig(min_replicas=1, max_replicas=1), replica_num=1, blacklist_faulty=True)
    sick = set()

    def snapshot() -> LoadSnapshot:
        return LoadSnapshot(replicas=tuple(ReplicaLoad(c["uuid"], c["machine_id"], healthy=c["uuid"] not in sick)
                                           for c in h.sim.containers(h.deployment_uuid) if c["status"] == "running"))

    h.scaler.load_source = snapshot
    for _ in range(2):
        sick.update(c["uuid"] for c in h.sim.containers(h.deployment_uuid) if c["status"] == "running")
        h.run(50)
        assert not [line for line in h.lines if line["action"] == "replace" and line["container_uuid"] in sick - set(h.scaler.replaced)]
        h.run(20)  # past a minute of failing health: replaced; the replacement starts
        h.run(40)
    replaced = [line for line in h.lines if line["action"] == "replace"]
    assert len(replaced) == 2 and {line["reason"] for line in replaced} == {"failing_health"}
    candidate = h.scaler.status()["blacklist_candidates"][0]
    assert candidate["blacklist"]["took_effect"] is True
    assert [m["machine_id"] for m in h.sim.machines() if m["blacklisted"]] == ["0c0c0c0c0c"]
    assert h.replica_num() == 1


def test_converging_is_our_own_change_still_starting_and_gives_up_on_a_stuck_start():
    from autodl_esd.serving.autoscale.controller import STARTUP_PATIENCE_SECONDS
    from autodl_esd.serving.autoscale.scaler import PlatformView

    scaler = Autoscaler(ReplicaScaler(None, deployment_record(2)), AutoscaleConfig(), LoadSnapshot, clock=lambda: 0.0)
    starting = PlatformView(replica_num=2, status="running", running=[{}], starting=1, live=2, price_per_replica=None, hourly_rate=0)
    assert not scaler._converging(starting, 10)  # a replacement the ReplicaSet started itself
    scaler.last_change_at = 100.0
    assert scaler._converging(starting, 130)
    assert not scaler._converging(starting, 100 + STARTUP_PATIENCE_SECONDS + 1)  # stuck: decide again


def test_stopped_while_a_change_is_on_its_way_the_summary_says_so_and_guesses_no_size():
    scaler = Autoscaler(ReplicaScaler(None, deployment_record(2)), AutoscaleConfig(), LoadSnapshot, clock=lambda: 0.0)
    scaler.change_in_flight = {"replica_num_from": 2, "replica_num_to": 3, "took_effect": "unknown",
                               "check": f"python3 scripts/list_deployments.py --deployment-uuid {UUID}"}
    summary = scaler.summary()
    assert summary["final_replica_num"] is None and summary["change_in_flight"]["took_effect"] == "unknown"
    assert "list_deployments.py" in summary["note"]


@pytest.mark.parametrize("argv, says", [
    (["--deployment-uuid", UUID, "--min-replicas", "2"], "--autoscale"),
    (["--registry", "r.json", "--autoscale"], "--registry"),
    (["--deployment-uuid", UUID, "--autoscale", "--min-replicas", "3", "--max-replicas", "2"], "--min-replicas 3"),
    (["--deployment-uuid", UUID, "--autoscale", "--scale-to-zero-after", "60"], "--min-replicas 0"),
    (["--deployment-uuid", UUID, "--autoscale", "--budget", "-1"], "--budget"),
])
def test_autoscale_flags_that_make_no_sense_are_usage_errors_before_any_call(run, argv, says):
    pytest.importorskip("aiohttp")
    code, out, _ = run("serve_gateway.py", *argv, "--listen", "127.0.0.1:0")
    assert code == 1 and out["error_type"] == "usage_error"
    assert says in out["message"] + out.get("hint", "")


def test_scale_to_zero_is_skipped_when_the_gateway_sees_a_request_arrive_and_routing_is_restored_on_failure(harness):
    h = harness(AutoscaleConfig(min_replicas=0, max_replicas=2, scale_to_zero_after=60))
    calls = []
    h.scaler.before_zero = lambda: calls.append("detach") or False  # a request just came in
    h.scaler.zero_failed = lambda: calls.append("reattach")
    h.run(100, load=0)
    assert h.replica_num() == 1 and calls and set(calls) == {"detach"}
    skipped = [line for line in h.lines if line.get("not_applied_because") == "request_arrived"]
    assert len(skipped) == 1  # logged once, not every tick
    h.scaler.before_zero = lambda: True
    h.scaler.scaler.set_replicas = lambda target: {"requested_replica_num": target, "took_effect": False, "refused": False}
    h.run(STEP)
    assert calls[-1] == "reattach"  # the change did not land: route to the replicas again
