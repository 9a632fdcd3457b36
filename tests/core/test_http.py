"""The HTTP client: auth header, envelope, error mapping, retries, and keeping the token secret."""

from __future__ import annotations

import json
import random
import socket

import pytest
import requests
import responses
from responses import matchers

from autodl_esd.platform import api
from autodl_esd.core import http
from autodl_esd.core.errors import ApiError, AutoDLError, ErrorType
from autodl_esd.core.settings import load_settings
from helpers import ROOT, TEST_TOKEN, envelope, url

EXAMPLE = str(ROOT / "examples" / "replicaset-service.json")
PATH = "/api/v1/dev/deployment/list"


@pytest.fixture
def client():
    return http.ApiClient(load_settings())


@pytest.fixture
def waits(monkeypatch):
    """Record the client's retry waits instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(http, "_sleep", recorded.append)
    return recorded


# --- request shape --------------------------------------------------------------------

def test_raw_token_and_json_content_type(mocked, client):
    mocked.post(
        url(PATH),
        json=envelope({"list": []}),
        match=[matchers.header_matcher({"Authorization": TEST_TOKEN, "Content-Type": "application/json"})],
    )
    assert client.post(PATH, {"page_index": 1}) == {"list": []}
    sent = mocked.calls[0].request.headers["Authorization"]
    assert sent == TEST_TOKEN
    assert not sent.lower().startswith("bearer")


def test_get_params_go_in_query_string_with_no_body(mocked, client):
    mocked.get(
        url("/api/v1/dev/deployment/ddp/overview"),
        json=envelope([]),
        match=[matchers.query_param_matcher({"deployment_uuid": "833f1cd5a764fa3"})],
    )
    assert client.get("/api/v1/dev/deployment/ddp/overview", {"deployment_uuid": "833f1cd5a764fa3"}) == []
    assert mocked.calls[0].request.body is None


def test_get_without_params_sends_no_body(mocked, client):
    mocked.get(url(api.GLOBAL_STOCK_PATH), json=envelope({"RTX 4090": {"idle_gpu_num": 1, "total_gpu_num": 8}}))
    stock, _raw = api.global_stock(client)
    assert stock == {"RTX 4090": {"idle": 1, "total": 8}}
    assert mocked.calls[0].request.body is None
    assert "?" not in mocked.calls[0].request.url


def test_post_and_put_send_json_body(mocked, client):
    mocked.put(
        url(api.REPLICA_NUM_PATH),
        json=envelope(None),
        match=[matchers.json_params_matcher({"deployment_uuid": "833f1cd5a764fa3", "replica_num": 3})],
    )
    api.set_replica_num(client, "833f1cd5a764fa3", 3)


def test_delete_carries_a_json_body(mocked, client):
    mocked.delete(
        url(api.DEPLOYMENT_PATH),
        json=envelope(None),
        match=[
            matchers.json_params_matcher({"deployment_uuid": "833f1cd5a764fa3"}),
            matchers.header_matcher({"Content-Type": "application/json"}),
        ],
    )
    api.delete_deployment(client, "833f1cd5a764fa3")


def test_non_ascii_body_is_utf8_json(mocked, client):
    mocked.post(url(PATH), json=envelope({"list": []}), match=[matchers.json_params_matcher({"name": "部署一"})])
    client.post(PATH, {"name": "部署一"})
    assert "部署一".encode("utf-8") in mocked.calls[0].request.body


# --- envelope -------------------------------------------------------------------------

@pytest.mark.parametrize("data", [{"deployment_uuid": "833f1cd5a764fa3"}, [1, 2], None, "text"])
def test_success_returns_data(mocked, client, data):
    mocked.post(url(PATH), json=envelope(data))
    assert client.post(PATH, {}) == data


def test_business_error_with_http_200_is_api_error_not_retried(mocked, client):
    mocked.post(url(PATH), json=envelope(None, code="RequestParameterIsWrong", msg="请求参数错误"))
    with pytest.raises(ApiError) as caught:
        client.post(PATH, {})
    error = caught.value
    assert error.error_type is ErrorType.API_ERROR
    assert error.details["code"] == "RequestParameterIsWrong"
    assert error.details["msg"] == "请求参数错误"
    assert error.details["http_status"] == 200
    assert error.details["retryable"] is False
    assert error.ambiguous is False
    assert len(mocked.calls) == 1


def test_permission_business_error_is_auth_error(mocked, client):
    mocked.post(url(PATH), json=envelope(None, code="BadRequest", msg="无当前资源访问权限"))
    with pytest.raises(AutoDLError) as caught:
        client.post(PATH, {})
    error = caught.value
    assert error.error_type is ErrorType.AUTH_ERROR
    assert error.details["code"] == "BadRequest"
    assert error.details["msg"] == "无当前资源访问权限"
    assert len(mocked.calls) == 1


def test_bad_request_about_parameters_is_not_auth_error(mocked, client):
    mocked.post(url(PATH), json=envelope(None, code="BadRequest", msg="状态不允许此操作"))
    with pytest.raises(AutoDLError) as caught:
        client.post(PATH, {})
    assert caught.value.error_type is ErrorType.API_ERROR


@pytest.mark.parametrize("code, msg", [
    ("AuthorizeFailed", "登录超时，请重新登录"),   # the one third-party note on a rejected token
    ("AuthorizeFailed", ""),
    ("TokenExpired", "token expired"),             # an unknown auth code in English
    ("BadRequest", "Unauthorized: invalid token"),  # a generic code with an English text
    ("unauthorized", "whatever"),                  # a known code in another case
])
def test_rejected_token_in_any_words_is_auth_error(mocked, client, code, msg):
    mocked.post(url(PATH), json=envelope(None, code=code, msg=msg))
    with pytest.raises(AutoDLError) as caught:
        client.post(PATH, {})
    assert caught.value.error_type is ErrorType.AUTH_ERROR
    assert len(mocked.calls) == 1


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("body", [
    {"json": {"code": "SomethingNew", "msg": "access token rejected", "request_id": "ab" * 16}},
    {"body": "Forbidden", "content_type": "text/plain"},
    {"body": "", "content_type": "text/plain"},
])
def test_401_and_403_are_auth_error_whatever_the_text(mocked, client, status, body):
    mocked.post(url(PATH), status=status, **body)
    with pytest.raises(AutoDLError) as caught:
        client.post(PATH, {})
    assert caught.value.error_type is ErrorType.AUTH_ERROR
    assert caught.value.details["http_status"] == status


# --- the platform's request_id is kept on every error that had an envelope --------------

REQUEST_ID = "3f2a9c0d4b5e6f708192a3b4c5d6e7f8"


@pytest.mark.parametrize("status, code, msg, error_type", [
    (200, "BadRequest", "状态不允许此操作", ErrorType.API_ERROR),
    (200, "BadRequest", "无当前资源访问权限", ErrorType.AUTH_ERROR),
    (401, "Unauthorized", "开发者 Token 无效", ErrorType.AUTH_ERROR),
    (404, "NotFound", "接口不存在", ErrorType.API_ERROR),
    (503, "ServiceUnavailable", "服务繁忙", ErrorType.API_ERROR),
])
def test_error_details_carry_the_request_id(mocked, client, waits, status, code, msg, error_type):
    mocked.post(url(PATH), status=status, json={"code": code, "msg": msg, "data": None, "request_id": REQUEST_ID})
    with pytest.raises(AutoDLError) as caught:
        client.post(PATH, {})
    assert caught.value.error_type is error_type
    assert caught.value.details["request_id"] == REQUEST_ID


def test_request_id_reaches_the_error_document(run, mocked, result_validator):
    mocked.post(url(PATH), json={"code": "BadRequest", "msg": "请求参数错误", "data": None, "request_id": REQUEST_ID})
    code, out, _ = run("list_deployments.py", "--quiet")
    assert (code, out["error_type"]) == (3, "api_error")
    result_validator.validate(out)
    assert out["details"]["request_id"] == REQUEST_ID


@pytest.mark.parametrize(
    "body,content_type",
    [("<html>502 Bad Gateway</html>", "text/html"), ("", "text/plain"), ('["no", "envelope"]', "application/json")],
)
def test_body_that_is_not_an_envelope_is_api_error(mocked, client, body, content_type):
    mocked.post(url(PATH), body=body, status=200, content_type=content_type)
    with pytest.raises(ApiError) as caught:
        client.post(PATH, {})
    assert caught.value.error_type is ErrorType.API_ERROR
    assert caught.value.details["http_status"] == 200
    assert len(mocked.calls) == 1


# --- the error matrix -----------------------------------------------------------------

def _connection_error() -> dict:
    return {"body": requests.exceptions.ConnectionError("Connection reset by peer")}


def _timeout() -> dict:
    return {"body": requests.exceptions.ReadTimeout("Read timed out")}


MATRIX = [
    # id, response kwargs, error type, retryable, attempts
    ("400", {"status": 400, "json": envelope(None, code="RequestParameterIsWrong", msg="请求参数错误")}, "api_error", False, 1),
    ("401", {"status": 401, "json": envelope(None, code="Unauthorized", msg="未登录")}, "auth_error", None, 1),
    ("403", {"status": 403, "body": "Forbidden"}, "auth_error", None, 1),
    ("404", {"status": 404, "body": "404 page not found"}, "api_error", False, 1),
    ("404-envelope", {"status": 404, "json": envelope(None, code="NotFound", msg="not found")}, "api_error", False, 1),
    ("429", {"status": 429, "json": envelope(None, code="TooManyRequests", msg="请求过于频繁")}, "api_error", True, http.MAX_ATTEMPTS),
    ("500", {"status": 500, "json": envelope(None, code="InternalError", msg="内部错误")}, "api_error", True, http.MAX_ATTEMPTS),
    ("503", {"status": 503, "body": "<html>Service Unavailable</html>"}, "api_error", True, http.MAX_ATTEMPTS),
    ("connection-error", _connection_error(), "api_error", True, http.MAX_ATTEMPTS),
    ("timeout", _timeout(), "api_error", True, http.MAX_ATTEMPTS),
]


@pytest.mark.parametrize(
    "response,error_type,retryable,attempts",
    [case[1:] for case in MATRIX],
    ids=[case[0] for case in MATRIX],
)
def test_error_matrix(mocked, client, waits, response, error_type, retryable, attempts):
    mocked.post(url(PATH), **response)
    with pytest.raises(AutoDLError) as caught:
        client.post(PATH, {})
    error = caught.value
    assert error.error_type.value == error_type
    if retryable is not None:
        assert error.details["retryable"] is retryable
    assert len(mocked.calls) == attempts
    assert len(waits) == attempts - 1


@pytest.mark.parametrize(
    "response,error_type,retryable,attempts",
    [case[1:] for case in MATRIX],
    ids=[case[0] for case in MATRIX],
)
def test_error_matrix_through_a_script(run, mocked, result_validator, response, error_type, retryable, attempts):
    """The same failures end a script with one schema-valid JSON document and the right exit code."""
    mocked.post(url(api.IMAGES_PATH), **response)
    code, document, stderr = run("queue_submit.py", EXAMPLE, "--dry-run", "--quiet")
    result_validator.validate(document)
    assert document["error_type"] == error_type
    assert code == ErrorType(error_type).exit_code == {"api_error": 3, "auth_error": 1}[error_type]
    assert len(mocked.calls) == attempts
    assert stderr == ""  # --quiet
    if error_type == "api_error":
        assert document["details"]["retryable"] is retryable


def test_retry_then_success(client, waits):
    with responses.RequestsMock(registry=responses.registries.OrderedRegistry) as mock:
        mock.post(url(PATH), status=500, json=envelope(None, code="InternalError"))
        mock.post(url(PATH), body=requests.exceptions.ConnectionError("Connection reset by peer"))
        mock.post(url(PATH), status=503, body="busy")
        mock.post(url(PATH), json=envelope({"list": [1]}))
        assert client.post(PATH, {}) == {"list": [1]}
        assert len(mock.calls) == 4
    assert len(waits) == 3


def test_retries_are_logged_to_stderr_without_the_token(mocked, waits, capsys):
    from autodl_esd.core.output import Progress

    client = http.ApiClient(load_settings(), progress=Progress(quiet=False))
    mocked.post(url(PATH), status=503, body="busy")
    with pytest.raises(ApiError):
        client.post(PATH, {})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("重试") == http.MAX_ATTEMPTS - 1
    assert TEST_TOKEN not in captured.err


# --- waiting between retries ----------------------------------------------------------

def test_retry_after_is_honoured(mocked, client, waits):
    mocked.post(url(PATH), status=429, headers={"Retry-After": "7"}, json=envelope(None, code="TooManyRequests"))
    with pytest.raises(ApiError):
        client.post(PATH, {})
    assert waits == [7.0] * (http.MAX_ATTEMPTS - 1)


def test_retry_after_is_capped(mocked, client, waits):
    mocked.post(url(PATH), status=503, headers={"Retry-After": "86400"}, body="down for maintenance")
    with pytest.raises(ApiError):
        client.post(PATH, {})
    assert waits == [http.RETRY_AFTER_CAP_SECONDS] * (http.MAX_ATTEMPTS - 1)


def test_retry_after_http_date_falls_back_to_backoff(mocked, client, waits):
    mocked.post(url(PATH), status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, body="slow down")
    with pytest.raises(ApiError):
        client.post(PATH, {})
    assert len(waits) == http.MAX_ATTEMPTS - 1
    for retry, wait in enumerate(waits, start=1):
        assert 0 <= wait <= min(http.BACKOFF_CAP_SECONDS, http.BACKOFF_BASE_SECONDS * 2 ** (retry - 1))


def test_backoff_without_retry_after_stays_within_bounds(mocked, client, waits):
    mocked.post(url(PATH), status=500, body="oops")
    with pytest.raises(ApiError):
        client.post(PATH, {})
    assert len(waits) == http.MAX_ATTEMPTS - 1
    assert all(0 <= wait <= http.BACKOFF_CAP_SECONDS for wait in waits)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 10, 50])
def test_backoff_is_capped_exponential(attempt):
    ceiling = min(http.BACKOFF_CAP_SECONDS, http.BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    rng = random.Random(attempt)
    samples = [http.backoff_seconds(attempt, rng) for _ in range(200)]
    assert all(0 <= sample <= ceiling for sample in samples)
    assert max(samples) <= http.BACKOFF_CAP_SECONDS
    assert max(samples) > ceiling * 0.8  # reaches up to the ceiling ...


def test_backoff_is_jittered():
    rng = random.Random(0)
    samples = {http.backoff_seconds(3, rng) for _ in range(50)}
    assert len(samples) > 40  # ... and is spread, not a fixed value
    assert min(samples) < http.BACKOFF_BASE_SECONDS * 4 * 0.2


def test_backoff_ceiling_never_exceeds_cap():
    class Top(random.Random):
        def uniform(self, a, b):
            return b

    assert http.backoff_seconds(1, Top()) == http.BACKOFF_BASE_SECONDS
    assert http.backoff_seconds(2, Top()) == http.BACKOFF_BASE_SECONDS * 2
    assert http.backoff_seconds(60, Top()) == http.BACKOFF_CAP_SECONDS


# --- non-idempotent calls -------------------------------------------------------------

@pytest.mark.parametrize(
    "response,ambiguous",
    [
        ({"status": 500, "json": envelope(None, code="InternalError", msg="内部错误")}, True),
        ({"status": 502, "body": "Bad Gateway"}, True),
        ({"status": 503, "body": "Service Unavailable"}, True),
        ({"body": requests.exceptions.ReadTimeout("Read timed out")}, True),
        ({"body": requests.exceptions.ConnectionError("Connection reset by peer")}, True),
        ({"status": 429, "json": envelope(None, code="TooManyRequests")}, False),
        ({"body": requests.exceptions.ConnectTimeout("connect timed out")}, False),
        ({"body": requests.exceptions.ConnectionError("[Errno 111] Connection refused")}, False),
        ({"json": envelope(None, code="BadRequest", msg="当前算力规格暂无库存")}, False),
    ],
    ids=["500", "502", "503", "read-timeout", "reset", "429", "connect-timeout", "refused", "business-error"],
)
def test_non_idempotent_post_is_never_retried(mocked, client, waits, response, ambiguous):
    mocked.post(url(api.DEPLOYMENT_PATH), **response)
    with pytest.raises(ApiError) as caught:
        client.post(api.DEPLOYMENT_PATH, {"name": "x"}, idempotent=False)
    assert len(mocked.calls) == 1
    assert waits == []
    assert caught.value.ambiguous is ambiguous


def test_create_deployment_is_not_idempotent(mocked, client, waits):
    mocked.post(url(api.DEPLOYMENT_PATH), status=500, body="oops")
    with pytest.raises(ApiError) as caught:
        api.create_deployment(client, {"name": "x"})
    assert len(mocked.calls) == 1
    assert caught.value.ambiguous is True


@pytest.fixture
def refused_port():
    """A loopback port nothing listens on: bound but never listening, and held for the whole
    test (a port closed again could be taken by another process's server meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


def test_real_connection_refused_is_not_ambiguous(monkeypatch, waits, refused_port):
    """A real refused connect (no mock) never reached the server: safe to retry a create."""
    monkeypatch.setenv("AUTODL_HOST", f"http://127.0.0.1:{refused_port}")
    client = http.ApiClient(load_settings())
    with pytest.raises(ApiError) as caught:
        client.post(api.DEPLOYMENT_PATH, {"name": "x"}, idempotent=False)
    assert caught.value.ambiguous is False
    assert caught.value.details["retryable"] is True


def test_timeouts_come_from_settings(mocked, monkeypatch):
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", "45")
    client = http.ApiClient(load_settings())
    seen = {}

    def record(request):
        seen["timeout"] = request.req_kwargs["timeout"]
        return 200, {}, json.dumps(envelope({}))

    mocked.add_callback(responses.POST, url(PATH), callback=record)
    client.post(PATH, {})
    assert seen["timeout"] == (http.CONNECT_TIMEOUT_CAP_SECONDS, 45.0)


# --- the token stays secret -----------------------------------------------------------

@pytest.mark.parametrize(
    "response",
    [
        {"status": 401, "json": envelope(None, code="Unauthorized", msg=f"invalid token {TEST_TOKEN}")},
        {"status": 500, "body": f"upstream said: Authorization={TEST_TOKEN}"},
        {"json": envelope(None, code="BadRequest", msg=f"bad header {TEST_TOKEN}")},
        {"body": requests.exceptions.ConnectionError(f"reset while sending {TEST_TOKEN}")},
    ],
    ids=["401-echo", "500-echo", "business-echo", "exception-echo"],
)
def test_token_never_appears_in_script_output(run, mocked, response, result_validator):
    mocked.post(url(api.IMAGES_PATH), **response)
    code, document, stderr = run("queue_submit.py", EXAMPLE, "--dry-run", "--debug")
    assert code != 0
    result_validator.validate(document)
    assert TEST_TOKEN not in json.dumps(document, ensure_ascii=False)
    assert TEST_TOKEN not in stderr


@pytest.fixture
def echoing_server():
    """A loopback server that rejects every call and echoes the Authorization header back."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        def _reject(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = json.dumps(envelope(None, code="Unauthorized", msg=f"令牌无效: {self.headers.get('Authorization')}"))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_POST = _reject

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_token_never_appears_in_subprocess_output(tmp_path, echoing_server):
    """In a real process against a real socket that echoes the token back, with --debug."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "AUTODL_TOKEN": TEST_TOKEN, "AUTODL_HOST": echoing_server}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "queue_submit.py"), EXAMPLE, "--dry-run", "--debug"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    document = json.loads(completed.stdout)
    assert completed.returncode == 1, completed.stdout
    assert document["error_type"] == "auth_error"
    assert "令牌无效" in document["details"]["msg"]  # the echo did come back ...
    assert TEST_TOKEN not in completed.stdout  # ... and was scrubbed
    assert TEST_TOKEN not in completed.stderr
