"""Fixes from the third new-user trial: what the gateway, deletes, autoscale confirmation and
the Redis watchers say after a deployment is stopped by someone else."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, SCRIPTS
from helpers.servers import wait_for

# The autoscale end-to-end tests' one-machine cluster and ReplicaSet, under this file's name
# (the --name-glob tests select it).
from test_autoscale_gateway import CLUSTER, GPU, WAIT_SECONDS, client  # noqa: E402,F401
from test_autoscale_gateway import REQUEST as AUTOSCALE_REQUEST, deploy as deploy_named  # noqa: E402

REQUEST = {**AUTOSCALE_REQUEST, "name": "trial3"}


def deploy(instance, replicas: int) -> str:
    return deploy_named(instance, replicas, name=REQUEST["name"])


# ---- 1. the autoscaler's exit summary after someone else stopped the deployment ----------

def test_autoscaler_summary_after_deployment_ended_does_not_claim_a_size_left_running():
    from autodl_esd.serving.autoscaler import Autoscaler

    autoscaler = Autoscaler.__new__(Autoscaler)  # summary() reads only its counters
    from autodl_esd.serving.spend_meter import SpendMeter

    autoscaler.view, autoscaler.change_in_flight, autoscaler.changes = None, None, 0
    autoscaler.meter, autoscaler.zero_refused, autoscaler.blacklist_candidates = SpendMeter(), False, {}
    for ended in ("deployment_stopped", "deployment_gone"):
        summary = autoscaler.summary(ended)
        assert summary["left_at_last_size"] is False and summary["deployment_ended"] == ended
        assert "最后的副本数" not in summary["note"] and "不再产生费用" in summary["note"]
    assert autoscaler.summary()["left_at_last_size"] is True  # Ctrl-C: the size is left as it was


def test_serve_gateway_autoscale_ends_with_a_stopped_deployment_and_says_nothing_bills(sim):
    pytest.importorskip("aiohttp")
    from autodl_esd.platform import api

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "serve_gateway.py"), "--deployment-uuid", uuid, "--autoscale", "--yes",
         "--max-replicas", "2", "--listen", "127.0.0.1:0", "--interval", "0.1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["status"] == "success"
        api.stop_deployment(client(), uuid)  # as the --max-cost guard does
        out, err = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    summary = json.loads(out)
    assert summary["status"] == "success" and summary["stopped_by"] == "deployment_stopped", err[-2000:]
    shown = summary["autoscaler"]
    assert shown["left_at_last_size"] is False and shown["deployment_ended"] == "deployment_stopped"
    assert "需要停掉时" not in shown["note"] and "不再产生费用" in shown["note"]


# ---- 2. `guards`: a list when any guard watches, absent otherwise, on every path ----------

def _watching_guard(uuid: str, name: str) -> str:
    from autodl_esd.money import guard

    state = guard.new_state(None, {"uuid": uuid, "name": name, "deployment_type": "ReplicaSet"},
                            guard.Limits(max_runtime_hours=100), "stop", None, False, 30.0)
    state["status"] = "watching"  # between two checks: it has not yet seen the stop
    guard.save_new(state)
    return state["guard_id"]


def test_stopping_an_already_stopped_deployment_still_lists_the_guards_watching_it(sim, run):
    from autodl_esd.platform import api

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    api.stop_deployment(client(), uuid)
    guard_id = _watching_guard(uuid, "trial3")

    code, single, _ = run("stop_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")
    assert code == 0 and single["changed"] is False
    assert [g["guard_id"] for g in single["guards"]] == [guard_id] and "guards_note" in single

    code, bulk, _ = run("stop_deployment.py", "--name-glob", "trial3*", "--yes", "--expect-uuids", uuid, "--quiet")
    assert code == 0 and bulk["items"][0]["outcome"] == "skipped", bulk
    assert [g["guard_id"] for g in bulk["items"][0]["guards"]] == [guard_id] and "guards_note" in bulk


def test_the_docs_say_guards_is_absent_when_none_watch():
    from helpers import ROOT as root

    skill = (root / "SKILL.md").read_text(encoding="utf-8")
    reference = (root / "api-reference.md").read_text(encoding="utf-8")
    assert "没有时不出现该字段" in skill and "有守护在监视时才有" in skill
    assert '"guards" in result' in reference


# ---- 3. the autoscale confirmation shows the template's worst case beside today's price ----

def test_autoscale_confirmation_shows_expected_and_template_worst_case(sim, run):
    pytest.importorskip("aiohttp")
    from autodl_esd.money.estimate import cost_bounds

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    code, out, _ = run("serve_gateway.py", "--deployment-uuid", uuid, "--autoscale", "--max-replicas", "3",
                       "--listen", "127.0.0.1:0", "--quiet")
    assert code == 1 and out["error_type"] == "confirmation_required", out
    details = out["details"]
    assert details["price_source"] == "containers" and details["max_hourly_cost_yuan"] == 6.0  # 2 yuan x 3 today
    # The same figure a dry-run of the config at 3 replicas gives: 3 yuan/card x 1 card x 3.
    dry_run = cost_bounds({**REQUEST, "replica_num": 3})["worst_case_hourly_yuan"]
    assert details["worst_case_hourly_yuan"] == dry_run == 9.0
    assert details["worst_case"]["replicas"] == 3 and details["worst_case"]["gpu_num"] == 1
    assert "6 元/小时" in out["message"] and "最坏情况 9 元/小时" in out["message"]


# ---- 4 + 6. Redis watchers: the standby says so; the ended registry expires -------------

def _watcher(deployment_uuid: str, redis_url: str, key_prefix: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS / "discover_services.py"), "--deployment-uuid", deployment_uuid,
                             "--watch", "--interval", "0.1", "--redis", redis_url, "--key-prefix", key_prefix,
                             "--duration", "60", *extra], env={**os.environ, "PYTHONPATH": str(SCRIPTS)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_standby_watcher_says_who_holds_the_lock_and_when_it_takes_over(sim, redis_server, key_prefix):
    import signal
    import time

    from autodl_esd.platform import api
    from autodl_esd.serving import redis_registry

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    keys = redis_registry.RedisKeys(uuid, key_prefix)
    redis_client = redis_server.client

    def active_name():
        body = redis_client.get(keys.heartbeat)
        return json.loads(body)["watcher"] if body else None

    # 2 s: a loaded machine's renewals (every 0.1 s) never let it lapse by accident.
    first = _watcher(uuid, redis_server.url, key_prefix, "--lock-ttl", "2")
    watchers = [first]
    try:
        active = wait_for(active_name, WAIT_SECONDS, "the first watcher to become active")
        second = _watcher(uuid, redis_server.url, key_prefix, "--lock-ttl", "2")
        watchers.append(second)
        time.sleep(1.0)  # the second starts, finds the lock held, stands by
        first.send_signal(signal.SIGKILL)  # dies without releasing: the lock lapses after its TTL
        first.communicate(timeout=WAIT_SECONDS)
        wait_for(lambda: active_name() not in (None, active), WAIT_SECONDS, "the standby to take over")
        api.stop_deployment(client(), uuid)
        out, err = second.communicate(timeout=WAIT_SECONDS)
    finally:
        for process in watchers:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert json.loads(out)["stopped_by"] == "deployment_stopped", err[-2000:]
    standby_lines = [line for line in err.splitlines() if "备用 watcher" in line]
    assert standby_lines and active in standby_lines[0] and "跟随 Redis 中的注册表" in standby_lines[0], err[-2000:]
    takeover = [line for line in err.splitlines() if "成为活动 watcher" in line]
    assert takeover and "接管" in takeover[0] and active in takeover[0], err[-2000:]
    # 6: the ended registry expires (an hour), the heartbeat lapses: a shared Redis keeps neither.
    ttl = redis_client.ttl(keys.registry)
    assert 0 < ttl <= redis_registry.ENDED_REGISTRY_TTL_SECONDS, ttl
    assert -2 == redis_client.ttl(keys.heartbeat) or 0 < redis_client.ttl(keys.heartbeat) <= 2  # gone, or lapsing
    final = redis_registry.read_registry(redis_client, keys)
    assert final["ended"] == "deployment_stopped" and "stale" not in final


# ---- 5. docs: where sent messages are on the simulator; what --max-cost counts from ------

def test_skill_says_where_simulated_wechat_messages_are_and_what_max_cost_counts_from(sim):
    import urllib.request

    skill = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    reference = (ROOT / "api-reference.md").read_text(encoding="utf-8")
    assert "/_sim/wechat" in skill and "/_sim/wechat" in reference
    assert "花费从守护启动算起" in skill and "cost_report.py" in skill
    assert "从守护启动时算起" in reference and "全程花费" in reference
    # The route and shape the docs name are the simulator's.
    from autodl_esd.platform import api

    instance = sim()
    api.send_wechat_message(client(), "标题", "正文", "任务")
    request = urllib.request.Request(instance.url + "/_sim/wechat", headers={"Authorization": instance.token})
    with urllib.request.urlopen(request, timeout=5) as answer:
        envelope = json.loads(answer.read())
    assert envelope["code"] == "Success"
    messages = envelope["data"]
    assert [{key: m[key] for key in ("title", "name", "content")} for m in messages] == [
        {"title": "标题", "name": "任务", "content": "正文"}]
    assert "at" in messages[0]


def test_before_any_container_runs_a_replica_costs_up_to_price_to_times_its_cards():
    from autodl_esd.serving.autoscale_policy import AutoscaleConfig
    from autodl_esd.serving.autoscaler import ReplicaScaler, startup_bounds

    deployment = {"uuid": "d" * 15, "name": "svc", "deployment_type": "ReplicaSet", "status": "running", "replica_num": 1,
                  "template": {"gpu_name_set": [GPU], "gpu_num": 2, "price_from": 100, "price_to": 3000}}
    bounds = startup_bounds(AutoscaleConfig(min_replicas=1, max_replicas=3, max_hourly_cost=13), ReplicaScaler(None, deployment), 1)
    assert bounds["price_source"] == "template_price_to" and bounds["price_per_replica_yuan"] == 6.0  # 3 yuan x 2 cards
    assert bounds["effective_max_replicas"] == 2  # 13 yuan/h buys two 6-yuan replicas, not four 3-yuan ones
    assert bounds["worst_case_hourly_yuan"] == 18.0 and bounds["worst_case"]["gpu_num"] == 2


def test_a_refused_stop_still_lists_the_guards_watching(sim, run, monkeypatch):
    from autodl_esd.platform import api
    from autodl_esd.core.errors import ApiError

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    guard_id = _watching_guard(uuid, "trial3")

    def refused(client, deployment_uuid):
        raise ApiError("平台拒绝了停止", msg="refused", retryable=False)

    monkeypatch.setattr(api, "stop_deployment", refused)
    code, out, _ = run("stop_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")
    assert code != 0 and out["status"] == "error", out
    assert [g["guard_id"] for g in out["details"]["guards"]] == [guard_id], out
