"""How containers are shown: one key name for the container UUID, secrets redacted, price in yuan."""

from __future__ import annotations

from helpers.fake_api import CONTAINER_UUID, PASSWORD, container
from autodl_esd.platform.containers import container_summary, container_view


def test_every_view_names_the_container_uuid_the_way_the_flags_do():
    record = container()
    assert container_view(record)["container_uuid"] == CONTAINER_UUID
    assert container_summary(record)["container_uuid"] == CONTAINER_UUID


def test_root_password_is_shown_only_on_request():
    record = container()
    assert PASSWORD not in str(container_view(record)) and PASSWORD not in str(container_summary(record))
    assert container_view(record, show_password=True)["info"]["root_password"] == PASSWORD
    assert record["info"]["root_password"] == PASSWORD, "the API record itself is not modified"


def test_a_container_without_a_price_gets_no_yuan_figure():
    from autodl_esd.platform.containers import container_view

    record = container()
    del record["price"]
    assert "price_yuan" not in container_view(record)
