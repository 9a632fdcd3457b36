"""The error matrix for every ops script: each HTTP failure becomes the right JSON error.

The first API call of each script fails; the script must answer with the documented
`error_type` and exit code, and stdout must validate against the result schema.
"""

from __future__ import annotations

import pytest
import requests

from helpers import TEST_TOKEN, envelope
from helpers.fake_api import (
    BLACKLIST,
    CONTAINER_UUID,
    CONTAINERS,
    DEP_UUID,
    DEPLOYMENTS,
    IMAGES,
    REPLICA_NUM,
    STOCK,
    deployment,
    expect_deployment,
)

pytestmark = pytest.mark.usefixtures("fast_read_back")  # read-backs after a change need no real pauses

# script, argv, (method, url) of its first call
SCRIPTS = [
    ("list_images.py", [], ("POST", IMAGES)),
    ("gpu_stock.py", [], ("GET", STOCK)),
    ("list_deployments.py", [], ("POST", DEPLOYMENTS)),
    ("list_containers.py", ["--deployment-uuid", DEP_UUID], ("POST", DEPLOYMENTS)),
    ("container_events.py", ["--name", "svc"], ("POST", DEPLOYMENTS)),
    ("set_replicas.py", ["--deployment-uuid", DEP_UUID, "--replica-num", "2"], ("POST", DEPLOYMENTS)),
    ("stop_container.py", ["--container-uuid", CONTAINER_UUID], ("POST", CONTAINERS)),
    ("stop_deployment.py", ["--deployment-uuid", DEP_UUID, "--yes"], ("POST", DEPLOYMENTS)),
    ("delete_deployment.py", ["--deployment-uuid", DEP_UUID, "--yes"], ("POST", DEPLOYMENTS)),
    ("blacklist_host.py", ["--container-uuid", CONTAINER_UUID], ("POST", CONTAINERS)),
    ("list_blacklist.py", [], ("GET", BLACKLIST)),
]

# name, how the call fails, expected error_type, exit code
FAILURES = [
    ("http400", {"status": 400, "json": envelope(None, code="RequestParameterIsWrong", msg="请求参数错误")}, "api_error", 3),
    ("http401", {"status": 401, "json": envelope(None, code="Unauthorized", msg="token无效")}, "auth_error", 1),
    ("http403", {"status": 403, "body": "forbidden"}, "auth_error", 1),
    ("http404", {"status": 404, "body": "404 page not found"}, "api_error", 3),
    ("http429", {"status": 429, "json": envelope(None, code="TooManyRequests", msg="请求过于频繁")}, "api_error", 3),
    ("http500", {"status": 500, "body": "internal"}, "api_error", 3),
    ("http503", {"status": 503, "json": envelope(None, code="ServiceUnavailable", msg="busy")}, "api_error", 3),
    ("enterprise", {"status": 200, "json": envelope(None, code="BadRequest", msg="无当前资源访问权限")}, "auth_error", 1),
    ("connection", {"body": requests.exceptions.ConnectionError("Connection reset by peer")}, "api_error", 3),
    ("timeout", {"body": requests.exceptions.ReadTimeout("read timed out")}, "api_error", 3),
]

RETRIED = {"http429", "http500", "http503", "connection", "timeout"}


@pytest.mark.parametrize(("script", "argv", "first_call"), SCRIPTS, ids=[s[0] for s in SCRIPTS])
@pytest.mark.parametrize(("name", "failure", "error_type", "exit_code"), FAILURES, ids=[f[0] for f in FAILURES])
def test_error_matrix(run, mocked, result_validator, script, argv, first_call, name, failure, error_type, exit_code):
    method, target = first_call
    mocked.add(method, target, **failure)
    code, document, _ = run(script, *argv, "--quiet")
    assert (document.get("error_type"), code) == (error_type, exit_code), document
    result_validator.validate(document)
    assert TEST_TOKEN not in str(document)
    attempts = len(mocked.calls)
    assert attempts == (4 if name in RETRIED else 1)  # transient failures retried, others not
    if error_type == "api_error":
        assert set(document["details"]) >= {"code", "msg", "http_status", "retryable"}


@pytest.mark.parametrize(("script", "argv", "first_call"), SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_token_missing(run, monkeypatch, result_validator, script, argv, first_call):
    monkeypatch.delenv("AUTODL_TOKEN")
    code, document, _ = run(script, *argv)
    assert (code, document["error_type"]) == (1, "token_missing")
    result_validator.validate(document)


@pytest.mark.parametrize(("script", "argv", "first_call"), SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_help_is_instant_and_documents_exit_codes(capsys, script, argv, first_call):
    from helpers import load_script, script_path

    module = load_script(script_path(script))
    assert module.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "示例:" in text and "退出码:" in text


def test_a_failing_mutation_is_an_api_error(run, api, result_validator):
    expect_deployment(api, deployment())
    api.put(REPLICA_NUM, json=envelope(None, code="BadRequest", msg="部署已停止，无法设置副本数"))
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "3")
    assert (code, document["error_type"]) == (3, "api_error")
    result_validator.validate(document)
    assert document["details"]["msg"] == "部署已停止，无法设置副本数"
