"""doctor.py: the read-only first-run check, against the simulator in each dialect and with
`responses` for every gate and error."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest
import requests

from autodl_esd.platform import api
from helpers import ROOT, TEST_TOKEN, envelope, url

PRIVATE_CONFIG = str(ROOT / "examples" / "replicaset-service.json")
PUBLIC_CONFIG = str(ROOT / "examples" / "public-cloud-replicaset.json")
READ_ROUTES = {
    ("POST", api.IMAGES_PATH), ("POST", api.DEPLOYMENTS_PATH), ("GET", api.BLACKLIST_PATH),
    ("GET", api.DDP_OVERVIEW_PATH), ("POST", api.SYSTEM_IMAGES_PATH), ("POST", api.REGION_STOCK_PATH),
    ("POST", api.WALLET_BALANCE_PATH), ("GET", api.GLOBAL_STOCK_PATH),
}


@pytest.fixture(autouse=True)
def no_rate_wait(monkeypatch):
    """The clock-rate read waits seconds; the tests that measure the rate ask for it."""
    from autodl_esd.platform import doctor

    monkeypatch.setattr(doctor, "RATE_WINDOW_SECONDS", 0.0)


def by_name(document: dict) -> dict:
    return {item["name"]: item for item in document["checks"]}


def run_doctor(run, result_validator, *argv):
    """The diagnosis: the success document, or a not-ready error document's details."""
    code, document, stderr = run("doctor.py", "--quiet", *argv)
    result_validator.validate(document)
    if document["status"] == "error":
        assert code != 0 and document["message"].startswith("未就绪"), document
        document = document["details"]
        assert document["ready"] is False
    else:
        assert code == 0 and document["ready"] is True, document
    assert [c["name"] for c in document["checks"]] == [
        "settings", "token_present", "token_accepted", "enterprise_gate", "dialect", "config_dialect",
        "optional_routes", "stock_shape", "image_list_key", "clock_skew", "latency", "price_basis",
    ]
    assert all(c["status"] in ("ok", "warn", "fail", "skipped") for c in document["checks"])
    return document, by_name(document)


# --- against the simulator --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("dialect", "routes", "good_config", "bad_config"),
    [
        ("private", {"blacklist_list": "absent", "ddp_overview": "absent", "system_images": "present"}, PRIVATE_CONFIG, PUBLIC_CONFIG),
        ("public", {"blacklist_list": "present", "ddp_overview": "present", "system_images": "absent"}, PUBLIC_CONFIG, PRIVATE_CONFIG),
        ("both", {"blacklist_list": "present", "ddp_overview": "present", "system_images": "present"}, PRIVATE_CONFIG, None),
    ],
)
def test_each_simulator_dialect_is_recognised(sim, run, result_validator, dialect, routes, good_config, bad_config):
    simulator = sim(dialect=dialect)
    document, checks = run_doctor(run, result_validator, "--config", good_config)
    assert document["dialect"] == dialect and document["read_only"] is True
    assert checks["dialect"]["status"] == "ok"
    assert checks["config_dialect"]["status"] == "ok"
    found = checks["optional_routes"]["detail"]["routes"]
    assert {name: found[name] for name in routes} == routes
    assert found["wallet_balance"] == "present"  # the simulator serves the wallet (facts section 14)
    assert checks["token_accepted"]["status"] == checks["enterprise_gate"]["status"] == "ok"
    # The private dialect answers like a live private cluster (facts §15): a dict of vendor names.
    shape, name = ("dict", "NVIDIA GeForce RTX 4090") if dialect == "private" else ("list", "RTX 4090")
    assert checks["stock_shape"]["detail"]["shape"] == shape
    assert name in checks["stock_shape"]["detail"]["gpu_names"]
    expected_key = {"private": ["name"], "public": ["image_name"], "both": ["image_name", "name"]}[dialect]
    assert checks["image_list_key"]["detail"]["key"] == expected_key
    assert checks["clock_skew"]["status"] in ("ok", "warn")  # the simulator's clock runs ahead at speed > 1
    assert checks["latency"]["detail"]["calls"] >= 8
    settled = {q["question_id"]: q for q in document["open_questions"]}
    assert settled["bad_token_answer"]["answer"].startswith("auth_error: HTTP 401")
    assert settled["blacklist_list"]["answer"] == ("不可用 (HTTP 404)" if routes["blacklist_list"] == "absent" else "可用")
    # Read-only: every request the simulator saw is a read.
    seen = {(method, path) for method, path, _ in simulator.request_log()}
    assert seen <= READ_ROUTES, seen - READ_ROUTES
    assert simulator.deployments() == []
    if bad_config:
        document, checks = run_doctor(run, result_validator, "--config", bad_config)
        assert checks["config_dialect"]["status"] == "fail" and document["ready"] is False
        assert checks["config_dialect"]["detail"]["mismatched"] == [bad_config]


def test_a_fast_platform_clock_is_a_rate_not_a_skew(sim, run, result_validator, monkeypatch):
    """The simulator at --speed 60: its Date header runs 60 times as fast as ours, which NTP
    cannot fix; doctor says so instead of advising it."""
    import re

    from autodl_esd.platform import doctor

    monkeypatch.setattr(doctor, "RATE_WINDOW_SECONDS", 2.0)
    sim(speed=60)
    _, checks = run_doctor(run, result_validator)
    clock = checks["clock_skew"]
    assert clock["status"] == "warn"
    assert 50 <= clock["detail"]["platform_clock_rate"] <= 70, clock
    times = re.search(r"平台时钟以本机 (\d+) 倍的速度走", clock["hint"])
    assert times and 50 <= int(times.group(1)) <= 70, clock["hint"]
    assert "用 ntp 校准" not in clock["hint"]


def test_a_platform_clock_at_our_rate_is_fine(sim, run, result_validator, monkeypatch):
    from autodl_esd.platform import doctor

    monkeypatch.setattr(doctor, "RATE_WINDOW_SECONDS", 3.0)  # the default: a 1x clock reads 0.67x-1.33x
    sim(speed=1)
    _, checks = run_doctor(run, result_validator)
    assert checks["clock_skew"]["status"] == "ok" and 0.4 <= checks["clock_skew"]["detail"]["platform_clock_rate"] <= 1.6


def test_dict_stock_shape_is_reported(sim, run, result_validator):
    sim(stock_shape="dict")
    _, checks = run_doctor(run, result_validator)
    assert checks["stock_shape"]["detail"]["shape"] == "dict"



def test_price_basis_is_checked_on_a_multi_gpu_container(sim, run, result_validator):
    """The tool reads container `price` per card (references/money.md, 计费口径); doctor checks it."""
    simulator = sim()
    template = {"gpu_name_set": ["RTX 4090"], "gpu_num": 2, "cuda_v": 118, "cpu_num_from": 1, "cpu_num_to": 100,
                "memory_size_from": 1, "memory_size_to": 256, "price_from": 10, "price_to": 9000,
                "image_uuid": "image-db8346e037", "cmd": "sleep infinity"}
    answer = requests.post(simulator.url + api.DEPLOYMENT_PATH, headers={"Authorization": simulator.token}, timeout=5,
                           json={"name": "two-cards", "deployment_type": "ReplicaSet", "replica_num": 1,
                                 "container_template": template}).json()
    assert answer["code"] == "Success", answer
    simulator.advance(60)
    _, checks = run_doctor(run, result_validator)
    found = checks["price_basis"]
    assert found["status"] == "ok" and found["detail"]["gpu_num"] == 2 and found["detail"]["assumed"] == "per_card"


def test_price_basis_warns_when_a_price_fits_the_whole_container_only(mocked, run, result_validator):
    from helpers.fake_api import container, deployment

    two = deployment()
    two["template"] = {**(two.get("template") or {}), "gpu_num": 4, "price_from": 1000, "price_to": 2000}
    item = container()
    item.update(gpu_num=4, price=6000)  # 4 cards at 1.5 yuan: the whole container's rate
    register(mocked, {("POST", api.DEPLOYMENTS_PATH): {"json": envelope({"list": [two], "max_page": 1})}})
    mocked.add("POST", url(api.CONTAINERS_PATH), json=envelope({"list": [item], "max_page": 1}))
    _, checks = run_doctor(run, result_validator)
    found = checks["price_basis"]
    assert found["status"] == "warn" and found["detail"]["fits"] == "per_container"
    assert "4 倍" in found["hint"]


def test_price_basis_is_skipped_without_deployments(mocked, run, result_validator):
    register(mocked)
    _, checks = run_doctor(run, result_validator)
    assert checks["price_basis"]["status"] == "skipped"

def test_gated_account_fails_the_enterprise_gate_only(sim, run, result_validator):
    sim(gated=True)
    document, checks = run_doctor(run, result_validator)
    assert checks["token_accepted"]["status"] == "ok"
    assert checks["enterprise_gate"]["status"] == "fail" and "企业认证" in checks["enterprise_gate"]["hint"]
    assert document["ready"] is False and document["failed"] == ["enterprise_gate"]
    routes = checks["optional_routes"]["detail"]["routes"]
    assert routes["blacklist_list"] == "gated" and routes["wallet_balance"] == "present"


def test_a_gated_account_is_an_error_not_a_success(sim, run, result_validator):
    sim(gated=True)
    code, document, _ = run("doctor.py", "--quiet")
    result_validator.validate(document)
    assert (code, document["status"], document["error_type"]) == (1, "error", "auth_error")
    assert document["message"].startswith("未就绪")
    assert document["details"]["cause"] == "enterprise_gate" and document["details"]["msg"] == "无当前资源访问权限"
    assert {c["name"] for c in document["details"]["checks"]} >= {"enterprise_gate", "optional_routes"}


def test_gate_hint_covers_the_private_and_the_public_cloud(sim, run, result_validator):
    sim(gated=True)
    _, checks = run_doctor(run, result_validator)
    hint = checks["enterprise_gate"]["hint"]
    assert "私有云" in hint and "公有云" in hint and "企业认证" in hint


def test_a_gated_route_is_counted_once_under_the_gate(sim, run, result_validator):
    sim(gated=True)
    document, checks = run_doctor(run, result_validator)
    gated = checks["enterprise_gate"]["detail"]["gated_routes"]
    assert "blacklist_list" in gated and "ddp_overview" in gated
    assert checks["optional_routes"]["status"] == "ok", checks["optional_routes"]
    assert document["summary"]["fail"] == 1, document["summary"]
    # No check warns about the gated routes again. The clock and latency checks time this
    # machine, which a loaded CI runner can slow past their thresholds: they are not about the gate.
    warned = [c["name"] for c in document["checks"] if c["status"] == "warn"]
    assert set(warned) <= {"clock_skew", "latency"}, [checks[name] for name in warned]


def test_both_dialects_say_which_to_write_and_why(sim, run, result_validator):
    sim(dialect="both")
    _, checks = run_doctor(run, result_validator)
    detail = checks["dialect"]["detail"]
    assert detail["dialect"] == "both" and detail["write"] == "private"
    assert "cuda_v" in detail["why"] and "dc_list" in detail["why"]


def test_a_failing_config_dialect_is_a_validation_error(sim, run, result_validator):
    sim(dialect="private")
    code, document, _ = run("doctor.py", "--quiet", "--config", PUBLIC_CONFIG)
    result_validator.validate(document)
    assert (code, document["error_type"]) == (1, "validation_error")
    assert document["details"]["errors"][0]["path"] == PUBLIC_CONFIG


def test_sim_flag_needs_no_token(run, result_validator, monkeypatch):
    monkeypatch.delenv("AUTODL_TOKEN")
    document, _ = run_doctor(run, result_validator, "--sim")
    assert document["ready"] is True and document["simulated"] is True


# --- with responses: every gate and error ----------------------------------------------------------

IMAGES_PAGE = {"list": [{"image_uuid": "image-db8346e037", "name": "torch"}], "page_index": 1, "page_size": 10, "max_page": 1}


def register(mocked, overrides=None, date=None):
    """Every call doctor makes, each answered normally unless overridden (None: not registered)."""
    import responses

    answers = {
        ("POST", api.IMAGES_PATH): {"json": envelope(IMAGES_PAGE)},
        ("POST", api.DEPLOYMENTS_PATH): {"json": envelope({"list": [], "max_page": 0})},
        ("GET", api.BLACKLIST_PATH): {"json": envelope([])},
        ("GET", api.DDP_OVERVIEW_PATH): {"json": envelope(None, code="RequestParameterIsWrong", msg="缺少 deployment_uuid")},
        ("POST", api.SYSTEM_IMAGES_PATH): {"status": 404, "body": "404 page not found"},
        ("POST", api.REGION_STOCK_PATH): {"json": envelope([])},
        ("POST", api.WALLET_BALANCE_PATH): {"json": envelope({"assets": 100000, "accumulate": 0, "voucher_balance": 0})},
        ("GET", api.GLOBAL_STOCK_PATH): {"json": envelope([{"RTX 4090": {"idle_gpu_num": 3, "total_gpu_num": 8}}])},
    }
    answers.update(overrides or {})
    date_header = {"Date": date or formatdate(usegmt=True)}
    for (method, path), answer in answers.items():
        if answer is not None:
            mocked.add(method, url(path), headers=date_header, **answer)
    # The bad-token probe: one read with a token no platform issues.
    mocked.add("GET", url(api.GLOBAL_STOCK_PATH), status=401, json=envelope(None, code="Unauthorized", msg="invalid token"),
               match=[responses.matchers.header_matcher({"Authorization": "autodl-doctor-not-a-token"})])


def test_all_well_with_the_platform_mocked(mocked, run, result_validator):
    register(mocked)
    document, checks = run_doctor(run, result_validator)
    assert document["ready"] is True
    assert checks["dialect"]["detail"]["dialect"] == "public"  # public-only routes answer, private-only 404
    assert checks["optional_routes"]["detail"]["routes"]["system_images"] == "absent"
    assert checks["image_list_key"]["detail"]["key"] == ["name"]
    assert abs(checks["clock_skew"]["detail"]["platform_minus_local_seconds"]) < 5
    assert TEST_TOKEN not in json.dumps(document)
    assert document["calls"] == 9


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ({"status": 401, "json": envelope(None, code="Unauthorized", msg="token无效")}, "令牌被拒绝"),
        ({"status": 403, "body": "forbidden"}, "令牌被拒绝"),
        ({"json": envelope(None, code="InvalidToken", msg="令牌无效")}, "令牌被拒绝"),
    ],
    ids=["401", "403", "business-code"],
)
def test_rejected_token_fails_and_skips_the_rest(mocked, run, result_validator, failure, reason):
    mocked.add("POST", url(api.IMAGES_PATH), **failure)
    document, checks = run_doctor(run, result_validator)
    assert checks["token_accepted"]["status"] == "fail" and checks["token_accepted"]["detail"]["message"] == reason
    assert document["ready"] is False and document["failed"] == ["token_accepted"]
    later = [c for c in document["checks"][3:]]
    assert all(c["status"] == "skipped" for c in later)


@pytest.mark.parametrize("error", [requests.exceptions.ConnectionError("refused"), requests.exceptions.ReadTimeout("slow")])
def test_unreachable_platform_fails_token_accepted(mocked, run, result_validator, error):
    for _ in range(4):  # one try plus the retries of a read call
        mocked.add("POST", url(api.IMAGES_PATH), body=error)
    document, checks = run_doctor(run, result_validator)
    assert checks["token_accepted"]["status"] == "fail" and "AUTODL_HOST" in checks["token_accepted"]["hint"]
    assert document["failed"] == ["token_accepted"]


def test_enterprise_gate_is_told_apart_from_a_bad_token(mocked, run, result_validator):
    gate = {"json": envelope(None, code="BadRequest", msg="无当前资源访问权限")}
    register(mocked, {("POST", api.DEPLOYMENTS_PATH): gate, ("GET", api.BLACKLIST_PATH): gate, ("GET", api.DDP_OVERVIEW_PATH): gate})
    document, checks = run_doctor(run, result_validator)
    assert checks["token_accepted"]["status"] == "ok"
    assert checks["enterprise_gate"]["status"] == "fail" and checks["enterprise_gate"]["detail"]["msg"] == "无当前资源访问权限"
    assert checks["optional_routes"]["detail"]["routes"]["blacklist_list"] == "gated"
    assert document["failed"] == ["enterprise_gate"]


def test_deployment_list_refusing_the_token_is_a_gate_failure(mocked, run, result_validator):
    register(mocked, {("POST", api.DEPLOYMENTS_PATH): {"status": 401, "json": envelope(None, code="Unauthorized", msg="no")}})
    _, checks = run_doctor(run, result_validator)
    assert checks["enterprise_gate"]["status"] == "fail" and checks["enterprise_gate"]["detail"]["http_status"] == 401


def test_absent_routes_are_warnings_and_settle_open_questions(mocked, run, result_validator):
    missing = {"status": 404, "body": "404 page not found"}
    register(mocked, {("GET", api.BLACKLIST_PATH): missing, ("GET", api.DDP_OVERVIEW_PATH): missing,
                      ("POST", api.WALLET_BALANCE_PATH): missing, ("POST", api.REGION_STOCK_PATH): missing})
    document, checks = run_doctor(run, result_validator)
    routes = checks["optional_routes"]
    assert routes["status"] == "warn" and routes["detail"]["routes"]["wallet_balance"] == "absent"
    assert any("wallet_balance.py" in line for line in routes["detail"]["unavailable"])
    assert checks["dialect"]["status"] == "warn" and checks["dialect"]["detail"]["dialect"] == "unknown"
    settled = {q["question_id"]: q["answer"] for q in document["open_questions"]}
    assert settled["blacklist_list"] == settled["wallet_balance"] == "不可用 (HTTP 404)"
    assert document["ready"] is True  # warnings only


def test_dict_stock_and_missing_images(mocked, run, result_validator):
    register(mocked, {
        ("GET", api.GLOBAL_STOCK_PATH): {"json": envelope({"RTX 4090": {"gpu_name": "RTX 4090", "idle_gpu_num": 1, "total_gpu_num": 8}})},
        ("POST", api.IMAGES_PATH): {"json": envelope({"list": [], "max_page": 0})},
    })
    _, checks = run_doctor(run, result_validator)
    assert checks["stock_shape"]["detail"]["shape"] == "dict"
    assert checks["image_list_key"]["status"] == "warn" and "base-image" in checks["image_list_key"]["hint"]


def test_failing_stock_is_a_failed_check(mocked, run, result_validator):
    register(mocked, {("GET", api.GLOBAL_STOCK_PATH): None})
    for _ in range(4):
        mocked.add("GET", url(api.GLOBAL_STOCK_PATH), status=503, json=envelope(None, code="ServiceUnavailable", msg="busy"))
    document, checks = run_doctor(run, result_validator)
    assert checks["stock_shape"]["status"] == "fail" and "stock_shape" in document["failed"]


def test_clock_skew_is_warned_and_a_missing_date_is_skipped(mocked, run, result_validator):
    register(mocked, date="Mon, 01 Jan 2024 00:00:00 GMT")
    _, checks = run_doctor(run, result_validator)
    assert checks["clock_skew"]["status"] == "warn" and checks["clock_skew"]["detail"]["platform_minus_local_seconds"] < -3600


def test_no_date_header_skips_the_clock_check(monkeypatch, mocked, run, result_validator):
    from autodl_esd.core import http

    register(mocked)
    original = http.ApiClient._parse

    def without_date(self, method, path, response):
        response.headers.pop("Date", None)
        return original(self, method, path, response)

    monkeypatch.setattr(http.ApiClient, "_parse", without_date)
    _, checks = run_doctor(run, result_validator)
    assert checks["clock_skew"]["status"] == "skipped"


def test_missing_token_fails_token_present_without_any_call(run, result_validator, monkeypatch):
    monkeypatch.delenv("AUTODL_TOKEN")
    document, checks = run_doctor(run, result_validator)  # no mock: a request would fail
    assert checks["token_present"]["status"] == "fail" and checks["token_present"]["detail"]["error_type"] == "token_missing"
    assert document["calls"] == 0 and document["failed"] == ["token_present"]


def test_malformed_token_fails_token_present_without_its_value(run, result_validator, monkeypatch):
    monkeypatch.setenv("AUTODL_TOKEN", "sk-abcdef\n0123456789")
    document, checks = run_doctor(run, result_validator)
    assert checks["token_present"]["detail"]["code"] == "TokenMalformed"
    assert "0123456789" not in json.dumps(document, ensure_ascii=False)


def test_bad_host_fails_settings(run, result_validator, monkeypatch):
    monkeypatch.setenv("AUTODL_HOST", "http://example.com")
    document, checks = run_doctor(run, result_validator)
    assert checks["settings"]["status"] == "fail" and document["failed"] == ["settings"]


def test_an_unreadable_config_is_a_config_error(run, tmp_path):
    code, document, _ = run("doctor.py", "--config", str(tmp_path / "missing.json"))
    assert (code, document["error_type"]) == (1, "config_error")


# --- on the public cloud: stock is read by region, never by the undocumented global route ----

PUBLIC_HOST = "https://api.autodl.com"


def test_public_host_reads_region_stock_not_the_global_route(mocked, run, result_validator, monkeypatch):
    import responses

    monkeypatch.setenv("AUTODL_HOST", PUBLIC_HOST)
    date_header = {"Date": formatdate(usegmt=True)}
    region_stock = envelope([{"RTX 4090": {"idle_gpu_num": 3, "total_gpu_num": 8, "chip_corp": "nvidia"}},
                             {"RTX 4090D": {"idle_gpu_num": 0, "total_gpu_num": 2}}])
    gated = envelope(None, code="BadRequest", msg="无当前资源访问权限")
    for method, path, answer in (
        ("POST", api.IMAGES_PATH, {"json": envelope({"list": [{"id": 1, "image_name": "a", "image_uuid": "image-aaaaaaaaaa"}], "max_page": 1})}),
        ("POST", api.DEPLOYMENTS_PATH, {"json": gated}),
        ("GET", api.BLACKLIST_PATH, {"json": gated}),
        ("GET", api.DDP_OVERVIEW_PATH, {"json": gated}),
        ("POST", api.SYSTEM_IMAGES_PATH, {"status": 404, "body": "404 page not found"}),
        ("POST", api.REGION_STOCK_PATH, {"json": region_stock}),
        ("POST", api.WALLET_BALANCE_PATH, {"json": envelope({"assets": 29290, "blocked_asset": 0})}),
    ):
        mocked.add(method, PUBLIC_HOST + path, headers=date_header, **answer)
    mocked.add("POST", PUBLIC_HOST + api.REGION_STOCK_PATH, status=401, json=envelope(None, code="AuthorizeFailed", msg="登录超时，请重新登录"),
               match=[responses.matchers.header_matcher({"Authorization": "autodl-doctor-not-a-token"})])
    document, checks = run_doctor(run, result_validator)
    assert not any(api.GLOBAL_STOCK_PATH in call.request.url for call in mocked.calls)
    assert checks["stock_shape"]["status"] == "ok" and checks["stock_shape"]["detail"]["shape"] == "list"
    assert checks["stock_shape"]["detail"]["gpu_names"] == ["RTX 4090", "RTX 4090D"]
    assert checks["stock_shape"]["detail"]["route"] == f"POST {api.REGION_STOCK_PATH}"
    assert checks["dialect"]["detail"]["evidence"]["region_gpu_stock"] == "可用"
    assert document["failed"] == ["enterprise_gate"]  # the gate, not a missing global route
    stock_reads = [json.loads(call.request.body) for call in mocked.calls
                   if call.request.url.endswith(api.REGION_STOCK_PATH) and call.request.body not in (None, b"{}", "{}")]
    assert stock_reads and all(read == {"region_sign": api.PUBLIC_REGIONS[0]} for read in stock_reads)
    settled = {q["question_id"]: q for q in document["open_questions"]}
    assert "region" in settled["stock_shape"]["how"] and "AuthorizeFailed" in settled["bad_token_answer"]["answer"]
