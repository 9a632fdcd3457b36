"""The output contract: one JSON document on stdout, the error enum, exit codes, scrubbing."""

from __future__ import annotations

import json
import signal

import pytest

from autodl_esd.core import cli, output
from autodl_esd.core.errors import EXIT_CODES, ApiError, AutoDLError, ErrorType, Interrupted
from helpers import ROOT, TEST_TOKEN

RESULT_SCHEMA = json.loads((ROOT / "schemas" / "result.schema.json").read_text(encoding="utf-8"))

# SPEC section 2's table (error_type -> exit), restated: the agent-facing contract must not drift silently.
EXPECTED_EXIT_CODES = {
    "validation_error": 1,
    "config_error": 1,
    "usage_error": 1,
    "token_missing": 1,
    "auth_error": 1,
    "image_not_found": 1,
    "gpu_type_not_found": 1,
    "deployment_exists": 1,
    "not_found": 1,
    "confirmation_required": 1,
    "dependency_missing": 1,
    "timeout": 2,
    "startup_timeout": 2,
    "submission_error": 3,
    "api_error": 3,
    "internal_error": 4,
    "interrupted": 130,
    # The serving gateway's HTTP answers (never a script's exit), grouped like their kin.
    "no_replicas": 3,
    "overloaded": 3,
    "upstream_error": 3,
    "unauthorized": 1,
    "bad_request": 1,
}

# The minimum `details` each type must carry for its document to be schema-valid.
MINIMAL_DETAILS = {
    "validation_error": {"errors": [{"path": "name", "message": "缺少", "hint": "补上"}]},
    "config_error": {"path": "x.json"},
    "token_missing": {"looked_in": ["环境变量 AUTODL_TOKEN"]},
    "auth_error": {"code": "Unauthorized", "msg": "未登录"},
    "image_not_found": {"requested": "image-x", "available_images": []},
    "gpu_type_not_found": {"requested": ["RTX 4090"], "available_gpus": []},
    "deployment_exists": {"deployment_uuid": "833f1cd5a764fa3"},
    "dependency_missing": {"install_command": "pip install -r requirements.txt"},
    "timeout": {"last_stock": {}, "elapsed_seconds": 1.0},
    "startup_timeout": {"deployment_uuid": "833f1cd5a764fa3"},
    "submission_error": {"api_response": {}, "suggestion": "放宽条件"},
    "api_error": {"code": "InternalError", "msg": "x", "http_status": 500, "retryable": True},
}


def _schema_error_types() -> list[str]:
    return RESULT_SCHEMA["$defs"]["error"]["properties"]["error_type"]["enum"]


def _run(handler, argv, capsys):
    parser = cli.make_parser("demo.py", "演示脚本", ["python demo.py --flag"])
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--wait", type=cli.positive_seconds, default=1.0)
    parser.add_argument("--limit", type=cli.non_negative_seconds, default=0.0)
    code = cli.run(parser, handler, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _document(out: str) -> dict:
    document = json.loads(out)  # exactly one JSON document: json.loads rejects trailing data
    assert isinstance(document, dict)
    return document


# --- the enum -------------------------------------------------------------------------

def test_error_type_enum_equals_schema_enum_exactly():
    assert [member.value for member in ErrorType] == _schema_error_types()


def test_exit_codes_match_spec_table():
    assert {member.value: member.exit_code for member in ErrorType} == EXPECTED_EXIT_CODES
    assert set(EXIT_CODES) == set(ErrorType)


def test_epilog_lists_every_error_type_a_script_exits_with():
    from autodl_esd.core.errors import EXIT_CODE_EPILOG, SERVING_ONLY

    for member in ErrorType:
        # The gateway's HTTP answers are no exit of a script: --help does not list them.
        assert (member.value in EXIT_CODE_EPILOG) is (member not in SERVING_ONLY), member


# --- every document validates ---------------------------------------------------------

@pytest.mark.parametrize("error_type", [member for member in ErrorType], ids=lambda m: m.value)
def test_every_error_type_emits_a_schema_valid_document(error_type, capsys, result_validator):
    error = AutoDLError(error_type, "出错了。", "这样修。", MINIMAL_DETAILS.get(error_type.value, {}))
    code = output.emit_error(error)
    document = _document(capsys.readouterr().out)
    result_validator.validate(document)
    assert code == EXPECTED_EXIT_CODES[error_type.value]
    assert document == {"status": "error", "error_type": error_type.value, "message": "出错了。", "hint": "这样修。", "details": error.details}


def test_api_error_details_are_schema_valid(capsys, result_validator):
    output.emit_error(ApiError("平台错误", code="InternalError", msg="x", http_status=500, retryable=True))
    result_validator.validate(_document(capsys.readouterr().out))


def test_schema_rejects_an_error_without_required_details(result_validator):
    import jsonschema

    document = {"status": "error", "error_type": "validation_error", "message": "x", "hint": "", "details": {}}
    with pytest.raises(jsonschema.ValidationError):
        result_validator.validate(document)


@pytest.mark.parametrize(
    "payload",
    [{}, {"items": [], "count": 0}, {"deployment_uuid": "833f1cd5a764fa3", "waited_seconds": 0.4, "warnings": []}, {"dry_run": True, "request": {"name": "x"}}],
)
def test_success_documents_are_schema_valid(payload, capsys, result_validator):
    assert output.emit_success(payload) == 0
    document = _document(capsys.readouterr().out)
    result_validator.validate(document)
    assert document["status"] == "success"


def test_output_is_utf8_json_not_ascii_escaped(capsys):
    output.emit_success({"message": "部署成功"})
    assert "部署成功" in capsys.readouterr().out


def test_non_json_values_do_not_break_the_document(capsys):
    from pathlib import Path

    output.emit_success({"path": Path("/tmp/x")})
    assert _document(capsys.readouterr().out)["path"] == "/tmp/x"


# --- cli.run --------------------------------------------------------------------------

def test_handler_result_becomes_success_document(capsys, result_validator):
    code, out, err = _run(lambda args, ctx: {"count": 0, "items": []}, ["--quiet"], capsys)
    assert code == 0
    result_validator.validate(_document(out))
    assert err == ""


@pytest.mark.parametrize(
    "argv",
    [["--no-such-flag"], ["--count", "many"], ["--wait", "0"], ["--wait", "-1"], ["--limit", "-1"], ["--wait", "x"], ["extra"]],
)
def test_argparse_errors_become_usage_error(argv, capsys, result_validator):
    code, out, err = _run(lambda args, ctx: {}, argv, capsys)
    document = _document(out)
    result_validator.validate(document)
    assert code == 1
    assert document["error_type"] == "usage_error"
    assert "usage" in document["hint"].lower() or "用法" in document["hint"]


def test_fractional_seconds_are_accepted(capsys):
    seen = {}

    def handler(args, ctx):
        seen.update(wait=args.wait, limit=args.limit)
        return {}

    code, _, _ = _run(handler, ["--wait", "0.2", "--limit", "0"], capsys)
    assert code == 0
    assert seen == {"wait": 0.2, "limit": 0.0}


def test_help_exits_zero_and_shows_examples_and_exit_codes(capsys):
    code, out, _ = _run(lambda args, ctx: {}, ["--help"], capsys)
    assert code == 0
    assert "python demo.py --flag" in out
    assert "130" in out and "internal_error" in out


def test_autodl_error_from_handler(capsys, result_validator):
    def handler(args, ctx):
        raise AutoDLError(ErrorType.NOT_FOUND, "没有这个部署。", "用 list_deployments.py 查看。")

    code, out, _ = _run(handler, [], capsys)
    document = _document(out)
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "not_found")


def _buggy(args, ctx):
    ctx.partial["deployment_uuid"] = "833f1cd5a764fa3"
    return {}["missing"]


def test_unexpected_exception_is_internal_error_without_traceback(capsys, result_validator):
    code, out, err = _run(_buggy, [], capsys)
    document = _document(out)
    result_validator.validate(document)
    assert code == 4
    assert document["error_type"] == "internal_error"
    assert "KeyError" in document["details"]["exception"]
    assert document["details"]["deployment_uuid"] == "833f1cd5a764fa3"  # what was done is kept
    assert "Traceback" not in out
    assert "Traceback" not in err


def test_debug_puts_the_traceback_on_stderr_only(capsys, result_validator):
    code, out, err = _run(_buggy, ["--debug"], capsys)
    assert code == 4
    result_validator.validate(_document(out))
    assert "Traceback" not in out
    assert "Traceback" in err and "KeyError" in err


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), Interrupted("SIGTERM")], ids=["ctrl-c", "sigterm"])
def test_interrupt_is_a_json_document_with_what_was_created(raised, capsys, result_validator):
    def handler(args, ctx):
        ctx.partial["deployment_uuid"] = "833f1cd5a764fa3"
        raise raised

    code, out, _ = _run(handler, [], capsys)
    document = _document(out)
    result_validator.validate(document)
    assert code == 130
    assert document["error_type"] == "interrupted"
    assert document["details"]["deployment_uuid"] == "833f1cd5a764fa3"


def test_signal_handlers_are_installed_and_restored(capsys):
    before = signal.getsignal(signal.SIGTERM)
    seen = {}

    def handler(args, ctx):
        seen["during"] = signal.getsignal(signal.SIGTERM)
        return {}

    _run(handler, [], capsys)
    assert seen["during"] is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_handler_becomes_interrupted(capsys, result_validator):
    import os

    def handler(args, ctx):
        os.kill(os.getpid(), signal.SIGTERM)
        return {"unreachable": True}

    code, out, _ = _run(handler, [], capsys)
    document = _document(out)
    result_validator.validate(document)
    assert code == 130
    assert document["details"]["signal"] == "SIGTERM"


# --- secrets --------------------------------------------------------------------------

def test_registered_secret_is_scrubbed_from_stdout(capsys):
    output.register_secret(TEST_TOKEN)
    output.emit_success({"echo": f"Authorization: {TEST_TOKEN}", "nested": {"list": [TEST_TOKEN]}})
    out = capsys.readouterr().out
    assert TEST_TOKEN not in out
    assert output.REDACTED in out


def test_registered_secret_is_scrubbed_from_progress_and_errors(capsys):
    output.register_secret(TEST_TOKEN)
    output.Progress().log(f"calling with {TEST_TOKEN}")
    output.emit_error(AutoDLError(ErrorType.API_ERROR, f"failed {TEST_TOKEN}", TEST_TOKEN, {"code": None, "msg": TEST_TOKEN, "http_status": None, "retryable": False}))
    captured = capsys.readouterr()
    assert TEST_TOKEN not in captured.out
    assert TEST_TOKEN not in captured.err


def test_secret_in_exception_and_traceback_is_scrubbed(capsys):
    output.register_secret(TEST_TOKEN)

    def handler(args, ctx):
        raise RuntimeError(f"header was {TEST_TOKEN}")

    code, out, err = _run(handler, ["--debug"], capsys)
    assert code == 4
    assert TEST_TOKEN not in out
    assert TEST_TOKEN not in err
    assert "RuntimeError" in err


def test_short_values_are_not_treated_as_secrets():
    output.register_secret("ab")
    output.register_secret("")
    output.register_secret(None)
    assert output.scrub("ab cd") == "ab cd"


# --- progress -------------------------------------------------------------------------

def test_quiet_silences_progress(capsys):
    def handler(args, ctx):
        ctx.progress.log("正在查询")
        ctx.progress.status("等待库存")
        return {}

    _, _, err = _run(handler, ["--quiet"], capsys)
    assert err == ""
    _, out, err = _run(handler, [], capsys)
    assert "正在查询" in err and "等待库存" in err
    assert "正在查询" not in out


def test_status_rewrites_one_line_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = output.Progress(stream=stream)
    progress.status("a")
    progress.status("b")
    progress.log("done")
    progress.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[2K") == 2
    assert text.endswith("done\n")


def test_status_is_plain_lines_off_a_terminal():
    import io

    stream = io.StringIO()
    progress = output.Progress(stream=stream)
    progress.status("a")
    progress.status("b")
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().count("\n") == 2


def test_a_success_payload_cannot_turn_into_another_status(capsys):
    parser = cli.make_parser("t.py", "t")
    code = cli.run(parser, lambda args, ctx: {"status": "running"}, [])
    document = json.loads(capsys.readouterr().out)
    assert code == 4 and document["error_type"] == "internal_error"
