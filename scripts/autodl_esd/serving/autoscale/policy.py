"""The autoscaling decision as a pure function: load history + config + state -> decision.

Ray Serve's split: the policy knows nothing about HTTP, the platform or threads, so every
rule is tested with tables of inputs and no cluster (tests/serving/test_autoscale_policy.py). The
controller (`autoscale.controller`) feeds it samples and carries its state between calls.

Rules, in the order they apply:

1. Load is averaged over the look-back window; desired = ceil(load / target_inflight).
2. Hysteresis: while load / (current x target) stays within +-TOLERANCE of 1, desired is
   the current count, so noise around a boundary never moves it.
3. Clamps: [min, max], then the money caps (hourly cost at the replicas' price; an
   exhausted budget pins it to the floor). Caps are hard limits: they win over min.
4. Scale-to-zero (min 0 only): no request for `scale_to_zero_after` and no load -> 0.
5. Never act while a previous change is converging (containers still starting); the hold
   timers restart once it has converged, so a load measured while capacity was short (a
   queue that the new replicas will drain) cannot trigger a second step on its own.
6. Up when desired > current has held for `upscale_delay` (at once from zero: a request is
   waiting and nothing can serve it); down when desired < current has held for
   `downscale_delay`, one replica per step, the timer restarting after each step, so
   capacity never falls faster than requests stop arriving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from .defaults import (  # noqa: F401  (re-exported: the policy's defaults)
    DEFAULT_DOWNSCALE_DELAY,
    DEFAULT_LOOK_BACK,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_TARGET_INFLIGHT,
    DEFAULT_UPSCALE_DELAY,
)
# Kubernetes HPA's default tolerance (0.1): a ratio of load to capacity within 10 % of 1
# is "on target". Without it a load hovering at a boundary (4.0 +- noise at target 2)
# flips desired between 2 and 3 on every sample.
TOLERANCE = 0.1

ACTIONS = ("hold", "scale_up", "scale_down", "wait")


@dataclass(frozen=True)
class AutoscaleConfig:
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = 4
    target_inflight: float = DEFAULT_TARGET_INFLIGHT
    look_back: float = DEFAULT_LOOK_BACK
    upscale_delay: float = DEFAULT_UPSCALE_DELAY
    downscale_delay: float = DEFAULT_DOWNSCALE_DELAY
    # None: the downscale delay, as Ray Serve's downscale_to_zero_delay_s defaults to it.
    scale_to_zero_after: Optional[float] = None
    max_hourly_cost: Optional[float] = None  # yuan per hour
    budget: Optional[float] = None  # yuan, spent since the autoscaler started

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got [{self.min_replicas}, {self.max_replicas}]")
        if not self.target_inflight > 0:
            raise ValueError("target_inflight must be > 0")
        for name in ("look_back", "upscale_delay", "downscale_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("scale_to_zero_after", "max_hourly_cost", "budget"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")

    @property
    def zero_after(self) -> float:
        return self.downscale_delay if self.scale_to_zero_after is None else self.scale_to_zero_after


@dataclass(frozen=True)
class Sample:
    at: float  # controller clock, seconds
    load: float  # in flight + queued (see controller.load_of)


@dataclass(frozen=True)
class Observed:
    """What the controller knows right now besides the load."""

    current: int  # replica_num the platform holds
    converging: bool = False  # containers of the last change still starting
    last_request_at: Optional[float] = None  # None: no request since the start
    started_at: float = 0.0  # when the autoscaler started (idle time counts from here)
    price_per_replica: Optional[float] = None  # yuan per hour; None: unknown
    spent: float = 0.0  # yuan since the start
    zero_refused: bool = False  # the platform refused replica_num 0 (floor becomes 1)


@dataclass(frozen=True)
class PolicyState:
    """Carried between calls: since when the wish to move has held."""

    above_since: Optional[float] = None
    below_since: Optional[float] = None


@dataclass(frozen=True)
class Decision:
    desired: int  # what the load asks for, after clamps and caps
    current: int
    action: str  # one of ACTIONS
    target: int  # replica_num to set now (== current unless scaling)
    reason: str
    load: float  # averaged over the look-back
    limits: dict = field(default_factory=dict)  # effective floor/ceiling and what set them
    held_seconds: Optional[float] = None  # on a delay hold: how long the wish has held so far
    act_in_seconds: Optional[float] = None  # on a delay hold: how long until it may act if the wish stays
    wanted: Optional[int] = None  # what the load alone asks for, when a bound changed it into `desired`

    def as_dict(self) -> dict:
        shown = {"desired": self.desired, "current": self.current, "action": self.action, "target": self.target,
                 "reason": self.reason, "load": round(self.load, 3)}
        if self.wanted is not None and self.wanted != self.desired:
            shown["wanted"] = self.wanted
        shown.update(self.limits)
        if self.held_seconds is not None:
            shown["held_seconds"] = round(self.held_seconds, 1)
        if self.act_in_seconds is not None:
            shown["act_in_seconds"] = round(self.act_in_seconds, 1)
        return shown


def average_load(samples: Iterable[Sample], now: float, look_back: float) -> float:
    """Mean of the samples in (now - look_back, now]; the newest one when the window is empty."""
    chosen = [s.load for s in samples if now - look_back < s.at <= now]
    if chosen:
        return sum(chosen) / len(chosen)
    latest = None
    for sample in samples:
        if sample.at <= now and (latest is None or sample.at >= latest.at):
            latest = sample
    return latest.load if latest else 0.0


def raw_desired(load: float, current: int, target_inflight: float) -> int:
    """ceil(load / target), held at `current` within the tolerance band."""
    if current > 0 and load > 0 and abs(load / (current * target_inflight) - 1) <= TOLERANCE:
        return current
    # The epsilon keeps 4.0000001 / 2 from asking for a third replica.
    return max(0, math.ceil(load / target_inflight - 1e-9))


@dataclass(frozen=True)
class Limits:
    """The effective bounds and what set them."""

    floor: int
    ceiling: int
    floor_reason: str = "min_replicas"
    ceiling_reason: str = "max_replicas"
    limited_by: tuple = ()  # the constraints tighter than --min/--max-replicas

    def as_dict(self) -> dict:
        shown = {"floor": self.floor, "ceiling": self.ceiling}
        if self.limited_by:
            shown["limited_by"] = list(self.limited_by)
        return shown


def hourly_cap_replicas(max_hourly_cost: Optional[float], price_per_replica: Optional[float]) -> Optional[int]:
    """How many replicas `max_hourly_cost` yuan per hour buys (None: no cap, or the price is unknown)."""
    if max_hourly_cost is None or not price_per_replica:
        return None
    return int(max_hourly_cost / price_per_replica + 1e-9)  # the epsilon: 6.0 / 2.0 buys 3, not 2


def limits(config: AutoscaleConfig, observed: Observed) -> Limits:
    """Floor and ceiling after min/max, the zero fallback and the money caps."""
    floor, floor_reason = config.min_replicas, "min_replicas"
    ceiling, ceiling_reason = config.max_replicas, "max_replicas"
    limited_by = []
    if floor == 0 and observed.zero_refused:
        floor, floor_reason = 1, "zero_refused"
        limited_by.append("zero_refused")
    affordable = hourly_cap_replicas(config.max_hourly_cost, observed.price_per_replica)
    if affordable is not None and affordable < ceiling:
        # Zero stays opt-in: a cap that no longer buys one replica (prices rose after the
        # start-up check) keeps one unless --min-replicas 0 allowed zero.
        ceiling, ceiling_reason = max(affordable, 0 if config.min_replicas == 0 else 1), "hourly_cost_cap"
        limited_by.append("hourly_cost_cap")
    if config.budget is not None and observed.spent >= config.budget:
        ceiling, ceiling_reason = min(ceiling, floor), "budget_exhausted"
        limited_by.append("budget_exhausted")
    if floor > ceiling:  # a money cap is a hard limit: it wins over min
        floor, floor_reason = ceiling, ceiling_reason
    return Limits(floor, ceiling, floor_reason, ceiling_reason, tuple(limited_by))


def decide(config: AutoscaleConfig, samples: Sequence[Sample], observed: Observed, state: PolicyState, now: float) -> tuple[Decision, PolicyState]:
    """The decision for `now` and the state to pass to the next call.

    `reason` says what moves the count (the load, idleness, a bound the current count is
    outside of); a bound that only trims the load's wish is reported beside it, in
    `limited_by` (with `wanted`), so a scale-up 2 -> 3 that the load wanted to 4 reads
    `reason: load, wanted: 4, limited_by: [max_replicas]`."""
    load = average_load(samples, now, config.look_back)
    current = observed.current
    bounds = limits(config, observed)
    idle_since = observed.last_request_at if observed.last_request_at is not None else observed.started_at
    if bounds.floor == 0 and load == 0 and now - idle_since >= config.zero_after:
        wanted, wish = 0, "idle"
    else:
        wanted, wish = raw_desired(load, current, config.target_inflight), "load"
        if wanted == 0 and bounds.floor == 0:
            wanted = min(1, current)  # no load, but not idle for long enough: keep one
    capped_by = None  # the bound that trimmed the wish
    if wanted > bounds.ceiling:
        desired, capped_by = bounds.ceiling, bounds.ceiling_reason
    elif wanted < bounds.floor:
        desired, capped_by = bounds.floor, bounds.floor_reason
    else:
        desired = wanted
    shown_limits = bounds.as_dict()
    if capped_by is not None and capped_by not in bounds.limited_by:
        shown_limits["limited_by"] = [*bounds.limited_by, capped_by]

    def out(action: str, target: int, why: str, next_state: PolicyState = PolicyState(), held: Optional[float] = None,
            delay: Optional[float] = None) -> tuple[Decision, PolicyState]:
        act_in = None if held is None or delay is None else max(delay - held, 0.0)
        return Decision(desired, current, action, target, why, load, shown_limits, held, act_in,
                        wanted if capped_by is not None else None), next_state

    # Out of bounds (a cap just tightened, the budget ran out, someone scaled by hand):
    # correct it now; waiting out a delay would keep paying beyond a hard limit.
    if current > bounds.ceiling:
        return out("scale_down", bounds.ceiling, bounds.ceiling_reason)
    if observed.converging:
        return out("wait", current, "converging")
    if current < bounds.floor:
        return out("scale_up", bounds.floor, bounds.floor_reason)
    if desired > current:
        since = state.above_since if state.above_since is not None else now
        if current == 0:
            # A request is waiting and nothing can serve it: the delay guards against
            # noise between replica counts, and there is no such noise at zero.
            return out("scale_up", desired, "from_zero")
        if now - since >= config.upscale_delay:
            return out("scale_up", desired, wish)
        return out("hold", current, "upscale_delay", PolicyState(above_since=since), now - since, config.upscale_delay)
    if desired < current:
        since = state.below_since if state.below_since is not None else now
        if wish == "idle":
            # No request at all for zero_after: nothing can be hurt by going straight to
            # zero, so the one-step rule (which protects requests still arriving) yields.
            return out("scale_down", 0, wish)
        if now - since >= config.downscale_delay:
            # Stepping down toward min is the load's doing; "min_replicas" is for holding there.
            return out("scale_down", current - 1, wish)
        return out("hold", current, "downscale_delay", PolicyState(below_since=since), now - since, config.downscale_delay)
    # At the count wanted, or held at a bound the load pushes against: that bound is why.
    return out("hold", current, capped_by or ("on_target" if wish == "load" else wish))
