"""The exactly-once soak, small (see test_exactly_once_soak.py): detached submits, real
background processes killed (SIGKILL) or stopped (SIGTERM) before, during and after their
create, then resumed with `jobs.py --resume`; each run must still create once."""

from __future__ import annotations

import json

import pytest

from helpers.bench import BROKEN, WINDOW_SECONDS
from helpers.bench import soak as load_soak

soak = load_soak()  # skips this module when the simulator is not there


@pytest.mark.parametrize("mode", sorted(soak.DETACHED_SIGNALS))
def test_a_detached_submit_signalled_at_any_moment_then_resumed_creates_once(mode, tmp_path):
    """Real background processes: the signal lands before the create, during it (its answer
    held back 1 s) and after it, in turn; `jobs.py --resume` then finishes each run."""
    moments = iter([0.0, 0.4, 1.2])
    tally = soak.soak_mode(mode, 3, 1, tmp_path, lambda sim: soak.detached_runner(
        sim, soak.DETACHED_SIGNALS[mode], tmp_path / "state", lambda: next(moments), interval=0.05, window=WINDOW_SECONDS),
        spec="create_slow_seconds=1", http_timeout=0.5)

    bad = [entry for entry in tally["runs"] if entry[1] in BROKEN]
    assert not bad, json.dumps(tally["runs"], ensure_ascii=False)
    assert tally["reported"] + tally["flagged"] == 3
