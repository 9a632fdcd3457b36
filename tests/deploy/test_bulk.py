"""--name-glob on stop_deployment / delete_deployment: preview every match, act on exactly
the confirmed set, one outcome per deployment (end to end against the simulator)."""

from __future__ import annotations

import copy
import json

import pytest

from helpers import ROOT

pytest.importorskip("simulator")

FAST = ("--interval", "0.05", "--quiet")
JOB = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))


@pytest.fixture
def submit(run, tmp_path):
    def _submit(name: str) -> str:
        config = {**copy.deepcopy(JOB), "name": name, "replica_num": 1, "parallelism_num": 1}
        config["container_template"]["cmd"] = "sleep infinity"  # keeps a live container to preview
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        code, document, _ = run("queue_submit.py", str(path), *FAST)
        assert code == 0, document
        return document["deployment_uuid"]

    return _submit


@pytest.mark.parametrize("script", ["stop_deployment.py", "delete_deployment.py"])
def test_glob_preview_then_exactly_the_confirmed_set(sim, run, submit, result_validator, script):
    instance = sim()
    demo_a, demo_b, other = submit("demo-a"), submit("demo-b"), submit("mydemo-x")

    code, preview, _ = run(script, "--name-glob", "demo-*", "--quiet")
    assert (code, preview["error_type"]) == (1, "confirmation_required"), preview
    result_validator.validate(preview)
    details = preview["details"]
    assert {m["deployment_uuid"] for m in details["matches"]} == {demo_a, demo_b}, "never a substring: mydemo-x stays"
    assert all("status" in m and "live_containers" in m for m in details["matches"])
    assert details["expect_uuids"] == ",".join(sorted([demo_a, demo_b]))
    assert f"--expect-uuids {details['expect_uuids']}" in preview["hint"]

    # --yes alone is still only a preview: the set to act on must be the one the user saw.
    code, again, _ = run(script, "--name-glob", "demo-*", "--yes", "--quiet")
    assert again["error_type"] == "confirmation_required"

    # A new match appears after the preview: nothing is done, the difference is shown.
    demo_c = submit("demo-c")
    code, changed, _ = run(script, "--name-glob", "demo-*", "--yes", "--expect-uuids", details["expect_uuids"], "--quiet")
    assert (code, changed["error_type"]) == (1, "confirmation_required"), changed
    result_validator.validate(changed)
    assert [a["deployment_uuid"] for a in changed["details"]["added"]] == [demo_c] and changed["details"]["removed"] == []
    assert all(d["status"] != "stopped" for d in instance.deployments()), "nothing was stopped"

    code, done, _ = run(script, "--name-glob", "demo-*", "--yes", "--expect-uuids", changed["details"]["expect_uuids"], "--quiet")
    assert code == 0, done
    result_validator.validate(done)
    assert {item["deployment_uuid"]: (item["outcome"], item["took_effect"]) for item in done["items"]} == {
        demo_a: ("done", True), demo_b: ("done", True), demo_c: ("done", True)}
    left = {d["uuid"]: d for d in instance.deployments()}
    assert other in left and left[other]["status"] != "stopped", "the non-matching deployment is untouched"
    if script == "delete_deployment.py":
        assert not {demo_a, demo_b, demo_c} & set(left)
    else:
        assert all(left[u]["status"] == "stopped" for u in (demo_a, demo_b, demo_c))


@pytest.mark.parametrize("script", ["stop_deployment.py", "delete_deployment.py"])
def test_exclude_takes_exceptions_out_of_the_preview_the_comparison_and_the_acting(
        sim, run, submit, result_validator, script):
    """"Every demo-* except demo-keep": the kept one is never offered, compared or touched."""
    instance = sim()
    demo_a, demo_b, keep = submit("demo-a"), submit("demo-b"), submit("demo-keep")
    exclude = ("--exclude", "demo-keep")

    code, preview, _ = run(script, "--name-glob", "demo-*", *exclude, "--quiet")
    assert (code, preview["error_type"]) == (1, "confirmation_required"), preview
    result_validator.validate(preview)
    details = preview["details"]
    assert {m["deployment_uuid"] for m in details["matches"]} == {demo_a, demo_b}
    assert [(e["deployment_uuid"], e["name"]) for e in details["excluded"]] == [(keep, "demo-keep")]
    assert details["expect_uuids"] == ",".join(sorted([demo_a, demo_b])) and details["exclude"] == ["demo-keep"]
    assert keep not in preview["hint"] and keep not in preview["message"], "no hint offers the one to keep"
    assert f"--expect-uuids {details['expect_uuids']}" in preview["hint"] and "--exclude" in preview["hint"]

    # The old set (the kept one included) is not what is left after --exclude: nothing is done.
    everything = ",".join(sorted([demo_a, demo_b, keep]))
    code, mismatch, _ = run(script, "--name-glob", "demo-*", *exclude, "--yes", "--expect-uuids", everything, "--quiet")
    assert (code, mismatch["error_type"]) == (1, "confirmation_required"), mismatch
    result_validator.validate(mismatch)
    assert mismatch["details"]["removed"] == [keep] and mismatch["details"]["expect_uuids"] == details["expect_uuids"]
    assert all(d["status"] != "stopped" for d in instance.deployments()), "nothing was stopped"

    code, done, _ = run(script, "--name-glob", "demo-*", *exclude, "--yes", "--expect-uuids", details["expect_uuids"],
                        "--quiet")
    assert code == 0, done
    result_validator.validate(done)
    assert {item["deployment_uuid"] for item in done["items"]} == {demo_a, demo_b}
    assert [e["deployment_uuid"] for e in done["excluded"]] == [keep]
    left = {d["uuid"]: d for d in instance.deployments()}
    assert keep in left and left[keep]["status"] != "stopped", "the excluded deployment is untouched"


def test_exclude_of_every_match_does_nothing_and_says_why(sim, run, submit):
    sim()
    keep = submit("demo-keep")
    code, document, _ = run("delete_deployment.py", "--name-glob", "demo-*", "--exclude", "demo-k*", "--quiet")
    assert code == 0 and document["count"] == 0, document
    assert [e["deployment_uuid"] for e in document["excluded"]] == [keep] and "--exclude" in document["note"]


def test_list_deployments_takes_the_same_exclude(sim, run, submit):
    sim()
    demo_a, _keep = submit("demo-a"), submit("demo-keep")
    code, document, _ = run("list_deployments.py", "--name-glob", "demo-*", "--exclude", "demo-keep", "--quiet")
    assert code == 0, document
    assert [item["uuid"] for item in document["items"]] == [demo_a]
    assert [e["name"] for e in document["excluded"]] == ["demo-keep"]


@pytest.mark.parametrize("script", ["stop_deployment.py", "delete_deployment.py", "list_deployments.py"])
def test_exclude_without_glob_is_a_usage_error(run, script):
    code, document, _ = run(script, "--name", "x", "--exclude", "demo-keep")
    assert (code, document["error_type"]) == (1, "usage_error")


def test_stop_glob_skips_deployments_already_stopped(sim, run, submit):
    sim()
    first, second = submit("demo-a"), submit("demo-b")
    code, document, _ = run("stop_deployment.py", "--deployment-uuid", first, "--yes", "--quiet")
    assert code == 0
    expect = ",".join(sorted([first, second]))
    code, document, _ = run("stop_deployment.py", "--name-glob", "demo-*", "--yes", "--expect-uuids", expect, "--quiet")
    assert code == 0, document
    outcomes = {item["deployment_uuid"]: item["outcome"] for item in document["items"]}
    assert outcomes == {first: "skipped", second: "done"}
    assert (document["done"], document["skipped"], document["failed"]) == (1, 1, 0)


def test_glob_matching_nothing_is_a_success_that_did_nothing(sim, run, submit):
    sim()
    submit("prod-a")
    code, document, _ = run("delete_deployment.py", "--name-glob", "demo-*", "--quiet")
    assert code == 0 and document["items"] == [] and document["count"] == 0


def test_a_failure_on_one_deployment_is_reported_per_deployment(run, monkeypatch, result_validator):
    """One delete refused, the other done: an error whose details carry both outcomes."""
    import responses

    from helpers.fake_api import CONTAINERS, DEPLOYMENT, DEPLOYMENTS, deployment, page
    from helpers import envelope

    from autodl_esd.platform import resolve

    monkeypatch.setattr(resolve, "_sleep", lambda seconds: None)  # the read-backs need no real pauses
    first, second = "aaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbb"
    matches = [deployment(uuid=first, name="demo-1"), deployment(uuid=second, name="demo-2")]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(DEPLOYMENTS, json=page(matches))
        mock.post(CONTAINERS, json=page([]))
        calls = []

        def delete(request):
            uuid = json.loads(request.body)["deployment_uuid"]
            calls.append(uuid)
            if uuid == first:
                return 200, {}, json.dumps(envelope(None, code="PermissionDenied", msg="不允许"))
            matches[:] = [d for d in matches if d["uuid"] != uuid]
            return 200, {}, json.dumps(envelope(None))

        mock.add_callback("DELETE", DEPLOYMENT, callback=delete, content_type="application/json")
        code, document, _ = run("delete_deployment.py", "--name-glob", "demo-*", "--yes",
                                "--expect-uuids", f"{first},{second}", "--quiet")
    assert (code, document["error_type"]) == (3, "api_error"), document
    result_validator.validate(document)
    outcomes = {item["deployment_uuid"]: (item["outcome"], item["took_effect"]) for item in document["details"]["items"]}
    assert outcomes == {first: ("failed", False), second: ("done", True)}
    assert calls == [first, second], "each deployment sent once"


def test_expect_uuids_without_glob_is_a_usage_error(run):
    code, document, _ = run("stop_deployment.py", "--name", "x", "--expect-uuids", "aaaaaaaaaaaaaaa")
    assert (code, document["error_type"]) == (1, "usage_error")


def test_an_interrupt_mid_batch_says_what_happened_to_each_deployment(run, monkeypatch, result_validator):
    import responses

    from helpers.fake_api import CONTAINERS, DEPLOYMENTS, deployment, page
    from autodl_esd.platform import api
    from autodl_esd.core.errors import Interrupted

    first, second, third = "aaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbb", "ccccccccccccccc"
    matches = [deployment(uuid=u, name=f"demo-{n}") for n, u in enumerate((first, second, third))]
    sent = []

    def delete(client, uuid):
        sent.append(uuid)
        if uuid == second:
            raise Interrupted("SIGTERM")  # the signal arrives while this delete is in flight
        matches[:] = [d for d in matches if d["uuid"] != uuid]

    monkeypatch.setattr(api, "delete_deployment", delete)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback("POST", DEPLOYMENTS, callback=lambda request: (200, {}, json.dumps(page(
            [d for d in matches if json.loads(request.body).get("deployment_uuid") in (None, d["uuid"])]))),
            content_type="application/json")
        mock.post(CONTAINERS, json=page([]))
        code, document, _ = run("delete_deployment.py", "--name-glob", "demo-*", "--yes",
                                "--expect-uuids", f"{first},{second},{third}", "--quiet")
    assert (code, document["error_type"]) == (130, "interrupted"), document
    result_validator.validate(document)
    details = document["details"]
    assert [(o["deployment_uuid"], o["outcome"]) for o in details["outcomes"]] == [(first, "done")]
    assert details["in_flight"]["deployment_uuid"] == second and details["in_flight"]["took_effect"] == "unknown"
    assert details["not_sent"] == [third] and sent == [first, second]


def test_a_lost_answer_on_one_deployment_is_unknown_not_false(run, monkeypatch, result_validator):
    """A delete whose answer was lost and whose effect is not visible yet: took_effect
    unknown with how to check (the platform may still carry it out), never false."""
    import responses

    from helpers.fake_api import CONTAINERS, DEPLOYMENT, DEPLOYMENTS, deployment, page
    from helpers import envelope

    from autodl_esd.platform import effects

    now = [0.0]
    monkeypatch.setattr(effects, "_now", lambda: now[0])
    monkeypatch.setattr(effects, "_sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    lost, answered = "aaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbb"
    matches = [deployment(uuid=lost, name="demo-1"), deployment(uuid=answered, name="demo-2")]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback("POST", DEPLOYMENTS, callback=lambda request: (200, {}, json.dumps(page(
            [d for d in matches if json.loads(request.body).get("deployment_uuid") in (None, d["uuid"])]))),
            content_type="application/json")
        mock.post(CONTAINERS, json=page([]))

        def delete(request):
            uuid = json.loads(request.body)["deployment_uuid"]
            if uuid == lost:
                return 503, {}, json.dumps(envelope(None, code="ServiceUnavailable", msg="服务暂时不可用"))
            matches[:] = [d for d in matches if d["uuid"] != uuid]
            return 200, {}, json.dumps(envelope(None))

        mock.add_callback("DELETE", DEPLOYMENT, callback=delete, content_type="application/json")
        code, document, _ = run("delete_deployment.py", "--name-glob", "demo-*", "--yes",
                                "--expect-uuids", f"{lost},{answered}", "--quiet")
    assert (code, document["error_type"]) == (3, "api_error"), document
    result_validator.validate(document)
    items = {item["deployment_uuid"]: item for item in document["details"]["items"]}
    assert (items[lost]["outcome"], items[lost]["took_effect"]) == ("failed", "unknown")
    assert items[lost]["check"] == f"python3 scripts/list_deployments.py --deployment-uuid {lost}"
    assert (items[answered]["outcome"], items[answered]["took_effect"]) == ("done", True)
