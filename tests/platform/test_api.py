"""Typed API calls: the response shapes each one accepts."""

from __future__ import annotations

import pytest

from autodl_esd.platform import api
from autodl_esd.core.http import ApiClient
from autodl_esd.core.settings import load_settings
from helpers import envelope, url


def test_blacklist_listing_accepts_a_list_null_or_a_page(mocked):
    entry = {"machine_id": "f94411a60c", "data_center": "westDC2"}
    for data in ([entry], None, {"list": [entry], "page_index": 1, "max_page": 1}):
        mocked.get(url(api.BLACKLIST_PATH), json=envelope(data))
        expected = [] if data is None else [entry]
        assert api.list_blacklist(ApiClient(load_settings())) == expected


@pytest.mark.parametrize("typed,expected", [
    ("rtx 4090", ["RTX 4090", "RTX 4090D"]),
    ("A5000", ["RTX A5000"]),
    ("Tesla V100", ["Tesla V100-SXM2-32GB"]),
    ("RTX4090D", ["RTX 4090D"]),
    ("RTX 3090", []),  # one digit away, but a different card: no suggestion beats a wrong one
    ("RTX 4080", []),
])
def test_gpu_name_suggestions_keep_the_model_number(typed, expected):
    from autodl_esd.platform.stock import similar_gpu_names

    available = ["RTX 4090", "RTX 4090D", "RTX A5000", "NVIDIA A40", "Tesla V100-SXM2-32GB"]
    assert similar_gpu_names(typed, available) == expected


@pytest.mark.parametrize("written,expected", [
    ("RTX 4090", ["NVIDIA GeForce RTX 4090"]),
    ("rtx4090", ["NVIDIA GeForce RTX 4090"]),
    ("A40", ["NVIDIA A40"]),
    ("RTX 4090 D", ["NVIDIA GeForce RTX 4090 D"]),
    ("NVIDIA GeForce RTX 4090", []),  # already the platform's name
    ("RTX 3090", []),
    ("4090", []),  # a fragment is a suggestion (similar_gpu_names), never a resolution
])
def test_same_model_names_ignore_only_case_spaces_and_vendor_words(written, expected):
    from autodl_esd.platform.stock import same_model_names

    available = ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090 D", "NVIDIA A40"]
    assert same_model_names(written, available) == expected
    assert same_model_names("NVIDIA GeForce RTX 4090", ["RTX 4090", "RTX 4090D"]) == ["RTX 4090"]


@pytest.mark.parametrize("host,floored", [
    ("https://private.autodl.com", True),
    ("https://api.autodl.com", True),
    ("http://127.0.0.1:8000", False),  # the simulator may be polled as fast as a test likes
    ("http://localhost:8000", False),
])
def test_polling_the_real_platform_is_at_least_one_second_apart(host, floored):
    from autodl_esd.core.output import Progress
    from autodl_esd.core.polling import MIN_REMOTE_POLL_SECONDS, floor_interval

    assert floor_interval(0.01, host, Progress(quiet=True)) == (MIN_REMOTE_POLL_SECONDS if floored else 0.01)
    assert floor_interval(5.0, host, Progress(quiet=True)) == 5.0
