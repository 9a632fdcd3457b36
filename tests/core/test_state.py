"""Where local state and the skill's venv live when the skill folder must not be written."""

from __future__ import annotations

import os

from autodl_esd.core import deps, skill_venv, state
from autodl_esd.core.state import STATE_APP_DIR, state_root


def test_xdg_state_home_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(state, "skill_dir_writable", lambda: False)
    assert state_root() == tmp_path / "xdg" / STATE_APP_DIR


def test_writable_skill_folder_keeps_state_beside_the_skill(monkeypatch):
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setattr(state, "skill_dir_writable", lambda: True)
    assert state_root() == deps.SKILL_ROOT / ".state"


def test_read_only_skill_folder_puts_state_in_the_users_xdg_default(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # Tests run as root, where chmod does not stop writes: the check itself is patched.
    monkeypatch.setattr(state, "skill_dir_writable", lambda: False)
    assert state_root() == tmp_path / "home" / ".local" / "state" / STATE_APP_DIR


def test_read_only_check_asks_the_os(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(os, "access", lambda path, mode: seen.append((str(path), mode)) or False)
    assert state.skill_dir_writable(tmp_path) is False
    assert seen == [(str(tmp_path), os.W_OK)]


def test_results_name_the_state_dir_they_used(run, tmp_path):
    code, document, _ = run("guard_deployment.py", "--list", "--quiet")
    assert code == 0, document
    assert document["state_dir"] == str(tmp_path / "state" / STATE_APP_DIR)


def test_results_that_touch_no_state_do_not_name_one(run):
    code, document, _ = run("validate_config.py", "examples/replicaset-service.json", "--quiet")
    assert code == 0, document
    assert "state_dir" not in document


# --- the venv ----------------------------------------------------------------------------------

def test_skill_venv_is_preferred_when_it_exists(tmp_path, monkeypatch):
    (tmp_path / "skill" / ".venv").mkdir(parents=True)
    monkeypatch.setattr(skill_venv, "VENV_DIR", str(tmp_path / "skill" / ".venv"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert skill_venv.venv_dir() == str(tmp_path / "skill" / ".venv")


def test_without_a_skill_venv_the_per_user_venv_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(skill_venv, "VENV_DIR", str(tmp_path / "skill" / ".venv"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert skill_venv.venv_dir() == str(tmp_path / "data" / "autodl-elastic-deploy" / "venv")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert skill_venv.venv_dir() == str(tmp_path / "home" / ".local" / "share" / "autodl-elastic-deploy" / "venv")


def test_reexec_finds_the_per_user_venv(tmp_path, monkeypatch):
    monkeypatch.setattr(skill_venv, "VENV_DIR", str(tmp_path / "skill" / ".venv"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    python = tmp_path / "data" / "autodl-elastic-deploy" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("", encoding="utf-8")
    monkeypatch.setattr(skill_venv, "running_in", lambda venv: False)
    monkeypatch.setattr(skill_venv, "missing_runtime_module", lambda: "requests")
    monkeypatch.delenv(skill_venv.REEXEC_MARKER, raising=False)
    executed = []
    monkeypatch.setattr(os, "execv", lambda path, argv: executed.append(path))
    skill_venv.reexec_in_skill_venv()
    assert executed == [str(python)]


def test_read_only_skill_folder_is_told_to_install_into_the_per_user_venv(tmp_path, monkeypatch):
    monkeypatch.setattr(deps, "VENV_DIR", tmp_path / "skill" / ".venv")
    monkeypatch.setattr(deps, "_skill_root_writable", lambda: False)
    monkeypatch.setattr(deps, "is_externally_managed", lambda: True)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    command = deps.install_command()
    assert f"-m venv {tmp_path / 'data' / 'autodl-elastic-deploy' / 'venv'} " in command


def test_state_files_are_readable_by_their_owner_only(tmp_path):
    """A submission's record keeps its config (a `cmd` may carry a key): never world-readable."""
    import stat

    from autodl_esd.core.state import write_json_atomically

    path = tmp_path / "records" / "s-1.json"
    write_json_atomically(path, {"config": {"cmd": "KEY=secret python serve.py"}})
    write_json_atomically(path, {"config": {"cmd": "rewritten"}})  # a rewrite keeps the mode

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["s-1.json"]  # no temporary left behind
