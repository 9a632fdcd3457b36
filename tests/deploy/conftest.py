"""Fixtures of the queue_submit tests against the `responses` fakes (helpers/fake_api.py)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def config_file(tmp_path):
    from helpers.fake_api import CONFIG

    def write(config=CONFIG):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        return str(path)

    return write


@pytest.fixture
def fake_time(monkeypatch):
    """Waits advance a fake clock; the reconcile window is 0 unless a test sets one, so a
    reconcile makes exactly effects.MIN_LOOKS looks (tests set that to what they register).
    The queue_submit test files use it for every test (`pytest.mark.usefixtures`)."""
    from autodl_esd.platform import effects
    from autodl_esd.deploy import submit

    now = [0.0]
    monkeypatch.setattr(effects, "_now", lambda: now[0])
    monkeypatch.setattr(effects, "_sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    monkeypatch.setattr(submit, "DEFAULT_RECONCILE_WINDOW_SECONDS", 0.0)
    monkeypatch.setattr(effects, "MIN_LOOKS", 1)
    return now
