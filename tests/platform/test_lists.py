"""Read-only ops scripts: list_images, gpu_stock, list_deployments, list_containers, list_blacklist."""

from __future__ import annotations

import json

import pytest
from responses import matchers

from helpers import envelope
from helpers.fake_api import (
    AUTH,
    BLACKLIST,
    CONTAINERS,
    DEP_UUID,
    DEPLOYMENTS,
    IMAGES,
    OTHER_UUID,
    PASSWORD,
    REGION_STOCK,
    STOCK,
    body,
    container,
    deployment,
    expect_containers,
    expect_deployment,
    failed,
    list_body,
    ok,
    page,
)

pytestmark = pytest.mark.usefixtures("fast_read_back")  # read-backs after a change need no real pauses


# --- list_images ------------------------------------------------------------------------


def test_list_images_fetches_every_page_and_normalizes_the_name(run, api, result_validator):
    api.post(IMAGES, json=page([{"id": 1, "image_uuid": "image-aaaaaaaaaa", "image_name": "a"}], 1, 2), match=[body(page_index=1, page_size=100), AUTH])
    api.post(IMAGES, json=page([{"id": 2, "image_uuid": "image-bbbbbbbbbb", "name": "b"}], 2, 2), match=[body(page_index=2, page_size=100), AUTH])
    code, document, _ = run("list_images.py", "--quiet")
    ok(code, document, result_validator)
    assert document["count"] == 2
    assert [(i["image_uuid"], i["image_name"]) for i in document["items"]] == [("image-aaaaaaaaaa", "a"), ("image-bbbbbbbbbb", "b")]
    assert "max_page" not in document


def test_list_images_one_page_returns_paging_keys(run, api, result_validator):
    api.post(IMAGES, json=envelope({"list": [{"image_uuid": "image-cccccccccc", "name": "c"}], "page_index": 3, "page_size": 5, "max_page": 4, "offset": 0}),
             match=[body(page_index=3, page_size=5)])
    code, document, _ = run("list_images.py", "--page-index", "3", "--page-size", "5")
    ok(code, document, result_validator)
    assert (document["page_index"], document["page_size"], document["max_page"]) == (3, 5, 4)
    assert document["items"][0]["image_name"] == "c"


def test_list_images_empty_is_success(run, api, result_validator):
    api.post(IMAGES, json=page([], max_page=0))
    code, document, _ = run("list_images.py")
    ok(code, document, result_validator)
    assert document["items"] == [] and document["count"] == 0


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_list_images_rejects_bad_page_numbers(run, value, result_validator):
    code, document, _ = run("list_images.py", "--page-index", value)
    assert (code, document["error_type"]) == (1, "usage_error")
    result_validator.validate(document)


# --- gpu_stock --------------------------------------------------------------------------

LIST_SHAPE = [{"RTX 4090": {"idle_gpu_num": 5, "total_gpu_num": 8}}, {"RTX A5000": {"idle_gpu_num": 0, "total_gpu_num": 4}}]
DICT_SHAPE = {"RTX 4090": {"gpu_name": "RTX 4090", "idle_gpu_num": 5, "total_gpu_num": 8}, "RTX A5000": {"gpu_name": "RTX A5000", "idle_gpu_num": 0, "total_gpu_num": 4}}


@pytest.mark.parametrize("raw", [LIST_SHAPE, DICT_SHAPE], ids=["list", "dict"])
def test_gpu_stock_global_accepts_both_shapes(run, api, raw, result_validator):
    api.get(STOCK, json=envelope(raw), match=[matchers.query_param_matcher({}), AUTH])
    code, document, _ = run("gpu_stock.py")
    ok(code, document, result_validator)
    assert document["stock"] == {"RTX 4090": {"idle": 5, "total": 8}, "RTX A5000": {"idle": 0, "total": 4}}
    assert document["raw"] == raw
    assert document["source"] == "global"


def test_gpu_stock_regions_are_summed(run, api, result_validator):
    api.post(REGION_STOCK, json=envelope([{"RTX 4090": {"idle_gpu_num": 3, "total_gpu_num": 10}}]), match=[body(region_sign="westDC2"), AUTH])
    api.post(REGION_STOCK, json=envelope([{"RTX 4090": {"idle_gpu_num": 1, "total_gpu_num": 6}}]), match=[body(region_sign="westDC3"), AUTH])
    code, document, _ = run("gpu_stock.py", "--region", "westDC2", "--region", "westDC3")
    ok(code, document, result_validator)
    assert document["stock"] == {"RTX 4090": {"idle": 4, "total": 16}}
    assert set(document["raw"]) == {"westDC2", "westDC3"}
    assert document["regions"] == ["westDC2", "westDC3"]


def test_gpu_stock_filter(run, api, result_validator):
    api.get(STOCK, json=envelope(LIST_SHAPE))
    code, document, _ = run("gpu_stock.py", "--gpu", "RTX A5000")
    ok(code, document, result_validator)
    assert document["stock"] == {"RTX A5000": {"idle": 0, "total": 4}}


def test_gpu_stock_unknown_name_lists_the_available_ones(run, api, result_validator):
    api.get(STOCK, json=envelope(LIST_SHAPE))
    code, document, _ = run("gpu_stock.py", "--gpu", "RTX 4090", "--gpu", "4090")
    assert (code, document["error_type"]) == (1, "gpu_type_not_found")
    result_validator.validate(document)
    assert document["details"]["unknown"] == ["4090"]
    assert document["details"]["available_gpus"] == ["RTX 4090", "RTX A5000"]
    assert document["details"]["did_you_mean"] == {"4090": ["RTX 4090"]}


def test_gpu_stock_unknown_name_suggests_the_exact_spelling(run, api, result_validator):
    api.get(STOCK, json=envelope(LIST_SHAPE))
    code, document, _ = run("gpu_stock.py", "--gpu", "rtx a5000", "--gpu", "H100")
    assert (code, document["error_type"]) == (1, "gpu_type_not_found")
    result_validator.validate(document)
    assert document["details"]["did_you_mean"] == {"rtx a5000": ["RTX A5000"], "H100": []}


def test_gpu_stock_null_data_is_empty_stock(run, api, result_validator):
    api.post(REGION_STOCK, json=envelope(None))
    code, document, _ = run("gpu_stock.py", "--region", "westDC2")
    ok(code, document, result_validator)
    assert document["stock"] == {}


def test_gpu_stock_on_the_public_cloud_sums_every_known_region(run, api, result_validator, monkeypatch):
    """api.autodl.com documents only the region route: without --region every documented
    region is read (never the private cloud's global GET)."""
    from autodl_esd.platform.api import PUBLIC_REGIONS, REGION_STOCK_PATH

    monkeypatch.setenv("AUTODL_HOST", "https://api.autodl.com")
    for region in PUBLIC_REGIONS:
        figures = [{"RTX 4090": {"idle_gpu_num": 1, "total_gpu_num": 2}}] if region in ("westDC2", "westDC3") else []
        api.post("https://api.autodl.com" + REGION_STOCK_PATH, json=envelope(figures), match=[body(region_sign=region), AUTH])
    code, document, _ = run("gpu_stock.py")
    ok(code, document, result_validator)
    assert document["source"] == "region" and document["regions"] == list(PUBLIC_REGIONS)
    assert document["stock"] == {"RTX 4090": {"idle": 2, "total": 4}}
    assert "--region" in document["note"]


def test_gpu_stock_on_the_public_cloud_with_regions_reads_only_those(run, api, result_validator, monkeypatch):
    from autodl_esd.platform.api import REGION_STOCK_PATH

    monkeypatch.setenv("AUTODL_HOST", "https://api.autodl.com")
    api.post("https://api.autodl.com" + REGION_STOCK_PATH, json=envelope([]), match=[body(region_sign="westDC2")])
    code, document, _ = run("gpu_stock.py", "--region", "westDC2")
    ok(code, document, result_validator)
    assert document["regions"] == ["westDC2"] and "note" not in document


# --- list_deployments -------------------------------------------------------------------


def test_list_deployments_filters_and_units(run, api, result_validator):
    api.post(DEPLOYMENTS, json=page([deployment()]), match=[list_body(name="svc", status="running"), AUTH])
    code, document, _ = run("list_deployments.py", "--name", "svc", "--status", "running")
    ok(code, document, result_validator)
    item = document["items"][0]
    assert item["deployment_uuid"] == item["uuid"] == DEP_UUID
    assert item["template"]["memory_size_from"] == 1073741824
    assert item["template"]["memory_size_from_gb"] == 1.0
    assert item["template"]["memory_size_to_gb"] == 256.0
    assert (item["template"]["price_to"], item["template"]["price_to_yuan"]) == (9000, 9.0)
    assert item["price_estimates_yuan"] == 3.762


def test_list_deployments_all_pages(run, api, result_validator):
    api.post(DEPLOYMENTS, json=page([deployment()], 1, 2), match=[body(page_index=1, page_size=100)])
    api.post(DEPLOYMENTS, json=page([deployment(uuid=OTHER_UUID)], 2, 2), match=[body(page_index=2, page_size=100)])
    code, document, _ = run("list_deployments.py")
    ok(code, document, result_validator)
    assert [i["uuid"] for i in document["items"]] == [DEP_UUID, OTHER_UUID]


def test_list_deployments_rejects_unknown_status(run, result_validator):
    code, document, _ = run("list_deployments.py", "--status", "finished")
    assert (code, document["error_type"]) == (1, "usage_error")


def test_list_deployments_name_glob_matches_whole_names_only(run, api, result_validator):
    names = ["demo-a", "demo-b", "mydemo-x", "Demo-c", "demo", "prod-demo-1"]
    api.post(DEPLOYMENTS, json=page([deployment(uuid=f"{n:015x}", name=name) for n, name in enumerate(names, 1)]),
             match=[list_body()])
    code, document, _ = run("list_deployments.py", "--name-glob", "demo-*")
    ok(code, document, result_validator)
    assert [item["name"] for item in document["items"]] == ["demo-a", "demo-b"], "never a substring, case-sensitive"
    assert document["name_glob"] == "demo-*"


def test_list_deployments_name_and_name_glob_exclude_each_other(run, result_validator):
    code, document, _ = run("list_deployments.py", "--name", "a", "--name-glob", "a*")
    assert (code, document["error_type"]) == (1, "usage_error")


def test_list_deployments_empty(run, api, result_validator):
    api.post(DEPLOYMENTS, json=page([]))
    code, document, _ = run("list_deployments.py")
    ok(code, document, result_validator)
    assert document["count"] == 0


def test_list_deployments_says_what_price_estimates_yuan_is(run, api):
    api.post(DEPLOYMENTS, json=page([deployment()]))
    code, out, _ = run("list_deployments.py", "--quiet")
    assert code == 0, out
    assert out["items"][0]["price_estimates_yuan"] == 3.762
    assert "不是已花的钱" in out["price_estimates_basis"]


# --- list_containers --------------------------------------------------------------------


def test_list_containers_redacts_the_password(run, api, result_validator):
    expect_deployment(api, deployment(), name="svc")
    expect_containers(api, [container()])
    code, document, _ = run("list_containers.py", "--name", "svc")
    ok(code, document, result_validator)
    assert PASSWORD not in json.dumps(document)
    item = document["items"][0]
    assert item["info"]["root_password"] == "***"
    assert item["service_urls"]["service_6006_port_url"].endswith("-6006.example")
    assert item["memory_size_gb"] == 60.0
    assert document["deployment"]["deployment_uuid"] == DEP_UUID



def test_an_empty_list_of_a_finished_deployment_points_at_released(run, api, result_validator):
    expect_deployment(api, deployment(kind="Job", status="stopped", running_num=0, finished_num=3))
    expect_containers(api, [])
    code, document, _ = run("list_containers.py", "--deployment-uuid", DEP_UUID)
    ok(code, document, result_validator)
    assert document["count"] == 0
    [warning] = [w for w in document["warnings"] if w["code"] == "released_containers_hidden"]
    assert warning["released_count"] == 3 and "--released" in warning["hint"] and "3 个" in warning["message"]


def test_an_empty_list_of_a_deployment_that_never_ran_has_no_released_hint(run, api, result_validator):
    expect_deployment(api, deployment(running_num=0))
    expect_containers(api, [])
    code, document, _ = run("list_containers.py", "--deployment-uuid", DEP_UUID)
    ok(code, document, result_validator)
    assert document["warnings"] == []

def test_list_containers_show_password(run, api, result_validator):
    expect_deployment(api, deployment())
    expect_containers(api, [container()])
    code, document, _ = run("list_containers.py", "--deployment-uuid", DEP_UUID, "--show-password")
    ok(code, document, result_validator)
    assert document["items"][0]["info"]["root_password"] == PASSWORD


def test_list_containers_status_and_released_filters(run, api, result_validator):
    expect_deployment(api, deployment())
    expect_containers(api, [container(status="shutdown")], status=["shutting_down", "shutdown"], released=True)
    code, document, _ = run("list_containers.py", "--deployment-uuid", DEP_UUID, "--status", "shutting_down", "--status", "shutdown", "--released")
    ok(code, document, result_validator)
    assert document["count"] == 1


def test_list_containers_by_config(run, api, tmp_path, result_validator):
    path = tmp_path / "svc.json"
    path.write_text(json.dumps({"name": "svc"}), encoding="utf-8")
    expect_deployment(api, deployment(), name="svc")
    expect_containers(api, [])
    code, document, _ = run("list_containers.py", "--config", str(path))
    ok(code, document, result_validator)
    assert document["items"] == []


@pytest.mark.parametrize(("text", "kind"), [('[{"name": "svc"}]', "数组"), ('"svc"', "字符串")])
def test_list_containers_config_not_an_object(run, tmp_path, text, kind, result_validator):
    # A JSON array is not "a config without name": say what the file is, before any call.
    path = tmp_path / "arr.json"
    path.write_text(text, encoding="utf-8")
    code, document, _ = run("list_containers.py", "--config", str(path))
    failed(code, document, result_validator, "config_error")
    assert "不是 JSON 对象" in document["message"] and kind in document["message"]
    assert "name" not in document["message"] and document["hint"]
    assert document["details"]["path"] == str(path)


def test_list_containers_all_pages(run, api, result_validator):
    second = container(uuid=f"{DEP_UUID}-0000000000-bbbbbbbb")
    expect_deployment(api, deployment())
    api.post(CONTAINERS, json=page([container()], 1, 2), match=[body(deployment_uuid=DEP_UUID, page_index=1, page_size=100)])
    api.post(CONTAINERS, json=page([second], 2, 2), match=[body(deployment_uuid=DEP_UUID, page_index=2, page_size=100)])
    code, document, _ = run("list_containers.py", "--deployment-uuid", DEP_UUID)
    ok(code, document, result_validator)
    assert document["count"] == 2


def test_list_containers_ambiguous_name(run, api, result_validator):
    api.post(DEPLOYMENTS, json=page([deployment(), deployment(uuid=OTHER_UUID, status="stopped")]))
    code, document, _ = run("list_containers.py", "--name", "svc")
    assert (code, document["error_type"]) == (1, "usage_error")
    result_validator.validate(document)
    assert {c["deployment_uuid"] for c in document["details"]["candidates"]} == {DEP_UUID, OTHER_UUID}


def test_list_containers_unknown_name(run, api, result_validator):
    expect_deployment(api, None, name="nope")
    code, document, _ = run("list_containers.py", "--name", "nope")
    assert (code, document["error_type"]) == (1, "not_found")
    result_validator.validate(document)
    assert "list_deployments.py" in document["hint"]


def test_list_containers_needs_a_deployment(run, result_validator):
    code, document, _ = run("list_containers.py")
    assert (code, document["error_type"]) == (1, "usage_error")


def test_list_containers_selectors_are_exclusive(run):
    code, document, _ = run("list_containers.py", "--name", "a", "--deployment-uuid", DEP_UUID)
    assert (code, document["error_type"]) == (1, "usage_error")


def test_list_containers_gives_price_in_yuan_per_hour(run, api):
    expect_deployment(api, deployment())
    api.post(CONTAINERS, json=page([container()]))
    code, out, _ = run("list_containers.py", "--deployment-uuid", DEP_UUID, "--quiet")
    assert code == 0, out
    [item] = out["items"]
    assert (item["price"], item["price_yuan"]) == (1881, 1.881)


# --- list_blacklist ---------------------------------------------------------------------

ENTRY = {"machine_id": "f94411a60c", "data_center": "westDC2", "msg": "启动慢", "expired_time": "2026-01-06T16:34:57+08:00",
         "created_at": "2026-01-05T16:34:57+08:00", "updated_at": "2026-01-05T16:34:57+08:00"}


def test_list_blacklist(run, api, result_validator):
    api.get(BLACKLIST, json=envelope([ENTRY]), match=[matchers.query_param_matcher({}), AUTH])
    code, document, _ = run("list_blacklist.py")
    ok(code, document, result_validator)
    assert document["items"] == [ENTRY] and document["count"] == 1


def test_list_blacklist_null_is_empty(run, api, result_validator):
    api.get(BLACKLIST, json=envelope(None))
    code, document, _ = run("list_blacklist.py")
    ok(code, document, result_validator)
    assert (document["items"], document["count"]) == ([], 0)


@pytest.mark.parametrize("answer", [{"json": {"code": "NotFound", "msg": "404 page not found", "data": None}}, {"body": "404 page not found"}], ids=["envelope", "plain"])
def test_list_blacklist_missing_route_explains_the_private_cloud(run, api, answer, result_validator):
    api.get(BLACKLIST, status=404, **answer)
    code, document, _ = run("list_blacklist.py")
    assert (code, document["error_type"]) == (3, "api_error")
    result_validator.validate(document)
    assert document["details"]["http_status"] == 404
    assert "私有云" in document["hint"]
