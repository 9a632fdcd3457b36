"""One clock face: progress lines, generated_at and as_of are +08:00 like the platform's stamps;
the simulator's clock starts at the wall clock and its --help says it runs ahead at --speed > 1."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from helpers import ROOT

CST = timezone(timedelta(hours=8))


def test_progress_lines_are_stamped_in_the_platform_zone(monkeypatch):
    from autodl_esd.core.output import Progress

    monkeypatch.setenv("TZ", "America/New_York")  # a machine far from China
    if hasattr(time, "tzset"):
        time.tzset()
    try:
        stream = io.StringIO()
        Progress(stream=stream).log("hello")
    finally:
        monkeypatch.delenv("TZ")
        if hasattr(time, "tzset"):
            time.tzset()
    match = re.match(r"^\[(\d{2}):(\d{2}):(\d{2})\+08:00 本机时间\] hello\n$", stream.getvalue())
    assert match, stream.getvalue()
    stamped = datetime.now(CST).replace(hour=int(match.group(1)), minute=int(match.group(2)), second=int(match.group(3)))
    drift = abs((datetime.now(CST) - stamped).total_seconds())
    assert min(drift, 86400 - drift) < 5, "the stamp is China Standard Time, not this machine's zone"


def test_progress_lines_name_the_local_clock_once():
    from autodl_esd.core.output import Progress

    stream = io.StringIO()
    progress = Progress(stream=stream)
    progress.log("first")
    progress.status("second")
    first, second = stream.getvalue().splitlines()
    assert re.match(r"^\[\d{2}:\d{2}:\d{2}\+08:00 本机时间\] first$", first), first
    assert re.match(r"^\[\d{2}:\d{2}:\d{2}\+08:00\] second$", second), second


def test_registry_generated_at_is_plus_eight():
    from autodl_esd.serving.registry import document as registry

    document = registry.registry_document("833f1cd5a764fa3", [])
    assert document["generated_at"].endswith("+08:00")


def test_simulator_help_says_its_clock_starts_at_the_wall_clock_and_runs_ahead():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "autodl_sim.py"), "--help"],
                         capture_output=True, text=True, timeout=30).stdout
    assert "wall clock" in out and "AHEAD" in out and "--speed" in out


def test_simulator_timestamps_start_at_the_wall_clock():
    from simulator import Simulator

    with Simulator(speed=1, seed=3) as sim:
        stamp = datetime.fromisoformat(sim.clock.timestamp(0))
    assert stamp.utcoffset() == timedelta(hours=8)
    assert abs((datetime.now(CST) - stamp).total_seconds()) < 5
