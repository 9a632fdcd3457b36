"""Findings of a new-user trial: cost that survives a delete, price wording, price in yuan
on containers, guards in bulk results, a second waiting queue_submit, guard confirmation."""

from __future__ import annotations

import json

import pytest

from api_fakes import (  # noqa: F401 (fixture)
    CONTAINERS, DEP_UUID, DEPLOYMENTS, api, container, deployment, expect_deployment, list_body, page,
)
from conftest import ROOT


# --- 2. price_estimates is a rate, said where it is printed ---------------------------------

def test_the_basis_says_price_estimates_is_the_current_rate_not_the_spend():
    from autodl_esd.cost import CONTAINER_PRICE_BASIS, PRICE_ESTIMATES_BASIS

    assert "口径相同" not in CONTAINER_PRICE_BASIS
    assert PRICE_ESTIMATES_BASIS in CONTAINER_PRICE_BASIS
    for words in ("正在运行的容器", "每小时的费率", "为 0", "不是已花的钱", "cost_yuan"):
        assert words in PRICE_ESTIMATES_BASIS


def test_list_deployments_says_what_price_estimates_yuan_is(run, api):
    api.post(DEPLOYMENTS, json=page([deployment()]))
    code, out, _ = run("list_deployments.py", "--quiet")
    assert code == 0, out
    assert out["items"][0]["price_estimates_yuan"] == 3.762
    assert "不是已花的钱" in out["price_estimates_basis"]


def test_examples_quote_the_basis_as_the_code_prints_it():
    from autodl_esd.cost import CONTAINER_PRICE_BASIS

    text = (ROOT / "examples.md").read_text(encoding="utf-8")
    assert "口径相同" not in text
    assert text.count(CONTAINER_PRICE_BASIS) >= 3


# --- 3. list_containers gives price in yuan beside the raw field ----------------------------

def test_list_containers_gives_price_in_yuan_per_hour(run, api):
    expect_deployment(api, deployment())
    api.post(CONTAINERS, json=page([container()]))
    code, out, _ = run("list_containers.py", "--deployment-uuid", DEP_UUID, "--quiet")
    assert code == 0, out
    [item] = out["items"]
    assert (item["price"], item["price_yuan"]) == (1881, 1.881)


def test_a_container_without_a_price_gets_no_yuan_figure():
    from autodl_esd.containers import container_view

    record = container()
    del record["price"]
    assert "price_yuan" not in container_view(record)
