"""Typed API calls: the response shapes each one accepts."""

from __future__ import annotations

from autodl_esd import api
from autodl_esd.http import ApiClient
from autodl_esd.settings import load_settings
from conftest import envelope, url


def test_blacklist_listing_accepts_a_list_null_or_a_page(mocked):
    entry = {"machine_id": "f94411a60c", "data_center": "westDC2"}
    for data in ([entry], None, {"list": [entry], "page_index": 1, "max_page": 1}):
        mocked.get(url(api.BLACKLIST_PATH), json=envelope(data))
        expected = [] if data is None else [entry]
        assert api.list_blacklist(ApiClient(load_settings())) == expected
