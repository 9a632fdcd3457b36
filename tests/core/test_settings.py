"""Token, host and timeout resolution: environment first, then `.env`, never leaking."""

from __future__ import annotations

import os

import pytest

from autodl_esd.core import output, settings
from autodl_esd.core.errors import AutoDLError, ErrorType
from helpers import ROOT, TEST_HOST, TEST_TOKEN

EXAMPLE = str(ROOT / "examples" / "replicaset-service.json")


@pytest.fixture
def env_file(tmp_path, monkeypatch):
    """A `.env` at a temporary path, wired in as the skill's `.env`."""
    path = tmp_path / ".env"
    monkeypatch.setattr(settings, "ENV_FILE", path)
    return path


@pytest.fixture
def bare_env(monkeypatch):
    """Nothing from the environment: settings come from `.env` or defaults."""
    for name in ("AUTODL_TOKEN", "AUTODL_HOST", "AUTODL_HTTP_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def _error(**kwargs) -> AutoDLError:
    with pytest.raises(AutoDLError) as caught:
        settings.load_settings(**kwargs)
    return caught.value


# --- token ----------------------------------------------------------------------------

def test_token_and_host_from_environment():
    loaded = settings.load_settings()
    assert loaded.token == TEST_TOKEN
    assert loaded.host == TEST_HOST


def test_environment_wins_over_env_file(env_file):
    env_file.write_text("AUTODL_TOKEN=file-token-abcdef\nAUTODL_HOST=https://api.autodl.com\n")
    loaded = settings.load_settings()
    assert loaded.token == TEST_TOKEN
    assert loaded.host == TEST_HOST


def test_env_file_used_when_environment_is_empty(env_file, bare_env):
    env_file.write_text(
        "AUTODL_TOKEN=file-token-abcdef\nAUTODL_HOST=https://api.autodl.com/\nAUTODL_HTTP_TIMEOUT=12.5\n"
    )
    loaded = settings.load_settings()
    assert loaded.token == "file-token-abcdef"
    assert loaded.host == "https://api.autodl.com"  # trailing slash trimmed
    assert loaded.http_timeout == 12.5


def test_env_file_is_read_without_touching_os_environ(env_file, bare_env):
    env_file.write_text("AUTODL_TOKEN=file-token-abcdef\nAUTODL_EXTRA=1\n")
    before = dict(os.environ)
    settings.load_settings()
    assert dict(os.environ) == before
    assert "AUTODL_TOKEN" not in os.environ


def test_empty_environment_value_falls_back_to_env_file(env_file, monkeypatch):
    monkeypatch.setenv("AUTODL_TOKEN", "")  # e.g. `AUTODL_TOKEN= python ...`
    env_file.write_text("AUTODL_TOKEN=file-token-abcdef\n")
    assert settings.load_settings().token == "file-token-abcdef"


def test_missing_token_says_where_it_looked(env_file, bare_env):
    error = _error()
    assert error.error_type is ErrorType.TOKEN_MISSING
    looked_in = error.details["looked_in"]
    assert any("AUTODL_TOKEN" in place for place in looked_in)
    assert str(env_file) in looked_in
    assert error.hint


@pytest.mark.parametrize("where", ["environment", "env_file"])
def test_placeholder_token_counts_as_missing(where, env_file, bare_env, monkeypatch):
    if where == "environment":
        monkeypatch.setenv("AUTODL_TOKEN", settings.PLACEHOLDER_TOKEN)
    else:
        env_file.write_text(f"AUTODL_TOKEN={settings.PLACEHOLDER_TOKEN}\n")
    assert _error().error_type is ErrorType.TOKEN_MISSING


def test_the_shipped_env_example_counts_as_missing(env_file, bare_env):
    """Copying .env.example to .env without editing it must not send the placeholder."""
    example = settings.SKILL_ROOT / ".env.example"
    env_file.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    error = _error()
    assert error.error_type is ErrorType.TOKEN_MISSING


def test_loaded_token_is_registered_as_a_secret():
    settings.load_settings()
    assert output.scrub(f"token={TEST_TOKEN}") == f"token={output.REDACTED}"


def test_token_is_not_in_settings_repr():
    assert TEST_TOKEN not in repr(settings.load_settings())


# --- host -----------------------------------------------------------------------------

def test_default_host(bare_env, monkeypatch):
    monkeypatch.setenv("AUTODL_TOKEN", TEST_TOKEN)
    assert settings.load_settings().host == settings.DEFAULT_HOST == "https://private.autodl.com"


@pytest.mark.parametrize(
    "host",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.2:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
        "https://private.autodl.com",
        "https://api.autodl.com/",
        "https://10.0.0.5:443",
    ],
)
def test_allowed_hosts(host, monkeypatch):
    monkeypatch.setenv("AUTODL_HOST", host)
    assert settings.load_settings().host == host.rstrip("/")


@pytest.mark.parametrize(
    "host",
    [
        "http://private.autodl.com",
        "http://10.0.0.5:8080",
        "http://localhost.example.com",
        "http://0.0.0.0:8080",
    ],
)
def test_plain_http_rejected_for_non_loopback(host, monkeypatch):
    monkeypatch.setenv("AUTODL_HOST", host)
    error = _error()
    assert error.error_type is ErrorType.CONFIG_ERROR
    assert error.details["path"] == "AUTODL_HOST"


@pytest.mark.parametrize("host", ["private.autodl.com", "ftp://private.autodl.com", "https://", "not a url"])
def test_malformed_host_is_config_error(host, monkeypatch):
    monkeypatch.setenv("AUTODL_HOST", host)
    error = _error()
    assert error.error_type is ErrorType.CONFIG_ERROR
    assert error.details["path"] == "AUTODL_HOST"


def test_host_check_applies_to_env_file_too(env_file, bare_env, monkeypatch):
    monkeypatch.setenv("AUTODL_TOKEN", TEST_TOKEN)
    env_file.write_text("AUTODL_HOST=http://private.autodl.com\n")
    assert _error().error_type is ErrorType.CONFIG_ERROR


# --- blank values ---------------------------------------------------------------------
# Empty or whitespace-only counts as unset, so `.env` still applies; whitespace only with
# nothing after it is an error, never the default (a blank host must not mean production).

BLANKS = ["", " ", "\t", " \n "]


@pytest.mark.parametrize("blank", BLANKS)
@pytest.mark.parametrize("name,file_value,expected", [
    ("AUTODL_HOST", "https://api.autodl.com", ("host", "https://api.autodl.com")),
    ("AUTODL_TOKEN", "file-token-abcdef", ("token", "file-token-abcdef")),
    ("AUTODL_HTTP_TIMEOUT", "12.5", ("http_timeout", 12.5)),
])
def test_a_blank_environment_value_never_hides_env_file(env_file, monkeypatch, blank, name, file_value, expected):
    env_file.write_text(f"{name}={file_value}\n")
    monkeypatch.setenv(name, blank)
    field, value = expected
    assert getattr(settings.load_settings(), field) == value


@pytest.mark.parametrize("name", ["AUTODL_HOST", "AUTODL_HTTP_TIMEOUT"])
@pytest.mark.parametrize("where", ["environment", "env_file", "both"])
def test_whitespace_only_with_nothing_after_it_is_config_error(env_file, monkeypatch, name, where):
    monkeypatch.delenv(name, raising=False)
    if where in ("environment", "both"):
        monkeypatch.setenv(name, "   ")
    if where in ("env_file", "both"):
        env_file.write_text(f'{name}="  "\n')
    error = _error()
    assert (error.error_type, error.details["path"]) == (ErrorType.CONFIG_ERROR, name)
    assert len(error.details["blank_in"]) == (2 if where == "both" else 1)
    assert "未发送任何请求" in error.message


def test_an_empty_host_with_nothing_after_it_is_the_default(bare_env, monkeypatch):
    monkeypatch.setenv("AUTODL_TOKEN", TEST_TOKEN)
    monkeypatch.setenv("AUTODL_HOST", "")  # `AUTODL_HOST= python ...`: the same as not set
    assert settings.load_settings().host == settings.DEFAULT_HOST


def test_a_whitespace_token_is_token_missing_saying_where(env_file, bare_env, monkeypatch):
    monkeypatch.setenv("AUTODL_TOKEN", " \t ")
    error = _error()
    assert error.error_type is ErrorType.TOKEN_MISSING
    assert error.details["blank_in"] == ["环境变量 AUTODL_TOKEN"] and "空白" in error.message


def test_a_blank_host_in_a_real_process_never_connects(tmp_path):
    """The issue's case end to end: no request to https://private.autodl.com, a config_error."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "AUTODL_TOKEN": TEST_TOKEN, "AUTODL_HOST": "  ", "HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    completed = subprocess.run([sys.executable, str(ROOT / "scripts" / "list_images.py")], capture_output=True,
                               text=True, env=env, cwd=tmp_path, timeout=60)
    document = json.loads(completed.stdout)
    assert (completed.returncode, document["error_type"], document["details"]["path"]) == (1, "config_error", "AUTODL_HOST")


def test_a_whitespace_wechat_host_is_config_error():
    from autodl_esd.platform.notify import wechat_host

    with pytest.raises(AutoDLError) as caught:
        wechat_host(settings.load_settings(), {"AUTODL_WECHAT_HOST": "  "})
    assert caught.value.details["path"] == "AUTODL_WECHAT_HOST"


# --- the .env file itself -------------------------------------------------------------

@pytest.mark.parametrize("content", [b"AUTODL_TOKEN=abc\xff\n", b"\xff\xfeA\x00=\x00", b"AUTODL_HOST=https://h\xe9.com\n"])
def test_a_env_file_that_is_not_utf8_is_config_error_naming_it(env_file, content):
    env_file.write_bytes(content)
    error = _error()
    assert (error.error_type, error.details["path"]) == (ErrorType.CONFIG_ERROR, str(env_file))
    assert "UTF-8" in error.message


def test_a_env_file_that_is_a_directory_or_too_large_is_config_error(env_file):
    env_file.mkdir()
    assert _error().details["reason"] == "是一个目录"
    env_file.rmdir()
    env_file.write_text("# x\n" * settings.MAX_ENV_FILE_BYTES)
    assert _error().details["max_bytes"] == settings.MAX_ENV_FILE_BYTES


def test_a_utf8_env_file_with_a_bom_is_read(env_file, bare_env):
    env_file.write_bytes(b"\xef\xbb\xbfAUTODL_TOKEN=file-token-abcdef\n")
    assert settings.load_settings().token == "file-token-abcdef"


# --- timeout --------------------------------------------------------------------------

def test_timeout_default_is_30_seconds():
    assert settings.load_settings().http_timeout == settings.DEFAULT_HTTP_TIMEOUT_SECONDS == 30


@pytest.mark.parametrize("value,expected", [("60", 60.0), ("0.5", 0.5), (" 7 ", 7.0)])
def test_timeout_from_environment(value, expected, monkeypatch):
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", value)
    assert settings.load_settings().http_timeout == expected


@pytest.mark.parametrize("value", ["abc", "0", "-5", "30s", "nan", "inf"])
def test_bad_timeout_is_config_error(value, monkeypatch):
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", value)
    error = _error()
    assert error.error_type is ErrorType.CONFIG_ERROR
    assert error.details["path"] == "AUTODL_HTTP_TIMEOUT"


# --- through a script -----------------------------------------------------------------

def test_script_reports_token_missing_as_json(run, env_file, bare_env, result_validator):
    code, document, _ = run("queue_submit.py", EXAMPLE, "--dry-run", "--quiet")
    assert code == 1
    assert document["error_type"] == "token_missing"
    result_validator.validate(document)


def test_script_reports_plain_http_host_as_config_error(run, monkeypatch, result_validator):
    monkeypatch.setenv("AUTODL_HOST", "http://private.autodl.com")
    code, document, _ = run("queue_submit.py", EXAMPLE, "--dry-run", "--quiet")
    assert code == 1
    assert document["error_type"] == "config_error"
    result_validator.validate(document)
