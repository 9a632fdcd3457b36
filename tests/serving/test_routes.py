"""Several deployments behind one gateway: routing by the request's JSON `model` and by path
prefix, GET /v1/models, unknown and missing models, a route whose deployment ends while the
others keep serving, per-route status, summary and metrics, and serve_gateway.py's checks of
--route / --route-prefix / --routes-file. Upstreams are tiny aiohttp servers on loopback."""

from __future__ import annotations

import json
import os
import time

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

import requests  # noqa: E402
from aiohttp import web  # noqa: E402

from helpers.loop_thread import item  # noqa: E402


def recording(name: str, hits: list):
    async def handler(request: web.Request) -> web.StreamResponse:
        hits.append({"name": name, "path": request.path_qs, "body": await request.read()})
        return web.json_response({"name": name})

    return handler


def static(*items, ends_with_deployment: bool = False):
    from autodl_esd.serving.routing.sources import StaticSource

    source = StaticSource(list(items))
    source.ends_with_deployment = ends_with_deployment
    return source


def end(source, ended: str = "deployment_stopped") -> None:
    """What the watcher's last document says when its deployment stops."""
    from autodl_esd.serving.routing.sources import RegistryView

    source._view = RegistryView((), None, time.monotonic(), ended=ended, ended_reason=f"部署已结束 ({ended})。")


@pytest.fixture
def two_models(loop_thread):
    hits: list = []
    sources = {"qwen": static(item("q1", loop_thread.upstream(recording("qwen", hits))), ends_with_deployment=True),
               "bge": static(item("b1", loop_thread.upstream(recording("bge", hits))), ends_with_deployment=True),
               "/sd": static(item("s1", loop_thread.upstream(recording("sd", hits))), ends_with_deployment=True)}
    gateway = loop_thread.gateway(None, routes=[("qwen", sources["qwen"], {"model": "qwen", "deployment_uuid": "833f1cd5a764fa3"}),
                                                ("bge", sources["bge"], {"model": "bge"}),
                                                ("/sd", sources["/sd"], {"prefix": "/sd"})])
    return gateway, sources, hits


def test_a_request_goes_to_the_route_of_its_model_with_its_body_unchanged(two_models):
    gateway, _, hits = two_models
    body = b'{"messages": [{"role": "user", "content": "\\u4f60\\u597d"}],   "model":"qwen"}'
    response = requests.post(gateway.url + "/v1/chat/completions", data=body, timeout=5,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and response.headers["X-Served-By"] == "q1"
    assert hits[-1] == {"name": "qwen", "path": "/v1/chat/completions", "body": body}  # byte for byte
    response = requests.post(gateway.url + "/v1/embeddings", json={"model": "bge", "input": "x"}, timeout=5)
    assert response.headers["X-Served-By"] == "b1" and hits[-1]["name"] == "bge"


def test_a_path_prefix_route_cuts_its_prefix_off(two_models):
    gateway, _, hits = two_models
    assert requests.get(gateway.url + "/sd/sdapi/v1/txt2img?steps=2", timeout=5).headers["X-Served-By"] == "s1"
    assert hits[-1]["path"] == "/sdapi/v1/txt2img?steps=2"
    requests.get(gateway.url + "/sd", timeout=5)
    assert hits[-1]["path"] == "/"
    requests.get(gateway.url + "/sd?x=1", timeout=5)
    assert hits[-1]["path"] == "/?x=1"


def test_models_lists_the_model_routes_in_openai_format(two_models):
    gateway, _, hits = two_models
    listing = requests.get(gateway.url + "/v1/models", timeout=5).json()
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == ["bge", "qwen"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in listing["data"])
    assert requests.get(gateway.url + "/v1/models/qwen", timeout=5).json()["id"] == "qwen"
    assert requests.get(gateway.url + "/v1/models/nope", timeout=5).status_code == 404
    assert hits == []  # answered by the gateway


def test_an_unknown_or_missing_model_is_a_json_error_listing_the_known_ones(two_models, result_validator):
    gateway, _, hits = two_models
    unknown = requests.post(gateway.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": []}, timeout=5)
    assert unknown.status_code == 404
    document = unknown.json()
    result_validator.validate(document)
    assert document["error_type"] == "not_found" and "gpt-4o" in document["message"]
    assert document["details"]["available_models"] == ["bge", "qwen"]
    assert document["details"]["available_prefixes"] == ["/sd"]
    for body in (b"not json", b'{"messages": []}', b'{"model": 7}', b"[1]", b""):
        missing = requests.post(gateway.url + "/v1/chat/completions", data=body, timeout=5)
        assert missing.status_code == 400 and missing.json()["error_type"] == "bad_request", body
        assert missing.json()["details"]["available_models"] == ["bge", "qwen"]
    assert hits == []
    totals = gateway.status()["totals"]
    assert totals["answered_by_gateway"] == 6 and totals["by_status_class"]["4xx"] == 6


def test_a_route_whose_deployment_ended_answers_503_and_the_others_keep_serving(two_models, loop_thread):
    gateway, sources, _ = two_models
    loop_thread.call(lambda: end(sources["qwen"]))
    deadline = time.monotonic() + 30
    while gateway.status()["routes"][0]["registry"].get("ended") is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ended = requests.post(gateway.url + "/v1/chat/completions", json={"model": "qwen"}, timeout=5)
    assert ended.status_code == 503
    assert ended.json()["error_type"] == "no_replicas" and ended.json()["details"]["route"] == "qwen"
    assert ended.json()["details"]["ended"] == "deployment_stopped"
    assert requests.post(gateway.url + "/v1/embeddings", json={"model": "bge"}, timeout=5).status_code == 200
    assert gateway.ended_by is None  # the gateway goes on for the other routes
    loop_thread.call(lambda: (end(sources["bge"], "deployment_gone"), end(sources["/sd"])))
    while gateway.ended_by is None:  # every route ended: so does the gateway
        assert time.monotonic() < deadline
        time.sleep(0.02)
    summary = gateway.summary()
    assert {route["route"]: route.get("ended") for route in summary["routes"]} == \
        {"qwen": "deployment_stopped", "bge": "deployment_gone", "/sd": "deployment_stopped"}


def test_status_summary_and_metrics_are_per_route(two_models):
    from prometheus_client.parser import text_string_to_metric_families

    gateway, _, _ = two_models
    for model in ("qwen", "qwen", "bge"):
        requests.post(gateway.url + "/v1/chat/completions", json={"model": model}, timeout=5)
    requests.post(gateway.url + "/v1/chat/completions", json={"model": "nope"}, timeout=5)
    status = gateway.status()
    routes = {route["route"]: route for route in status["routes"]}
    assert routes["qwen"]["model"] == "qwen" and routes["qwen"]["deployment_uuid"] == "833f1cd5a764fa3"
    assert routes["/sd"]["prefix"] == "/sd"
    assert routes["qwen"]["totals"]["requests"] == 2 and routes["bge"]["totals"]["sent_to_replicas"] == 1
    assert routes["qwen"]["replicas"][0]["requests"]["success"] == 2
    assert status["totals"]["requests"] == 4 and status["totals"]["answered_by_gateway"] == 1
    summary = gateway.summary()
    assert [route["requests"] for route in summary["routes"]] == [2, 1, 0] and summary["requests"] == 4
    text = requests.get(gateway.url + "/_gateway/metrics", timeout=5).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    served = {(s.labels["route"], s.labels["container_uuid"]): s.value for s in samples
              if s.name == "gateway_replica_requests_total" and s.labels["outcome"] == "success"}
    assert served == {("qwen", "q1"): 2, ("bge", "b1"): 1, ("/sd", "s1"): 0}
    durations = {s.labels["route"] for s in samples if s.name == "http_server_request_duration_seconds_count"}
    assert {"qwen", "bge", ""} <= durations  # "": answered before a route was known


def test_a_body_routed_by_model_is_bounded(two_models, monkeypatch):
    from autodl_esd.serving.routing import gateway as gateway_module

    gateway, _, hits = two_models
    monkeypatch.setattr(gateway_module, "MODEL_BODY_LIMIT_BYTES", 2 * 1024 * 1024)
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}], "model": "qwen"}).encode()
    response = requests.post(gateway.url + "/v1/chat/completions", data=big, timeout=30)
    assert response.status_code == 413 and response.json()["details"]["max_bytes"] == 2 * 1024 * 1024
    fits = json.dumps({"messages": [{"role": "user", "content": "x" * (1536 * 1024)}], "model": "qwen"}).encode()
    response = requests.post(gateway.url + "/v1/chat/completions", data=fits, timeout=30)
    assert response.status_code == 200 and hits[-1]["body"] == fits  # parsed off the loop, sent unchanged


# ---- serve_gateway.py's checks -----------------------------------------------------------


@pytest.mark.parametrize("argv, fragment", [
    (["--route", "qwen"], "--route 格式不对"),
    (["--route", "=my-dep"], "--route 格式不对"),
    (["--route", "qwen=a", "--route", "qwen=b"], "出现了两次"),
    (["--route-prefix", "sd=my-sd"], "前缀不对"),
    (["--route-prefix", "/=my-sd"], "前缀不对"),
    (["--route-prefix", "/_gateway/x=my-sd"], "冲突"),
    (["--route-prefix", "/sd=a", "--route-prefix", "/sd/=b"], "出现了两次"),
    (["--route", "qwen=a", "--name", "my-service"], "不能同时用"),
    (["--route", "qwen=a", "--balance-factor", "1.5"], "--balance-factor"),
    (["--balance-factor", "0.5", "--route", "qwen=a", "--policy", "cache_aware"], "1 <= 数值 <= 100"),
    ([], "需要指定部署"),
])
def test_bad_routes_are_usage_errors_before_anything_is_contacted(run, argv, fragment, result_validator):
    code, document, _ = run("serve_gateway.py", *argv)
    result_validator.validate(document)
    assert code == 1 and document["error_type"] == "usage_error", document
    assert fragment in document["message"] + json.dumps(document["details"], ensure_ascii=False), document


def test_a_routes_file_is_checked_against_its_schema(run, tmp_path, result_validator):
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [{"model": "a", "prefix": "/a", "deployment": "x"},
                                           {"model": "b", "deployment": "y", "policy": "fastest"},
                                           {"model": "c"}]}), encoding="utf-8")
    code, document, _ = run("serve_gateway.py", "--routes-file", str(path))
    result_validator.validate(document)
    assert code == 1 and document["error_type"] == "validation_error"
    assert sorted(error["path"] for error in document["details"]["errors"]) == ["/routes/0", "/routes/1/policy", "/routes/2"]
    path.write_text("{", encoding="utf-8")
    assert run("serve_gateway.py", "--routes-file", str(path))[1]["error_type"] == "config_error"
    path.write_text(json.dumps({"routes": [{"model": "a", "deployment": "x"}, {"model": "a", "deployment": "y"}]}), encoding="utf-8")
    assert run("serve_gateway.py", "--routes-file", str(path))[1]["error_type"] == "usage_error"


# ---- end to end on the simulator ---------------------------------------------------------


def submit_named(run, tmp_path, *names: str) -> dict[str, str]:
    """The ReplicaSet example under each name, one replica each, running: {name: uuid}."""
    from helpers import ROOT

    example = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
    uuids = {}
    for name in names:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(dict(example, name=name, replica_num=1)), encoding="utf-8")
        code, out, _ = run("queue_submit.py", str(path), "--interval", "0.05", "--wait-running", "--quiet")
        assert code == 0, out
        uuids[name] = out["deployment_uuid"]
    return uuids


def test_a_routes_file_gives_a_route_its_own_autoscaler_and_asks_once_for_all(sim, run, tmp_path, result_validator):
    sim()
    uuids = submit_named(run, tmp_path, "llm-a", "llm-b", "llm-c")
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [
        {"model": "a", "deployment": "llm-a", "autoscale": {"max_replicas": 3, "max_hourly_cost": 50}},
        {"model": "b", "deployment": uuids["llm-b"], "autoscale": False},
        {"prefix": "/c", "deployment": "llm-c", "policy": "cache_aware"}]}), encoding="utf-8")
    code, document, _ = run("serve_gateway.py", "--routes-file", str(path), "--listen", "127.0.0.1:0", "--quiet")
    result_validator.validate(document)
    assert code == 1 and document["error_type"] == "confirmation_required", document
    routes = document["details"]["routes"]
    assert [(r["route"], r["deployment_uuid"], r["max_replicas"]) for r in routes] == [("a", uuids["llm-a"], 3)]
    assert routes[0]["hourly_cost_cap_yuan"] == 50 and "a (" in document["message"]
    # --autoscale turns it on for every route the file does not exclude, each with the flags' bounds.
    code, document, _ = run("serve_gateway.py", "--routes-file", str(path), "--autoscale", "--max-replicas", "2",
                            "--listen", "127.0.0.1:0", "--quiet")
    assert [(r["route"], r["max_replicas"]) for r in document["details"]["routes"]] == [("a", 3), ("/c", 2)]
    # A route whose autoscale bounds cannot hold one replica is named in the refusal.
    path.write_text(json.dumps({"routes": [
        {"model": "a", "deployment": "llm-a"},
        {"model": "b", "deployment": "llm-b", "autoscale": {"max_hourly_cost": 0.01}}]}), encoding="utf-8")
    code, document, _ = run("serve_gateway.py", "--routes-file", str(path), "--listen", "127.0.0.1:0", "--quiet")
    assert code == 1 and document["error_type"] == "usage_error" and document["details"]["route"] == "b", document
    assert document["message"].startswith("路由 b: --max-hourly-cost 0.01")
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"routes": [{"model": "a", "deployment": "no-such-deployment"}]}), encoding="utf-8")
    code, document, _ = run("serve_gateway.py", "--routes-file", str(missing), "--quiet")
    assert document["error_type"] == "not_found" and document["details"]["route"] == "a"


def test_the_script_routes_two_deployments_and_outlives_one_of_them(sim, run, tmp_path):
    import subprocess
    import sys

    from helpers import SCRIPTS
    from helpers.servers import stop

    instance = sim()
    uuids = submit_named(run, tmp_path, "llm-a", "llm-b")
    gateway = subprocess.Popen([sys.executable, str(SCRIPTS / "serve_gateway.py"), "--route", "model-a=llm-a",
                                "--route", f"model-b={uuids['llm-b']}", "--listen", "127.0.0.1:0", "--interval", "0.1",
                                "--drain-seconds", "2", "--quiet"],
                               env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(gateway.stdout.readline() or "{}")
        assert ready.get("status") == "success", ready
        assert {r["model"]: r["deployment_uuid"] for r in ready["routes"]} == {"model-a": uuids["llm-a"], "model-b": uuids["llm-b"]}
        url = ready["url"]

        def ask(model: str) -> requests.Response:
            return requests.post(url + "/v1/chat/completions", json={"model": model, "max_tokens": 2,
                                                                     "messages": [{"role": "user", "content": "hi"}]}, timeout=10)

        deadline = time.monotonic() + 30
        for model, name in (("model-a", "llm-a"), ("model-b", "llm-b")):
            while (answer := ask(model)).status_code != 200:  # the first registry may still be on its way
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.05)
            assert answer.headers["X-Served-By"].startswith(uuids[name]) and answer.json()["model"] == model
        requests.delete(instance.url + "/api/v1/dev/deployment", json={"deployment_uuid": uuids["llm-a"]},
                        headers={"Authorization": instance.token}, timeout=5)
        while (answer := ask("model-a")).status_code != 503:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.05)
        assert answer.json()["error_type"] == "no_replicas" and answer.json()["details"]["route"] == "model-a"
        assert ask("model-b").status_code == 200 and gateway.poll() is None
        requests.delete(instance.url + "/api/v1/dev/deployment", json={"deployment_uuid": uuids["llm-b"]},
                        headers={"Authorization": instance.token}, timeout=5)
        out, err = gateway.communicate(timeout=30)
    finally:
        stop(gateway)
    assert gateway.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped_by"] == "deployment_gone"
    routes = {r["route"]: r for r in summary["routes"]}
    assert routes["model-a"]["ended"] == routes["model-b"]["ended"] == "deployment_gone"
    assert routes["model-b"]["by_status_class"]["2xx"] == 2 and routes["model-a"]["by_status_class"]["2xx"] == 1


def test_each_route_runs_its_own_extensions_and_their_metrics_carry_the_route(loop_thread):
    from prometheus_client.core import GaugeMetricFamily

    from autodl_esd.serving.routing.gateway import GatewayExtension

    class Counting(GatewayExtension):
        name = "autoscaler"

        def __init__(self, desired: int) -> None:
            self.desired, self.route = desired, None

        async def start(self, route) -> None:
            self.route = route

        def status(self) -> dict:
            return {"desired": self.desired}

        def collect(self):
            yield GaugeMetricFamily("gateway_autoscaler_desired_replicas", "Replicas wanted", value=self.desired)

    hits: list = []
    extensions = {"qwen": Counting(3), "bge": Counting(1)}
    gateway = loop_thread.gateway(None, routes=[(name, static(item(name + "-1", loop_thread.upstream(recording(name, hits)))),
                                                 {"model": name}) for name in extensions])
    assert {name: extension.route for name, extension in extensions.items()} == {"qwen": None, "bge": None}
    # Extensions added before start() begin with the gateway; here the route is handed over like it.
    for name, extension in extensions.items():
        loop_thread.run(extension.start(gateway.routes[name]))
        gateway.add_extension(extension, route=name)
    assert {name: e.route.name for name, e in extensions.items()} == {"qwen": "qwen", "bge": "bge"}
    status = {route["route"]: route["extensions"] for route in gateway.status()["routes"]}
    assert status == {"qwen": {"autoscaler": {"desired": 3}}, "bge": {"autoscaler": {"desired": 1}}}
    text = requests.get(gateway.url + "/_gateway/metrics", timeout=5).text
    lines = [line for line in text.splitlines() if line.startswith("gateway_autoscaler_desired_replicas")]
    assert sorted(lines) == ['gateway_autoscaler_desired_replicas{route="bge"} 1.0',
                             'gateway_autoscaler_desired_replicas{route="qwen"} 3.0']
    assert text.count("# TYPE gateway_autoscaler_desired_replicas gauge") == 1


def test_a_detached_gateway_gets_its_routes_back_on_its_command_line():
    from autodl_esd.core import cli
    from helpers import SCRIPTS, load_script

    parser = load_script(SCRIPTS / "serve_gateway.py").build_parser()
    args = parser.parse_args(["--route", "qwen=my-qwen", "--route", "bge=833f1cd5a764fa3", "--route-prefix", "/sd=my-sd",
                              "--policy", "cache_aware", "--balance-factor", "1.5", "--detach"])
    argv = cli.command_line(parser, args, drop=("detach", "job_id"), paths=("config", "registry", "routes_file"))
    again = parser.parse_args(argv)
    assert again.route == ["qwen=my-qwen", "bge=833f1cd5a764fa3"] and again.route_prefix == ["/sd=my-sd"]
    assert again.balance_factor == 1.5 and again.policy == "cache_aware" and not again.detach
    relative = parser.parse_args(["--routes-file", "routes.json"])
    assert cli.command_line(parser, relative, paths=("routes_file",))[-1] == os.path.abspath("routes.json")
