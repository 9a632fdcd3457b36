"""The real entry scripts against the platform's recorded answers (tests/fixtures/recorded/),
served over real HTTP by a loopback server: what a user sees when the platform answers as
it was recorded answering (fields, units, no crash, the enterprise gate as auth_error)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from helpers import ROOT

RECORDED = ROOT / "tests" / "fixtures" / "recorded"
# The routes the recordings answer; anything else is the 404 a missing route gives.
ROUTES = {
    ("POST", "/api/v1/dev/wallet/balance"): "wallet_balance.json",
    ("POST", "/api/v1/dev/machine/region/gpu_stock"): "region_gpu_stock.json",
    ("POST", "/api/v1/dev/image/private/list"): "image_private_list.json",
    ("POST", "/api/v1/dev/deployment/list"): "gated.json",
    ("GET", "/api/v1/dev/deployment/blacklist"): "gated.json",
    ("GET", "/api/v1/dev/deployment/ddp/overview"): "gated.json",
}
# A stuck client must not hold a server thread past the test (seconds).
SOCKET_TIMEOUT_SECONDS = 5.0
# Stopping the server waits at most this long for its thread.
STOP_TIMEOUT_SECONDS = 5.0


def recorded(name: str) -> dict[str, Any]:
    return json.loads((RECORDED / name).read_text(encoding="utf-8"))


class ReplayHandler(BaseHTTPRequestHandler):
    timeout = SOCKET_TIMEOUT_SECONDS

    def _answer(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw.strip() else None
        self.server.calls.append((self.command, path, body))  # type: ignore[attr-defined]
        name = ROUTES.get((self.command, path))
        if name is None:
            payload, status, kind = b"404 page not found", 404, "text/plain"
        else:
            document = recorded(name)
            names = (body or {}).get("gpu_name_set") if isinstance(body, dict) else None
            if names and isinstance(document.get("data"), list):  # the filter matches exact names
                document["data"] = [entry for entry in document["data"] if next(iter(entry)) in names]
            payload, status, kind = json.dumps(document, ensure_ascii=False).encode("utf-8"), 200, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass


@pytest.fixture
def replay(monkeypatch):
    """A loopback server answering with the recordings; the scripts point at it. Stopped at the end."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReplayHandler)
    server.daemon_threads = True
    server.calls = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("AUTODL_HOST", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT_SECONDS)


def run_ok(run, result_validator, script: str, *argv: str) -> dict[str, Any]:
    code, document, _ = run(script, "--quiet", *argv)
    result_validator.validate(document)
    assert (code, document["status"]) == (0, "success"), document
    return document


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_the_recordings_are_platform_envelopes():
    for name in set(ROUTES.values()):
        document = recorded(name)
        assert set(document) == {"code", "msg", "data", "request_id"}, name
        assert len(document["request_id"]) == 32 and int(document["request_id"], 16) >= 0


def test_wallet_shows_yuan_from_the_recorded_figures(replay, run, result_validator):
    # Written to hold whether the balance shown is `assets` or `assets - blocked_asset`: the
    # recording has blocked_asset 0, and only fields, types and the x1000 unit are asserted.
    document = run_ok(run, result_validator, "wallet_balance.py")
    raw = recorded("wallet_balance.json")["data"]
    assert len(raw) == 14
    for field in ("balance_yuan", "accumulated_spend_yuan", "voucher_balance_yuan"):
        assert is_number(document[field]), field
    assert document["balance_yuan"] == pytest.approx(raw["assets"] / 1000)  # 29290 -> 29.29 yuan
    assert document["accumulated_spend_yuan"] == pytest.approx(raw["accumulate"] / 1000)
    assert "元" in document["unit_note"]


def test_region_stock_lists_every_model_with_its_exact_name(replay, run, result_validator):
    document = run_ok(run, result_validator, "gpu_stock.py", "--region", "westDC2")
    assert document["source"] == "region"
    assert document["stock"] == {"RTX 4090": {"idle": 55, "total": 298}, "RTX 4090D": {"idle": 12, "total": 80},
                                 "RTX 3090": {"idle": 0, "total": 40}}
    assert replay.calls == [("POST", "/api/v1/dev/machine/region/gpu_stock", {"region_sign": "westDC2"})]


def test_region_stock_variants_are_not_confused(replay, run, result_validator):
    document = run_ok(run, result_validator, "gpu_stock.py", "--region", "westDC2", "--region", "westDC3", "--gpu", "RTX 4090D")
    assert document["stock"] == {"RTX 4090D": {"idle": 24, "total": 160}}
    code, document, _ = run("gpu_stock.py", "--quiet", "--region", "westDC2", "--gpu", "4090")
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "gpu_type_not_found")
    assert set(document["details"]["did_you_mean"]["4090"]) >= {"RTX 4090"}


def test_image_records_with_only_three_keys(replay, run, result_validator):
    document = run_ok(run, result_validator, "list_images.py")
    assert document["count"] == 2
    assert [(item["image_uuid"], item["image_name"]) for item in document["items"]] == [
        ("image-3e5a9c1b7d", "torch-2.1-cu118"), ("image-b84f20d6a1", "vllm-serve")]


@pytest.mark.parametrize("script", ["list_deployments.py", "list_blacklist.py"])
def test_the_enterprise_gate_is_an_auth_error_with_the_fix(replay, run, result_validator, script):
    code, document, _ = run(script, "--quiet")
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "auth_error")
    assert document["details"]["code"] == "BadRequest" and document["details"]["msg"] == "无当前资源访问权限"
    assert "企业认证" in document["hint"]


def test_doctor_on_the_recorded_account(replay, run, result_validator, monkeypatch):
    from autodl_esd.platform import doctor

    monkeypatch.setattr(doctor, "RATE_WINDOW_SECONDS", 0.0)  # no clock-rate wait
    code, document, _ = run("doctor.py", "--quiet")
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "auth_error")
    details = document["details"]
    assert details["failed"] == ["enterprise_gate"]
    checks = {item["name"]: item for item in details["checks"]}
    assert checks["token_accepted"]["status"] == "ok"
    assert set(checks["enterprise_gate"]["detail"]["gated_routes"]) == {"blacklist_list", "ddp_overview"}
    assert checks["enterprise_gate"]["detail"]["code"] == "BadRequest"
    assert checks["optional_routes"]["detail"]["routes"]["wallet_balance"] == "present"
    assert checks["optional_routes"]["detail"]["routes"]["region_stock"] == "present"
    assert checks["image_list_key"]["detail"]["key"] == ["image_name"]
    assert {q["question_id"]: q["answer"] for q in details["open_questions"]}["image_list_key"] == "image_name"
