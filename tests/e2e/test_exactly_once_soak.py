"""The exactly-once soak, small: queue_submit under every fault mode, then count deployments.

bench/exactly_once_soak.py is the full version (30 runs per mode, real processes, late
commits of 9-30 s, the README's table). Here each mode gets a few in-process runs with
times scaled down (HTTP timeout 0.3 s, a reconcile window of 4 s, a look every 0.2 s; late
commits 1.5 and 3 s after the send, far past the old grace of timeout + margin), the
detached kill -9 / SIGTERM + resume cases with real background processes, and the same
classifier: no run may end with two deployments, a deployment its output does not
mention, or a uuid that does not exist.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from helpers import ROOT

pytest.importorskip("simulator")

spec = importlib.util.spec_from_file_location("exactly_once_soak", ROOT / "bench" / "exactly_once_soak.py")
soak = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soak)

# Scaled-down faults: every delay is below the 1.0 s grace (0.3 s timeout + 0.7 s margin).
# The grace starts when the client gives up (0.3 s after sending), so the last look is ~1.3 s
# after the send; a create held back by several faults at once must land well before that:
# in all_at_once slow (0.4) + commit delay (0.4) is at most 0.8 s, the same 0.5 s to spare as
# the slow mode (0.6 + 0.5 left 0.2 s, too little when a loaded machine is slow to commit).
SCALED = {
    "slow": ("slow_rate=0.3,slow_seconds=0.8", 0.3),
    "errors_wait_running": ("error_rate=0.5", 0.5),
    "errors": ("error_rate=0.3", 0.5),
    "create_slow_after_commit": ("create_slow_seconds=0.6", 0.3),
    "create_error_after_commit": ("create_error_after_commit=1", 0.5),
    "commit_delay": ("commit_delay_seconds=0.6,commit_delay_rate=0.5", 0.3),
    "all_at_once": ("error_rate=0.2,slow_rate=0.2,slow_seconds=0.4,create_slow_seconds=0.4,"
                    "create_error_after_commit=2,commit_delay_seconds=0.4,commit_delay_rate=0.3", 0.3),
    "late_commit_9": ("commit_delay_seconds=1.5", 0.3),
    "late_commit_30": ("commit_delay_seconds=3", 0.3),
}
# The scaled reconcile window: past the latest scaled commit (3 s) with room for a loaded machine.
WINDOW_SECONDS = 4.0
RUNS_PER_MODE = 3


@pytest.mark.parametrize("mode", sorted(SCALED))
def test_no_duplicate_and_no_unreported_create_under_faults(mode, run, monkeypatch, tmp_path, result_validator):
    from autodl_esd.platform import effects
    from autodl_esd.deploy import submit

    monkeypatch.setattr(submit, "DEFAULT_RECONCILE_WINDOW_SECONDS", WINDOW_SECONDS)
    monkeypatch.setattr(effects, "IN_FLIGHT_MARGIN_SECONDS", 0.7)
    monkeypatch.setattr(effects, "LOOK_PAUSE_SECONDS", 0.2)  # still several looks within the grace
    faults, http_timeout = SCALED[mode]

    def runner_for(sim):
        monkeypatch.setenv("AUTODL_HOST", sim.url)
        monkeypatch.setenv("AUTODL_TOKEN", sim.token)
        monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", str(http_timeout))

        def in_process(name, path, _timeout, flags):
            code, document, _ = run("queue_submit.py", str(path), "--interval", "0.05", "--quiet", "--timeout", "20", *flags)
            result_validator.validate(document)
            return code, document

        return in_process

    tally = soak.soak_mode(mode, RUNS_PER_MODE, 1, tmp_path, runner_for, spec=faults, http_timeout=http_timeout)

    bad = [entry for entry in tally["runs"] if entry[1] in ("DUPLICATE", "UNREPORTED", "PHANTOM")]
    assert not bad, json.dumps(tally["runs"], ensure_ascii=False)
    assert tally["reported"] + tally["flagged"] + tally["none, error"] == RUNS_PER_MODE


def test_the_classifier_catches_each_failure():
    one = [{"uuid": "a" * 15, "name": "n"}]
    assert soak.classify(one, "n", {"status": "success", "deployment_uuid": "a" * 15}) == "reported"
    assert soak.classify(one, "n", {"status": "error", "details": {"may_have_been_created": True, "name": "n"}}) == "flagged"
    assert soak.classify(one, "n", {"status": "error", "error_type": "api_error", "details": {}}) == "UNREPORTED"
    assert soak.classify(one + [{"uuid": "b" * 15, "name": "n"}], "n", {"status": "success", "deployment_uuid": "a" * 15}) == "DUPLICATE"
    assert soak.classify([], "n", {"status": "success", "deployment_uuid": "a" * 15}) == "PHANTOM"
    assert soak.classify([], "n", {"status": "error", "details": {}}) == "none, error"


@pytest.mark.parametrize("mode", sorted(soak.DETACHED_SIGNALS))
def test_a_detached_submit_signalled_at_any_moment_then_resumed_creates_once(mode, tmp_path):
    """Real background processes: the signal lands before the create, during it (its answer
    held back 1 s) and after it, in turn; `jobs.py --resume` then finishes each run."""
    moments = iter([0.0, 0.4, 1.2])
    tally = soak.soak_mode(mode, 3, 1, tmp_path, lambda sim: soak.detached_runner(
        sim, soak.DETACHED_SIGNALS[mode], tmp_path / "state", lambda: next(moments), interval=0.05, window=WINDOW_SECONDS),
        spec="create_slow_seconds=1", http_timeout=0.5)

    bad = [entry for entry in tally["runs"] if entry[1] in ("DUPLICATE", "UNREPORTED", "PHANTOM")]
    assert not bad, json.dumps(tally["runs"], ensure_ascii=False)
    assert tally["reported"] + tally["flagged"] == 3
