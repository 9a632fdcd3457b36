"""System images (private cloud), duration packages, and base images in queue_submit."""

from __future__ import annotations

import copy
import json

import pytest
from responses import matchers

from helpers import ROOT, envelope, url
from helpers.fake_api import DEP_UUID, DEPLOYMENTS, STOCK, WALLET, deployment, page, wallet

SYSTEM_IMAGES = url("/api/v2/image/list")
DDP = url("/api/v1/dev/deployment/ddp/overview")
BASE_IMAGE = "base-image-l2t43iu6uk"
SYSTEM_IMAGE = {"image_uuid": BASE_IMAGE, "name": "torch:cuda11.8", "cuda_version": "11.8"}
CONFIG = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))


def test_list_images_system_reads_the_private_system_image_list(run, api, result_validator):
    api.post(SYSTEM_IMAGES, json=page([SYSTEM_IMAGE]), match=[matchers.json_params_matcher({"page_index": 1, "page_size": 100})])

    code, out, _ = run("list_images.py", "--system")

    assert code == 0 and out["count"] == 1
    assert out["items"][0]["image_uuid"] == BASE_IMAGE and out["items"][0]["image_name"] == "torch:cuda11.8"
    result_validator.validate(out)


def test_ddp_overview_shows_hours_beside_seconds(run, api, result_validator):
    api.post(DEPLOYMENTS, json=page([deployment()]))
    api.get(DDP, json=envelope([{"gpu_type": "RTX 4090", "total": 36000, "balance": 9000, "dc_list": "westDC2"}]),
            match=[matchers.query_param_matcher({"deployment_uuid": DEP_UUID})])

    code, out, _ = run("ddp_overview.py", "--deployment-uuid", DEP_UUID)

    assert code == 0 and out["deployment_uuid"] == DEP_UUID
    assert out["items"] == [{"gpu_type": "RTX 4090", "total": 36000, "balance": 9000, "dc_list": "westDC2",
                             "total_hours": 10.0, "balance_hours": 2.5}]
    result_validator.validate(out)


def test_ddp_overview_without_packages_is_an_empty_success(run, api):
    api.post(DEPLOYMENTS, json=page([deployment()]))
    api.get(DDP, json=envelope(None))

    code, out, _ = run("ddp_overview.py", "--deployment-uuid", DEP_UUID)

    assert code == 0 and out["items"] == [] and out["count"] == 0


def base_image_config(tmp_path, dialect="private"):
    config = copy.deepcopy(CONFIG)
    template = config["container_template"]
    template["image_uuid"] = BASE_IMAGE
    if dialect == "public":
        del template["cuda_v"]
        template.update(dc_list=["westDC2"], cuda_v_from=118, cuda_v_to=128)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def stock():
    return envelope([{name: {"idle_gpu_num": 3, "total_gpu_num": 8}} for name in CONFIG["container_template"]["gpu_name_set"]])


def test_private_base_image_is_checked_against_the_system_images(run, api, tmp_path):
    api.post(SYSTEM_IMAGES, json=page([SYSTEM_IMAGE]))
    api.get(STOCK, json=stock())
    api.post(DEPLOYMENTS, json=page([]))
    api.post(WALLET, json=wallet())

    code, out, _ = run("queue_submit.py", base_image_config(tmp_path), "--dry-run", "--quiet")

    assert code == 0 and out["warnings"] == []


def test_unknown_private_base_image_is_image_not_found(run, api, tmp_path, result_validator):
    api.post(SYSTEM_IMAGES, json=page([{**SYSTEM_IMAGE, "image_uuid": "base-image-0000000000"}]))

    code, out, _ = run("queue_submit.py", base_image_config(tmp_path), "--dry-run", "--quiet")

    assert code == 1 and out["error_type"] == "image_not_found"
    assert out["details"]["available_images"] == [{"image_uuid": "base-image-0000000000", "image_name": "torch:cuda11.8"}]
    result_validator.validate(out)


@pytest.mark.parametrize("failure", [{"status": 404, "json": envelope(code="NotFound")},
                                     {"status": 403, "json": envelope(code="Forbidden")}])
def test_base_image_that_cannot_be_listed_is_a_warning_not_an_error(run, api, tmp_path, failure):
    api.post(SYSTEM_IMAGES, **failure)
    api.get(STOCK, json=stock())
    api.post(DEPLOYMENTS, json=page([]))
    api.post(WALLET, json=wallet())

    code, out, _ = run("queue_submit.py", base_image_config(tmp_path), "--dry-run", "--quiet")

    assert code == 0 and [w["code"] for w in out["warnings"]] == ["base_image_unchecked"]


def test_public_base_image_is_not_looked_up(run, api, tmp_path):
    api.post(url("/api/v1/dev/machine/region/gpu_stock"), json=stock())  # every host: do the GPU types exist
    api.post(DEPLOYMENTS, json=page([]))
    api.post(url("/api/v1/dev/machine/region/gpu_stock"), json=stock())  # hosts the config's filters accept
    api.post(WALLET, json=wallet())

    code, out, _ = run("queue_submit.py", base_image_config(tmp_path, "public"), "--dry-run", "--quiet")

    assert code == 0 and [w["code"] for w in out["warnings"]] == ["base_image_unchecked"]


def test_against_the_simulator(sim, run, tmp_path):
    instance = sim()
    code, images, _ = run("list_images.py", "--system", "--quiet")
    assert code == 0 and images["count"] >= 1
    known = images["items"][0]["image_uuid"]

    config = copy.deepcopy(CONFIG)
    config["container_template"]["image_uuid"] = known
    path = tmp_path / "base.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    code, submitted, _ = run("queue_submit.py", str(path), "--interval", "0.05", "--quiet")
    assert code == 0 and submitted["warnings"] == []

    code, packages, _ = run("ddp_overview.py", "--deployment-uuid", submitted["deployment_uuid"], "--quiet")
    assert code == 0 and packages["items"] == []
    assert instance.deployments()[0]["uuid"] == submitted["deployment_uuid"]
