"""The autoscaling policy is a pure function: tables of inputs, no cluster, no clock."""

from __future__ import annotations

import random

import pytest

from autodl_esd.serving.autoscale.policy import (
    AutoscaleConfig,
    Observed,
    PolicyState,
    Sample,
    average_load,
    decide,
    limits,
    raw_desired,
)

CONFIG = AutoscaleConfig(min_replicas=1, max_replicas=8, target_inflight=2, look_back=30, upscale_delay=30, downscale_delay=600)


def flat(load: float, until: float, every: float = 5.0, start: float = 0.0) -> list[Sample]:
    samples, at = [], start
    while at <= until:
        samples.append(Sample(at, load))
        at += every
    return samples


@pytest.mark.parametrize(
    "load, current, expected",
    [
        (0, 1, 0),
        (1, 1, 1),
        (4, 1, 2),
        (4.0000001, 2, 2),  # float noise never asks for a third replica
        (4.3, 2, 2),  # within the 10 % band: on target
        (3.7, 2, 2),
        (4.5, 2, 3),  # beyond the band
        (3.5, 2, 2),
        (2.5, 2, 2),  # ceil(1.25) = 2 anyway
        (1.9, 2, 1),
        (10, 0, 5),
        (0.1, 0, 1),
    ],
)
def test_raw_desired_is_ceil_of_load_over_target_with_a_tolerance_band(load, current, expected):
    assert raw_desired(load, current, 2) == expected


def test_average_load_uses_only_the_look_back_window_and_falls_back_to_the_newest_sample():
    samples = [Sample(0, 100), Sample(40, 2), Sample(50, 4)]
    assert average_load(samples, 60, 30) == 3
    assert average_load(samples, 200, 30) == 4  # window empty: the newest sample
    assert average_load([], 10, 30) == 0


# (name, config changes, samples, observed, state, now) -> (action, target, reason)
TABLE = [
    ("on target holds", {}, flat(4, 100), Observed(current=2), PolicyState(), 100, ("hold", 2, "on_target")),
    ("upscale waits for the delay", {}, flat(10, 100), Observed(current=2), PolicyState(), 100, ("hold", 2, "upscale_delay")),
    ("upscale after the delay held", {}, flat(10, 100), Observed(current=2), PolicyState(above_since=70), 100, ("scale_up", 5, "load")),
    ("upscale jumps straight to desired", {}, flat(16, 100), Observed(current=1), PolicyState(above_since=0), 100, ("scale_up", 8, "load")),
    ("upscale clamped to max", {}, flat(100, 100), Observed(current=2), PolicyState(above_since=0), 100, ("scale_up", 8, "load")),  # the cap: limited_by
    ("downscale waits for its delay", {}, flat(1, 100), Observed(current=4), PolicyState(below_since=0), 100, ("hold", 4, "downscale_delay")),
    ("downscale one step at a time", {}, flat(0.5, 1000), Observed(current=4), PolicyState(below_since=0), 1000, ("scale_down", 3, "load")),
    ("never below min", {"min_replicas": 2}, flat(0, 1000), Observed(current=2), PolicyState(below_since=0), 1000, ("hold", 2, "min_replicas")),
    ("converging waits", {}, flat(20, 100), Observed(current=2, converging=True), PolicyState(above_since=0), 100, ("wait", 2, "converging")),
    ("below min is corrected at once", {"min_replicas": 3}, flat(0, 10), Observed(current=1), PolicyState(), 10, ("scale_up", 3, "min_replicas")),
    ("above max is corrected at once", {"max_replicas": 3}, flat(10, 10), Observed(current=5), PolicyState(), 10, ("scale_down", 3, "max_replicas")),
    ("from zero at once", {"min_replicas": 0}, [Sample(10, 1)], Observed(current=0), PolicyState(), 10, ("scale_up", 1, "from_zero")),
    ("idle scales to zero", {"min_replicas": 0, "scale_to_zero_after": 300}, flat(0, 400), Observed(current=3, last_request_at=50), PolicyState(), 400, ("scale_down", 0, "idle")),
    ("not idle long enough keeps one", {"min_replicas": 0, "scale_to_zero_after": 300}, flat(0, 400), Observed(current=1, last_request_at=200), PolicyState(), 400, ("hold", 1, "on_target")),
    ("idle counts from the start when no request came", {"min_replicas": 0, "scale_to_zero_after": 300}, flat(0, 400), Observed(current=1, started_at=0), PolicyState(), 400, ("scale_down", 0, "idle")),
    ("zero not allowed by min", {"scale_to_zero_after": 300}, flat(0, 4000), Observed(current=1), PolicyState(below_since=0), 4000, ("hold", 1, "min_replicas")),
    ("zero refused: floor is 1", {"min_replicas": 0, "scale_to_zero_after": 300}, flat(0, 400), Observed(current=1, zero_refused=True), PolicyState(), 400, ("hold", 1, "zero_refused")),
    ("hourly cap limits upscale", {"max_hourly_cost": 6.5}, flat(100, 100), Observed(current=1, price_per_replica=2.0), PolicyState(above_since=0), 100, ("scale_up", 3, "load")),
    ("hourly cap exact division", {"max_hourly_cost": 6.0}, flat(100, 100), Observed(current=1, price_per_replica=2.0), PolicyState(above_since=0), 100, ("scale_up", 3, "load")),
    ("hourly cap scales down at once", {"max_hourly_cost": 4.0}, flat(100, 100), Observed(current=5, price_per_replica=2.0), PolicyState(), 100, ("scale_down", 2, "hourly_cost_cap")),
    ("hourly cap wins over min", {"min_replicas": 2, "max_hourly_cost": 4.0}, flat(1, 100), Observed(current=3, price_per_replica=2.0), PolicyState(), 100, ("scale_down", 2, "hourly_cost_cap")),
    ("hourly cap below one replica keeps one without opt-in zero", {"min_replicas": 2, "max_hourly_cost": 1.0}, flat(1, 100), Observed(current=2, price_per_replica=2.0), PolicyState(), 100, ("scale_down", 1, "hourly_cost_cap")),
    ("hourly cap below one replica with zero allowed", {"min_replicas": 0, "max_hourly_cost": 1.0}, flat(1, 100), Observed(current=1, price_per_replica=2.0, last_request_at=99), PolicyState(), 100, ("scale_down", 0, "hourly_cost_cap")),
    ("budget spent: to the floor", {"budget": 10.0}, flat(100, 100), Observed(current=6, spent=10.0), PolicyState(), 100, ("scale_down", 1, "budget_exhausted")),
    ("budget spent: to zero when allowed", {"min_replicas": 0, "budget": 10.0}, flat(100, 100), Observed(current=6, spent=12.0), PolicyState(), 100, ("scale_down", 0, "budget_exhausted")),
    ("budget spent: no upscale", {"budget": 10.0}, flat(100, 100), Observed(current=1, spent=10.0), PolicyState(above_since=0), 100, ("hold", 1, "budget_exhausted")),
    ("budget left: normal", {"budget": 10.0}, flat(10, 100), Observed(current=1, spent=9.99), PolicyState(above_since=0), 100, ("scale_up", 5, "load")),
]


@pytest.mark.parametrize("name, changes, samples, observed, state, now, expected", TABLE, ids=[row[0] for row in TABLE])
def test_decision_table(name, changes, samples, observed, state, now, expected):
    config = AutoscaleConfig(**{**CONFIG.__dict__, **changes})
    decision, _ = decide(config, samples, observed, state, now)
    assert (decision.action, decision.target, decision.reason) == expected
    assert decision.limits["floor"] <= decision.desired <= decision.limits["ceiling"]


def run_policy(config: AutoscaleConfig, load_at, until: float, step: float = 5.0, start_replicas: int = 1, start_time: float = 5.0):
    """Drive the policy over time with changes applied at once; returns the replica counts."""
    samples, state, current, history = [], PolicyState(), start_replicas, []
    now = start_time
    while now <= until:
        samples.append(Sample(now, load_at(now)))
        decision, state = decide(config, samples, Observed(current=current, last_request_at=now), state, now)
        if decision.action in ("scale_up", "scale_down"):
            current = decision.target
        history.append((now, current))
        now += step
    return history


def changes_of(history) -> int:
    return sum(1 for (_, a), (_, b) in zip(history, history[1:]) if a != b)


def test_steady_noisy_load_does_not_flap():
    rng = random.Random(7)
    # 4.4 +- 1.5 per sample at target 2: single samples cross both the 2- and 3-replica lines.
    history = run_policy(CONFIG, lambda t: max(0.0, 4.4 + rng.uniform(-1.5, 1.5)), until=6 * 3600, start_replicas=2)
    assert changes_of(history) <= 1


def test_a_step_scales_up_within_the_delay_and_down_after_the_downscale_delay_one_step_each():
    load = lambda t: 12.0 if 100 <= t < 1000 else 1.0  # noqa: E731
    history = run_policy(CONFIG, load, until=6000)
    up = next(t for t, n in history if n == 6)
    # Up: the look-back average must cross first (<= 30 s), then hold for the upscale delay.
    assert 100 + 30 <= up <= 100 + 30 + 30
    downs = [t for (t, a), (_, b) in zip(history, history[1:]) for _ in [0] if b < a]
    assert len(downs) == 5  # 6 -> 1, one replica per step
    assert downs[0] >= 1000 + 600
    assert all(later - earlier >= 600 for earlier, later in zip(downs, downs[1:]))
    assert max(n for _, n in history) <= CONFIG.max_replicas


def test_delays_shorter_than_the_look_back_do_not_thrash():
    # ray #26455: with a delay shorter than the look-back, a decision based on an average that
    # still holds the old load must not bounce; here the burst ends and the average decays.
    config = AutoscaleConfig(min_replicas=1, max_replicas=8, look_back=60, upscale_delay=5, downscale_delay=5)
    history = run_policy(config, lambda t: 10.0 if t < 300 else 0.0, until=2000)
    counts = [n for _, n in history]
    peak = counts.index(max(counts))
    assert all(a >= b for a, b in zip(counts[peak:], counts[peak + 1:]))  # after the peak: only down


def test_limits_report_what_set_them():
    config = AutoscaleConfig(min_replicas=0, max_replicas=8, max_hourly_cost=5, budget=1)
    bounds = limits(config, Observed(current=1, price_per_replica=2.0, spent=2.0, zero_refused=True))
    assert (bounds.floor, bounds.ceiling) == (1, 1)
    assert bounds.limited_by == ("zero_refused", "hourly_cost_cap", "budget_exhausted")


@pytest.mark.parametrize("bad", [
    {"min_replicas": 3, "max_replicas": 2}, {"max_replicas": 0}, {"target_inflight": 0},
    {"look_back": -1}, {"budget": -1}, {"min_replicas": -1},
])
def test_config_rejects_impossible_bounds(bad):
    with pytest.raises(ValueError):
        AutoscaleConfig(**bad)


# ---- decision wording ----------------------------------------------------------------------


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


def test_a_replicas_price_counts_every_card():
    """Container `price` is per card (references/money.md, 计费口径): a 2-card replica costs twice it."""
    from autodl_esd.serving.autoscale.scaler import _price_yuan

    assert _price_yuan({"price": 1500, "gpu_num": 2}) == 3.0
    assert _price_yuan({"price": 1500}) == 1.5 and _price_yuan({"price": 0, "gpu_num": 2}) is None
