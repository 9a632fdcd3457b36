"""The MCP server end to end: the SDK's own client over stdio, a real handshake.

One server process serves the whole module (start-up is about a second, mostly importing the
SDK); it talks to a simulator started here, so the tests can read the simulator's request log
and stop it afterwards. Each tool call runs the script as a child process, as in production.
"""

from __future__ import annotations

import copy
import json
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from helpers import ROOT, SIM_SPEED

mcp = pytest.importorskip("mcp", reason="pip install -r requirements-mcp.txt")
simulator = pytest.importorskip("simulator")

from anyio.from_thread import start_blocking_portal  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

from autodl_esd.mcp import catalog

TOKEN = "mcp-test-token-5f0c9e1d2b7a"
SERVICE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
RESULT_SCHEMA = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "result.schema.json").read_text(encoding="utf-8")))
MUTATING_POSTS = {"/api/v1/dev/deployment", "/api/v1/dev/deployment/blacklist", "/api/v1/wechat/message/send"}
FAST = {"interval": 0.05}


def mutating_requests(log):
    return [(method, path) for method, path, _ in log
            if method in ("PUT", "DELETE") or (method == "POST" and path in MUTATING_POSTS)]


class Session:
    """A connected MCP client, driven from synchronous tests through a blocking portal."""

    def __init__(self, portal, client, stderr_path: Path) -> None:
        self.portal, self.client, self.stderr_path = portal, client, stderr_path
        self.seen: list[str] = []  # every result text and progress message, for the secret check
        self.called: set[str] = set()
        self.previewed: set[str] = set()  # mutating tools called without confirm

    def call(self, name, arguments=None, progress=None):
        return self._checked(self.portal.call(lambda: self._send(name, arguments, progress)))

    def call_many(self, calls):
        """Several calls in flight at once on the one session, as an agent may send them."""
        futures = [self.portal.start_task_soon(lambda c=c: self._send(*c, None)) for c in calls]
        return [self._checked(future.result(timeout=120)) for future in futures]

    async def _send(self, name, arguments, progress):
        async def on_progress(value, total, message):
            self.seen.append(message or "")
            if progress:
                progress(message or "")

        self.called.add(name)
        if not (arguments or {}).get("confirm"):
            self.previewed.add(name)
        return await self.client.call_tool(name, arguments, progress_callback=on_progress)

    def _checked(self, result):
        text = result.content[0].text
        self.seen.append(text)
        document = result.structured_content
        assert json.loads(text) == document
        RESULT_SCHEMA.validate(document)
        assert result.is_error is (document["status"] == "error")
        return document

    def ok(self, name, arguments=None):
        document = self.call(name, arguments)
        assert document["status"] == "success", document
        return document

    def start(self, name, arguments, progress):
        async def on_progress(value, total, message):
            self.seen.append(message or "")
            progress(message or "")

        return self.portal.start_task_soon(lambda: self.client.call_tool(name, arguments, progress_callback=on_progress))


def start_session(portal, args, env, tmp_path, mode="auto"):
    stderr_path = tmp_path / "server.stderr"
    errlog = stderr_path.open("w", encoding="utf-8")
    params = mcp.StdioServerParameters(command=sys.executable, args=[str(ROOT / "scripts" / "mcp_server.py"), *args],
                                       env=env, cwd=str(tmp_path))
    client_cm = portal.wrap_async_context_manager(mcp.Client(stdio_client(params, errlog=errlog), mode=mode))
    return client_cm, errlog, stderr_path


@pytest.fixture(scope="module")
def platform():
    instance = simulator.Simulator(token=TOKEN, speed=SIM_SPEED, seed=3).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def session(platform, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mcp")
    # The SDK starts the server with a bare environment (HOME, PATH, ...), not this process's:
    # without XDG_STATE_HOME its scripts would keep their records in the skill's own .state/,
    # a folder every test run (and every xdist worker) would share.
    env = {"AUTODL_HOST": platform.url, "AUTODL_TOKEN": TOKEN, "XDG_STATE_HOME": str(tmp_path / "state")}
    with start_blocking_portal() as portal:
        client_cm, errlog, stderr_path = start_session(portal, [], env, tmp_path)
        with client_cm as client:
            assert client.protocol_version >= "2026"
            yield Session(portal, client, stderr_path)
        errlog.close()


@pytest.fixture(scope="module")
def service(session, platform):
    """A running two-replica ReplicaSet created through the queue_submit tool."""
    config = {**copy.deepcopy(SERVICE), "name": "mcp-service"}
    document = session.ok("queue_submit", {"config": config, "confirm": True, "wait_running": True, **FAST})
    assert len(document["containers"]) == 2
    return document


def test_handshake_lists_one_tool_per_script_with_valid_schemas(session):
    tools = {tool.name: tool for tool in session.portal.call(session.client.list_tools).tools}
    assert set(tools) == {*catalog.build_catalog(), "interrupted_calls"}
    for name, tool in tools.items():
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        hints = tool.annotations
        assert hints.read_only_hint is not None and hints.idempotent_hint is not None and hints.open_world_hint is not None
        if not hints.read_only_hint:
            assert hints.destructive_hint is not None
            assert "confirm" in tool.input_schema["properties"], name
    assert tools["stop_deployment"].annotations.destructive_hint is True
    assert tools["list_images"].annotations.read_only_hint is True
    assert tools["set_replicas"].annotations.idempotent_hint is False
    assert tools["queue_submit"].input_schema["properties"]["interval"]["minimum"] == 0.01  # cli.MIN_DURATION_SECONDS
    assert tools["list_containers"].input_schema["properties"]["status"]["items"]["enum"]
    # The start-up line counts what tools/list answers and names where the tools connect.
    started = session.stderr_path.read_text(encoding="utf-8")
    assert f"{len(tools)} 个工具; 连到 http://127.0.0.1:" in started, started


def test_read_tools_answer_from_the_simulator(session, service):
    name = "mcp-service"
    (images, stock, by_path, inline, deployments, containers, events, followed, ddp, services, faulty, blacklist,
     wallet, doctor, cost, haproxy) = session.call_many([
        ("list_images", {}),
        ("gpu_stock", {}),
        ("validate_config", {"config": "examples/replicaset-service.json"}),
        ("validate_config", {"config": SERVICE}),
        ("list_deployments", {"name": name}),
        ("list_containers", {"name": name, "status": ["running"]}),
        ("container_events", {"deployment_uuid": service["deployment_uuid"]}),
        ("container_events", {"name": name, "follow": True, "count": 2, "interval": 0.05, "timeout": 10}),
        ("ddp_overview", {"name": name}),
        ("discover_services", {"name": name}),
        ("find_faulty_hosts", {"name": name}),
        ("list_blacklist", {}),
        ("wallet_balance", {}),
        ("doctor", {}),
        ("cost_report", {"name": name}),
        ("haproxy_config", {"name": name}),
    ])
    ok = [images, stock, by_path, inline, deployments, containers, events, followed, services, faulty, blacklist,
          wallet, doctor, cost, haproxy]
    assert all(document["status"] == "success" for document in ok), [d for d in ok if d["status"] != "success"]
    assert images["count"] >= 1 and "RTX 4090" in stock["stock"]
    assert by_path["valid"] is True and inline["valid"] is True
    assert [d["name"] for d in deployments["items"]] == [name]
    assert containers["count"] == 2 and events["count"] >= 2 and followed["reached"] is True
    assert ddp["status"] in ("success", "error")  # a ReplicaSet has no DDP packages: either answer is the contract
    assert len(services["services"]) == 2 and faulty["count"] == 0
    assert wallet["balance_yuan"] is not None and doctor["ready"] is True
    assert "backend replicas" in haproxy["config"]


def test_passwords_stay_redacted_unless_show_password(session, service):
    hidden = session.ok("list_containers", {"name": "mcp-service"})["items"][0]
    shown = session.ok("list_containers", {"name": "mcp-service", "show_password": True})["items"][0]
    assert hidden["info"]["root_password"] == "***"
    assert shown["info"]["root_password"] not in ("***", "")


def test_mutating_tools_without_confirm_make_no_mutating_request(session, platform, service):
    before = len(platform.request_log())
    uuid = service["deployment_uuid"]
    container = service["containers"][0]["container_uuid"]
    previews = [
        ("stop_deployment", {"deployment_uuid": uuid}),
        ("delete_deployment", {"deployment_uuid": uuid}),
        ("set_replicas", {"deployment_uuid": uuid, "replica_num": 3}),
        ("set_replicas", {"deployment_uuid": uuid, "replica_num": 0}),
        ("stop_container", {"container_uuid": container, "decrease_one_replica_num": True}),
        ("blacklist_host", {"container_uuid": container}),
        ("guard_deployment", {"deployment_uuid": uuid, "max_runtime": 6}),
        ("notify", {"title": "测试", "content": "不会发出", "name": "mcp-service"}),
        ("jobs", {"cancel": "s-20990101-000000-abcdef"}),
    ]
    others = [
        ("queue_submit", {"config": {**SERVICE, "name": "never-created"}, **FAST}),
        ("find_faulty_hosts", {"name": "mcp-service", "apply": True}),
    ]
    *answers, dry, applied = session.call_many([*previews, *others])
    for (name, _), document in zip(previews, answers):
        assert document["error_type"] == "confirmation_required", (name, document)
    assert dry["status"] == "success" and dry["dry_run"] is True
    assert applied["status"] == "success" and applied["applied"] == []  # nothing faulty: nothing to apply
    assert mutating_requests(platform.request_log()[before:]) == []
    assert [d["name"] for d in platform.deployments()].count("never-created") == 0
    stop, _, scale, _, stop_one, *_ = answers
    # The script's own preview names what would stop; the server's names the command and,
    # read first, what it would act on.
    assert stop["details"]["live_container_count"] == 2
    assert scale["details"]["would_run"].endswith("--replica-num=3")
    assert scale["details"]["deployment"]["replica_num"] == 2
    assert stop_one["details"]["container"]["status"] == "running"


def test_confirm_true_acts_and_reads_back(session, platform, service):
    before = len(platform.request_log())
    document = session.ok("set_replicas", {"deployment_uuid": service["deployment_uuid"], "replica_num": 3, "confirm": True})
    assert document["replica_num"] == 3 and document["verified"] is True
    assert mutating_requests(platform.request_log()[before:]) == [("PUT", "/api/v1/dev/deployment/replica_num")]
    # A script that acts without --yes (and refuses a stray one) gets none.
    container = service["containers"][0]["container_uuid"]
    blacklisted = session.ok("blacklist_host", {"container_uuid": container, "confirm": True})
    assert blacklisted["machine_id"] == service["containers"][0]["machine_id"]
    moving = session.call("blacklist_host", {"container_uuid": container, "move_replicas": True})
    assert moving["error_type"] == "confirmation_required"


def test_a_job_followed_to_the_end_reports_progress(session):
    job = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))
    config = {**job, "name": "mcp-job", "replica_num": 2, "parallelism_num": 2,
              "container_template": {**job["container_template"], "cmd": "sleep 20"}}
    messages = []
    document = session.call("queue_submit", {"config": config, "confirm": True, "wait_finished": True,
                                             "finish_timeout": 60, **FAST}, progress=messages.append)
    assert document["status"] == "success", document
    assert document["finish"]["finished"] is True and document["finish"]["counts"]["finished_num"] == 2
    assert messages  # the wait was reported as it went


def test_malformed_arguments_give_usage_error_not_a_protocol_crash(session):
    cases = [
        ("list_images", {"page_index": "two"}),
        ("list_images", {"page_index": 0}),
        ("list_images", {"no_such_flag": True}),
        ("set_replicas", {"name": "x"}),
        ("list_containers", {"name": "x", "status": ["sleeping"]}),
        ("queue_submit", {"config": "examples/replicaset-service.json", "interval": -1}),
        ("list_containers", {"name": "x", "deployment_uuid": "y"}),  # mutually exclusive: argparse says so
        ("no_such_tool", {}),
    ]
    for name, arguments in cases:
        document = session.call(name, arguments)
        assert document["error_type"] == "usage_error", (name, arguments, document)
        assert document["message"]
    missing = session.call("set_replicas", {"name": "x"})
    assert "replica_num" in missing["message"]
    assert session.ok("gpu_stock")  # the connection is still fine


def test_cancelled_stock_wait_ends_like_sigint(session, platform):
    platform.occupy("RTX 4090", 10_000)
    platform.occupy("RTX A5000", 10_000)
    waiting = threading.Event()
    try:
        config = {**SERVICE, "name": "mcp-waits-for-stock"}
        future = session.start("queue_submit", {"config": config, "confirm": True, **FAST},
                               lambda message: "等待" in message and waiting.set())
        assert waiting.wait(20), "no progress notification while waiting for stock"
        second = session.call("queue_submit", {"config": config, "confirm": True, **FAST})
        assert second["error_type"] == "usage_error" and "另一个 queue_submit" in second["message"]
        future.cancel()
        interrupted = wait_for_interrupted(session, "mcp-waits-for-stock")
    finally:
        platform.release_occupied()
    assert interrupted["result"]["error_type"] == "interrupted"
    assert "deployment_uuid" not in interrupted["result"]["details"]
    assert "mcp-waits-for-stock" not in [d["name"] for d in platform.deployments()]


def test_cancelled_wait_for_containers_reports_the_deployment_uuid(session, platform):
    # More replicas than the cluster has cards: the deployment is created, the wait never ends.
    config = {**SERVICE, "name": "mcp-too-big", "replica_num": 60}
    waiting = threading.Event()
    future = session.start("queue_submit", {"config": config, "confirm": True, "wait_running": True, **FAST},
                           lambda message: "等待容器运行" in message and waiting.set())
    assert waiting.wait(20), "no progress notification while waiting for containers"
    future.cancel()
    interrupted = wait_for_interrupted(session, "mcp-too-big")
    created = [d["uuid"] for d in platform.deployments() if d["name"] == "mcp-too-big"]
    assert interrupted["result"]["error_type"] == "interrupted"
    assert [interrupted["result"]["details"]["deployment_uuid"]] == created
    # Clean up with confirm: true, which the scripts see as --yes.
    stopped = session.ok("stop_deployment", {"deployment_uuid": created[0], "confirm": True})
    assert stopped["changed"] is True
    assert session.ok("delete_deployment", {"deployment_uuid": created[0], "confirm": True})["deleted"] is True
    assert "mcp-too-big" not in [d["name"] for d in platform.deployments()]


def wait_for_interrupted(session, deployment_name, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in session.ok("interrupted_calls")["items"]:
            if deployment_name in json.dumps(item["arguments"], ensure_ascii=False):
                return item
        time.sleep(0.05)
    pytest.fail(f"no interrupted call recorded for {deployment_name}")


def test_every_tool_was_exercised_here(session):
    """A new script's tool needs a call above: read tools in the read test, mutating ones in the
    no-confirm test (and its preview must make no mutating request)."""
    tools = catalog.build_catalog()
    read_only = {name for name, tool in tools.items() if not tool.policy.mutating}
    mutating = set(tools) - read_only
    assert read_only <= session.called, f"read tools never called over MCP: {sorted(read_only - session.called)}"
    assert mutating <= session.previewed, f"mutating tools never called without confirm: {sorted(mutating - session.previewed)}"


def test_the_token_never_appears_in_results_progress_or_logs(session):
    # Runs after the others in this module: everything they saw is in session.seen.
    assert session.seen
    assert not [text for text in session.seen if TOKEN in text]
    assert TOKEN not in session.stderr_path.read_text(encoding="utf-8")


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode("utf-8", "replace"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def test_sim_mode_needs_no_token_and_a_closed_session_leaves_no_child(tmp_path, monkeypatch):
    """--sim: one embedded simulator behind every tool, no token in the environment. A client
    that hangs up mid-call interrupts the script (no orphan left waiting to create)."""
    import mcp.client.stdio

    # The SDK's client gives the server 2 s after closing its stdin, then SIGTERMs and, 2 s
    # later, SIGKILLs the group. On a loaded machine the server's own clean exit (SIGINT to
    # the script, its interrupted document, the embedded simulator's stop) can take longer;
    # this test is about that clean exit, so its client waits for it.
    monkeypatch.setattr(mcp.client.stdio, "PROCESS_TERMINATION_TIMEOUT", 60.0)
    too_big = tmp_path / "orphan-check-too-big.json"
    too_big.write_text(json.dumps({**SERVICE, "name": "too-big", "replica_num": 60}), encoding="utf-8")
    waiting = threading.Event()
    with start_blocking_portal() as portal:
        # The initialize handshake of 2025-era clients (desktop apps today); the module's
        # other session negotiates the current protocol.
        client_cm, errlog, stderr_path = start_session(portal, ["--sim"], {"XDG_STATE_HOME": str(tmp_path / "state")}, tmp_path,
                                                       mode="legacy")  # the records of its runs: this test's own
        with client_cm as client:
            assert client.protocol_version < "2026"
            sim_session = Session(portal, client, stderr_path)
            assert "RTX 4090" in sim_session.ok("gpu_stock")["stock"]
            created = sim_session.ok("queue_submit", {"config": "examples/replicaset-service.json", "confirm": True})
            listed = sim_session.ok("list_deployments")["items"]
            assert [d["uuid"] for d in listed] == [created["deployment_uuid"]]
            future = sim_session.start("queue_submit", {"config": str(too_big), "confirm": True, "wait_running": True},
                                       lambda message: "等待容器运行" in message and waiting.set())
            assert waiting.wait(20)
            assert processes_mentioning(too_big.name)
        errlog.close()
    assert future.cancelled() or future.exception() is not None
    # Gone, not just going: a child still in its last moments of exiting shows in /proc on a
    # busy machine, while an orphan waiting for 60 replicas would stay for good.
    deadline = time.monotonic() + 10
    while processes_mentioning(too_big.name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(too_big.name) == []
    assert "工具 queue_submit 被取消" in stderr_path.read_text(encoding="utf-8")
