"""The exactly-once soak, small: queue_submit under every fault mode, then count deployments.

bench/exactly_once_soak.py is the full version (30 runs per mode, real processes, late
commits of 9-30 s, the table in bench/README.md). Here each mode gets a few in-process runs with
times scaled down (HTTP timeout 0.3 s, a reconcile window of 4 s, a look every 0.2 s; see
helpers/bench.py) and the same classifier: no run may end with two deployments, a
deployment its output does not mention, or a uuid that does not exist.

This file: faults in the answers (slow, errors, a create answered slowly or with an error
after it committed, all at once) and the classifier itself. Commits that land late are in
test_exactly_once_soak_late_commits.py; detached runs signalled at any moment and resumed in
test_exactly_once_soak_detached.py. (Three files, so that --dist loadfile spreads the soak
over several workers.)
"""

from __future__ import annotations

import json

import pytest

from helpers.bench import BROKEN, LATE_COMMITS, RUNS_PER_MODE, SCALED, soak, soak_in_process

ANSWER_FAULTS = sorted(set(SCALED) - set(LATE_COMMITS))


@pytest.mark.parametrize("mode", ANSWER_FAULTS)
def test_no_duplicate_and_no_unreported_create_under_faults(mode, run, monkeypatch, tmp_path, result_validator):
    tally = soak_in_process(mode, run, monkeypatch, tmp_path, result_validator)

    bad = [entry for entry in tally["runs"] if entry[1] in BROKEN]
    assert not bad, json.dumps(tally["runs"], ensure_ascii=False)
    assert tally["reported"] + tally["flagged"] + tally["none, error"] == RUNS_PER_MODE


def test_the_classifier_catches_each_failure():
    classify = soak().classify
    one = [{"uuid": "a" * 15, "name": "n"}]
    assert classify(one, "n", {"status": "success", "deployment_uuid": "a" * 15}) == "reported"
    assert classify(one, "n", {"status": "error", "details": {"may_have_been_created": True, "name": "n"}}) == "flagged"
    assert classify(one, "n", {"status": "error", "error_type": "api_error", "details": {}}) == "UNREPORTED"
    assert classify(one + [{"uuid": "b" * 15, "name": "n"}], "n", {"status": "success", "deployment_uuid": "a" * 15}) == "DUPLICATE"
    assert classify([], "n", {"status": "success", "deployment_uuid": "a" * 15}) == "PHANTOM"
    assert classify([], "n", {"status": "error", "details": {}}) == "none, error"
