"""resolve.py: naming one deployment by uuid, exact name or config; containers via their uuid."""

from __future__ import annotations

import json

import pytest

from helpers.fake_api import (
    CONTAINER_UUID,
    CONTAINERS,
    DEPLOYMENTS,
    DEP_UUID,
    OTHER_UUID,
    container,
    deployment,
    expect_containers,
    expect_deployment,
    page,
)

pytestmark = pytest.mark.usefixtures("fast_read_back")  # read-backs after a change need no real pauses


@pytest.fixture
def client():
    from autodl_esd.core.http import ApiClient
    from autodl_esd.core.settings import load_settings

    return ApiClient(load_settings())


def test_by_uuid(api, client):
    from autodl_esd.platform.resolve import resolve_deployment

    expect_deployment(api, deployment())
    assert resolve_deployment(client, deployment_uuid=DEP_UUID)["uuid"] == DEP_UUID


def test_by_uuid_ignores_an_unfiltered_answer(api, client):
    """A server that ignores the filter must not make another deployment 'found'."""
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_deployment

    expect_deployment(api, deployment(uuid=OTHER_UUID))
    with pytest.raises(AutoDLError) as caught:
        resolve_deployment(client, deployment_uuid=DEP_UUID)
    assert caught.value.error_type.value == "not_found"


def test_malformed_deployment_uuid_is_a_usage_error_before_any_call(api, client):
    """Bad input is usage_error; not_found is kept for a well-formed uuid the platform lacks."""
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_deployment

    with pytest.raises(AutoDLError) as caught:  # the strict mock fails on any request
        resolve_deployment(client, deployment_uuid="my-service")
    assert caught.value.error_type.value == "usage_error"
    assert "15 位十六进制" in caught.value.hint and "--name" in caught.value.hint


def test_malformed_container_uuid_is_a_usage_error_before_any_call(api, client):
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_container

    with pytest.raises(AutoDLError) as caught:
        resolve_container(client, "nonexistent-uuid")
    assert caught.value.error_type.value == "usage_error"
    assert "格式" in caught.value.message


def test_by_unique_name(api, client):
    from autodl_esd.platform.resolve import resolve_deployment

    expect_deployment(api, deployment(), name="svc")
    assert resolve_deployment(client, name="svc")["uuid"] == DEP_UUID


def test_name_match_is_exact(api, client):
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_deployment

    expect_deployment(api, deployment(name="svc-2"), name="svc")
    with pytest.raises(AutoDLError) as caught:
        resolve_deployment(client, name="svc")
    assert caught.value.error_type.value == "not_found"


def test_ambiguous_name_lists_candidates(api, client):
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_deployment

    items = [deployment(), deployment(uuid=OTHER_UUID, status="stopped")]
    api.post(DEPLOYMENTS, json=page(items))
    with pytest.raises(AutoDLError) as caught:
        resolve_deployment(client, name="svc")
    error = caught.value
    assert error.error_type.value == "usage_error"
    assert [c["deployment_uuid"] for c in error.details["candidates"]] == [DEP_UUID, OTHER_UUID]
    assert {"status", "created_at", "deployment_type"} <= set(error.details["candidates"][0])
    assert "--deployment-uuid" in error.hint


def test_by_config_name(api, client, tmp_path):
    from autodl_esd.platform.resolve import resolve_deployment

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "svc", "deployment_type": "ReplicaSet"}), encoding="utf-8")
    expect_deployment(api, deployment(), name="svc")
    assert resolve_deployment(client, config_path=str(path))["uuid"] == DEP_UUID


def test_config_without_name_is_config_error(client, tmp_path):
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_deployment

    path = tmp_path / "c.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(AutoDLError) as caught:
        resolve_deployment(client, config_path=str(path))
    assert caught.value.error_type.value == "config_error"
    assert caught.value.details["path"] == str(path)


def test_config_that_is_not_an_object_is_config_error(client, tmp_path):
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_deployment

    path = tmp_path / "c.json"
    path.write_text('[{"name": "svc"}]', encoding="utf-8")
    with pytest.raises(AutoDLError) as caught:
        resolve_deployment(client, config_path=str(path))
    assert caught.value.error_type.value == "config_error"
    assert "不是 JSON 对象" in caught.value.message and "没有部署名称" not in caught.value.message
    assert caught.value.details == {"path": str(path), "top_level_type": "数组"}


def test_missing_config_file_is_config_error(client, tmp_path):
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_deployment

    with pytest.raises(AutoDLError) as caught:
        resolve_deployment(client, config_path=str(tmp_path / "nope.json"))
    assert caught.value.error_type.value == "config_error"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CONTAINER_UUID, DEP_UUID),
        ("da497aea1eb8343-f94411a60c-a394fb30", "da497aea1eb8343"),
        ("833f1cd5a764fa3", None),
        ("not-a-container", None),
    ],
)

def test_deployment_uuid_of_container(text, expected):
    from autodl_esd.platform.resolve import deployment_uuid_of_container

    assert deployment_uuid_of_container(text) == expected


def test_resolve_container_includes_released(api, client):
    from autodl_esd.platform.resolve import resolve_container

    expect_containers(api, [container(status="shutdown")], container_uuid=CONTAINER_UUID, released=True)
    assert resolve_container(client, CONTAINER_UUID)["status"] == "shutdown"


def test_resolve_container_unknown(api, client):
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_container

    expect_containers(api, [], container_uuid=CONTAINER_UUID, released=True)
    with pytest.raises(AutoDLError) as caught:
        resolve_container(client, CONTAINER_UUID)
    assert caught.value.error_type.value == "not_found"


def test_resolve_container_record_not_found_code(api, client):
    from autodl_esd.core.errors import AutoDLError
    from autodl_esd.platform.resolve import resolve_container
    from helpers import envelope

    api.post(CONTAINERS, json=envelope(None, code="RecordNotFoundError", msg="未查询到相关部署"))
    with pytest.raises(AutoDLError) as caught:
        resolve_container(client, CONTAINER_UUID)
    assert caught.value.error_type.value == "not_found"


def test_read_back_reports_instead_of_raising(monkeypatch):
    from autodl_esd.core.errors import ApiError
    from autodl_esd.platform.resolve import read_back

    def failing():
        raise ApiError("读取失败", retryable=True)

    value, report = read_back(failing, lambda v: True, attempts=2)
    assert value is None
    assert report == {"verified": False, "read_back_error": "读取失败"}

    values = iter([1, 2, 3])
    value, report = read_back(lambda: next(values), lambda v: v == 2)
    assert (value, report) == (2, {"verified": True})
