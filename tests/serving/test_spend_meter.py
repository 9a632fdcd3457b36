"""The autoscaler's spend meter: the hourly rate it observes, integrated over the platform's
clock (the Date header's whole seconds), as cost_report.py and the wallet count it. How the
autoscaler feeds it, against mocks and the simulator, is in test_autoscaler.py."""

from __future__ import annotations

import random

import pytest

HOUR = 3600.0
DATE_RESOLUTION_SECONDS = 1.0  # the Date header's whole seconds (spend_meter's constant)


def SpendMeter():
    from autodl_esd.serving.autoscale.spend_meter import SpendMeter as meter

    return meter()


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
