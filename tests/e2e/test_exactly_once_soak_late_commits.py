"""The exactly-once soak, small (see test_exactly_once_soak.py): creates that commit late.

commit_delay is the slow-before-commit race (the write sleeps before it commits, so a look
right after the client's timeout sees nothing yet); late_commit_9 and late_commit_30 are the
bench's 9 s and 30 s late commits scaled to 1.5 s and 3 s after the send, far past the old
grace of timeout + margin and within the scaled reconcile window (helpers/bench.py).
"""

from __future__ import annotations

import json

import pytest

from helpers.bench import BROKEN, LATE_COMMITS, RUNS_PER_MODE, soak_in_process


@pytest.mark.parametrize("mode", sorted(LATE_COMMITS))
def test_no_duplicate_and_no_unreported_create_under_faults(mode, run, monkeypatch, tmp_path, result_validator):
    tally = soak_in_process(mode, run, monkeypatch, tmp_path, result_validator)

    bad = [entry for entry in tally["runs"] if entry[1] in BROKEN]
    assert not bad, json.dumps(tally["runs"], ensure_ascii=False)
    assert tally["reported"] + tally["flagged"] + tally["none, error"] == RUNS_PER_MODE
