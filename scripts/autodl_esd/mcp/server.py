"""The MCP server: every entry script as a tool, over stdio, with the official `mcp` SDK.

Each call runs the script as a child process (`python <script> <argv>`), never in-process:

- the contract is the script's, byte for byte: its argparse checks, its one JSON document,
  its secret scrubbing, its exit code (the tool result is that document);
- a cancelled call ends the way Ctrl-C ends a script: the child gets SIGINT and prints its
  own `interrupted` document, with the deployment_uuid if a create was sent (the scripts'
  exactly-once reporting works unchanged). In-process, a blocking HTTP wait in a worker
  thread cannot be interrupted at all;
- scripts write to stdout, which here is the MCP channel, and keep process-wide state
  (signal handlers, the secret registry); a child keeps both away from the server.

It costs about 0.2 s of interpreter start-up per call, small next to any API round trip.
Progress lines the script writes on stderr become MCP progress notifications.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from . import catalog
from ..core.deps import SKILL_ROOT
from ..core.errors import AutoDLError, ErrorType
from ..core.output import Progress, register_secret, scrub
from ..core.settings import load_settings

SERVER_NAME = "autodl-elastic-deploy"
SERVER_VERSION = "1.0.0"

# After SIGINT a script prints what it knows and exits at once, except queue_submit stopped
# mid-create: it first lists deployments by name to learn whether the create landed (a few
# HTTP calls of up to AUTODL_HTTP_TIMEOUT, 30 s by default). Killing it sooner would lose
# exactly the deployment_uuid the interrupt exists to report.
INTERRUPT_GRACE_SECONDS = 90.0
# asyncio's readline fails on a longer line; progress lines are short, but a --debug style
# traceback or a big warning must not break the call, so allow far more than any log line.
STDERR_LINE_LIMIT = 1 << 20
# A progress message is one log line; longer ones are cut so a client's UI stays readable.
PROGRESS_MESSAGE_LIMIT = 500
# How many interrupted calls interrupted_calls remembers (a session rarely has more than a few).
INTERRUPTED_CALLS_LIMIT = 50

INTERRUPTED_CALLS_TOOL = "interrupted_calls"
INTERRUPTED_CALLS_DESCRIPTION = (
    "列出本次 MCP 会话中被取消 (或因会话结束而中断) 的工具调用及脚本当时输出的 interrupted 结果。"
    "取消的调用在协议上没有回复, 这里是找回它的 deployment_uuid / may_have_been_created 的地方: "
    "取消过 queue_submit 等改变平台的调用后, 先调用它再决定下一步, 不要直接重新提交。"
    "服务器自身的工具, 没有对应脚本。"
)

ProgressReporter = Callable[[str], Awaitable[None]]


@dataclass
class InterruptedCall:
    tool: str
    arguments: dict[str, Any]
    command: str
    interrupted_at: str
    result: dict[str, Any]


@dataclass
class ToolRunner:
    """Runs tools as child processes; knows the catalog, the children's environment and secrets."""

    tools: dict[str, catalog.Tool]
    env_overrides: dict[str, str] = field(default_factory=dict)
    simulated: bool = False
    log: Progress = field(default_factory=Progress)
    interrupted: list[InterruptedCall] = field(default_factory=list)
    _submitting: set[str] = field(default_factory=set)

    @property
    def tool_count(self) -> int:
        """What tools/list answers: one per script plus interrupted_calls."""
        return len(self.tools) + 1

    # ----- one call ---------------------------------------------------------------------------

    async def call(self, name: str, arguments: Mapping[str, Any] | None, report: ProgressReporter) -> dict[str, Any]:
        """The JSON document of one tool call (success or the error contract), never raises
        for bad input."""
        arguments = dict(arguments or {})
        if name == INTERRUPTED_CALLS_TOOL:
            return self._interrupted_calls(arguments)
        tool = self.tools.get(name)
        if tool is None:
            return _usage_error(f"没有名为 {name!r} 的工具。", "可用的工具见 details.available_tools。",
                                {"available_tools": sorted([*self.tools, INTERRUPTED_CALLS_TOOL])})
        problems = argument_problems(tool.input_schema, arguments)
        if problems:
            return _usage_error(
                f"工具 {name} 的参数有误: {problems[0]['message']}",
                "对照该工具的 inputSchema 修正全部问题后重新调用 (details.errors 列出了每一处)。",
                {"errors": problems},
            )
        confirm = bool(arguments.pop("confirm", False))
        for dest in ("config",):  # a path as a user types it; the script sees no shell to expand ~
            if isinstance(arguments.get(dest), str):
                arguments[dest] = os.path.expanduser(arguments[dest])
        if self.simulated:
            for key, value in tool.policy.sim_defaults.items():
                arguments.setdefault(key, value)
        mode = tool.mode(arguments)
        if mode == catalog.SERVER_PREVIEWS and not confirm:
            return self._preview(tool, arguments, await self._preview_context(tool, arguments))
        guard = self._submission_guard(tool, arguments, confirm)
        if isinstance(guard, dict):
            return guard
        try:
            return await self._run(tool, arguments, confirm, report)
        finally:
            if guard:
                self._submitting.discard(guard)

    def _preview(self, tool: catalog.Tool, arguments: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        """confirmation_required for a script that would act at once: the mutating script is not run."""
        return AutoDLError(
            ErrorType.CONFIRMATION_REQUIRED,
            f"{tool.name} ({tool.policy.title}) 会改变平台状态; confirm 为 false, 什么都没有做。",
            "把 details 中将执行的操作 (would_run) 和它作用的对象告诉用户, 得到明确同意后加 confirm: true 重新调用。",
            {"tool": tool.name, "arguments": arguments, "would_run": tool.command_line(arguments, confirm=True),
             "destructive": tool.policy.destructive, **context},
        ).to_dict()

    async def _preview_context(self, tool: catalog.Tool, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """What a previewed call would act on, read with the read-only list tools."""

        async def quiet(_message: str) -> None:
            return None

        container_uuid = arguments.get("container_uuid")
        if not ({"container_uuid", "deployment_uuid"} & set(tool.input_schema["properties"])):
            return {}  # not about a deployment (notify's --name is a message field)
        if isinstance(container_uuid, str) and "list_containers" in self.tools:
            # A container UUID starts with its deployment's UUID (15 hex digits).
            listed = await self._run(self.tools["list_containers"], {"deployment_uuid": container_uuid[:15], "released": True},
                                     False, quiet)
            found = [c for c in listed.get("items", []) if c.get("container_uuid") == container_uuid]
            if found:
                keys = ("container_uuid", "deployment_uuid", "status", "machine_id", "gpu_name", "data_center")
                return {"container": {key: found[0].get(key) for key in keys}}
            return {"container": None, "lookup": listed.get("message") or "没有找到这个容器"}
        selector = {key: arguments[key] for key in ("deployment_uuid", "name") if isinstance(arguments.get(key), str)}
        if not selector and _config_name(arguments.get("config")):
            selector = {"name": _config_name(arguments.get("config"))}
        if selector and "list_deployments" in self.tools:
            listed = await self._run(self.tools["list_deployments"], selector, False, quiet)
            items = listed.get("items", [])
            if len(items) == 1:
                keys = ("deployment_uuid", "name", "deployment_type", "status", "replica_num", "running_num")
                return {"deployment": {key: items[0].get(key) for key in keys}}
            return {"deployment": None, "lookup": listed.get("message") or f"找到 {len(items)} 个匹配的部署"}
        return {}

    def _submission_guard(self, tool: catalog.Tool, arguments: dict[str, Any], confirm: bool) -> str | dict | None:
        """One real queue_submit per deployment name at a time: a second one while the first
        can still create would break the exactly-once rule (its name check races the first)."""
        if tool.name != "queue_submit" or not confirm or arguments.get("dry_run"):
            return None
        name = _config_name(arguments.get("config"))
        if name is None:
            return None  # the script reports the unreadable config itself
        if name in self._submitting:
            return _usage_error(
                f"名为 {name} 的部署正由另一个 queue_submit 调用提交中, 没有再次提交。",
                "等那个调用结束 (或取消后用 interrupted_calls 查看结果), 再用 list_deployments 按名称核对。",
                {"name": name},
            )
        self._submitting.add(name)
        return name

    async def _run(self, tool: catalog.Tool, arguments: dict[str, Any], confirm: bool,
                   report: ProgressReporter) -> dict[str, Any]:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="autodl-mcp-") as workdir:
            config_paths = {}
            for dest, value in arguments.items():
                if isinstance(value, dict):
                    path = Path(workdir) / f"{dest}.json"
                    # allow-nan: the config reader reports NaN with its path (a validation_error)
                    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
                    config_paths[dest] = str(path)
            argv = tool.argv_for(arguments, confirm=confirm, config_paths=config_paths)
            try:
                child = await asyncio.create_subprocess_exec(
                    sys.executable, str(tool.script), *argv,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    cwd=str(SKILL_ROOT), env=self._child_env(), preexec_fn=_die_with_parent(),
                    limit=STDERR_LINE_LIMIT,
                )
            except OSError as error:  # nothing was started, so nothing can have happened
                return AutoDLError(ErrorType.INTERNAL_ERROR, f"无法启动脚本 {tool.script_relative}: {error}",
                                   "检查服务器进程的资源限制 (进程数、打开文件数) 后重试。",
                                   {"exception": scrub(repr(error))}).to_dict()
            output = _ChildOutput(child, report, tool, tool.command_line(arguments, confirm=confirm), self.log)
            try:
                await output.communicate()
            except BaseException:
                # Cancelled by the client, or the session is ending: stop the child like Ctrl-C.
                import anyio  # the MCP SDK's (requirements-mcp.txt): loaded only by a running server

                with anyio.CancelScope(shield=True):
                    document = await self._interrupt(tool, arguments, confirm, output)
                self.log.log(f"工具 {tool.name} 被取消; 脚本结果: {json.dumps(document, ensure_ascii=False)}")
                raise
        document = output.document()
        self.log.log(f"工具 {tool.name} 结束: {document.get('error_type') or document.get('status')} "
                     f"(退出码 {child.returncode}, {time.monotonic() - started:.1f} 秒)")
        return document

    async def _interrupt(self, tool: catalog.Tool, arguments: dict[str, Any], confirm: bool,
                         output: "_ChildOutput") -> dict[str, Any]:
        child = output.child
        if child.returncode is None:
            child.send_signal(signal.SIGINT)
            import anyio  # the MCP SDK's (requirements-mcp.txt): loaded only by a running server

            with anyio.move_on_after(INTERRUPT_GRACE_SECONDS):
                await output.communicate(quiet=True)
            if child.returncode is None:
                child.kill()
                await child.wait()
        document = output.document(killed=child.returncode == -signal.SIGKILL)
        self.interrupted.append(InterruptedCall(
            tool=tool.name, arguments=arguments, command=tool.command_line(arguments, confirm=confirm),
            interrupted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), result=document,
        ))
        del self.interrupted[:-INTERRUPTED_CALLS_LIMIT]
        return document

    def _child_env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1", **self.env_overrides}

    def _interrupted_calls(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        if arguments:
            return _usage_error(f"{INTERRUPTED_CALLS_TOOL} 不接受参数: {sorted(arguments)}", "不带参数调用。",
                                {"errors": [{"path": key, "message": "未知参数"} for key in sorted(arguments)]})
        items = [vars(call) for call in reversed(self.interrupted)]
        return {"status": "success", "items": items, "count": len(items)}


class _ChildOutput:
    """Collects a child's stdout and turns its stderr lines into progress reports."""

    def __init__(self, child: asyncio.subprocess.Process, report: ProgressReporter, tool: catalog.Tool,
                 command: str, log: Progress) -> None:
        self.child = child
        self.tool = tool
        self.tool_name = tool.name
        self.command = command
        self.log = log
        self.report = report
        self.stdout = bytearray()
        self.stderr_tail: list[str] = []

    async def communicate(self, quiet: bool = False) -> None:
        await asyncio.gather(self._read_stdout(), self._read_stderr(quiet))
        await self.child.wait()

    async def _read_stdout(self) -> None:
        assert self.child.stdout is not None
        while chunk := await self.child.stdout.read(65536):
            self.stdout += chunk

    async def _read_stderr(self, quiet: bool) -> None:
        assert self.child.stderr is not None
        while raw := await self.child.stderr.readline():
            line = scrub(raw.decode("utf-8", "replace")).rstrip()
            if not line:
                continue
            self.stderr_tail = [*self.stderr_tail[-19:], line]
            self.log.log(f"{self.tool_name}: {_progress_text(line)}")
            if not quiet:
                await self.report(_progress_text(line))

    def document(self, killed: bool = False) -> dict[str, Any]:
        text = scrub(self.stdout.decode("utf-8", "replace"))
        try:
            document = json.loads(text)
            if isinstance(document, dict) and document.get("status") in ("success", "error"):
                return document
        except json.JSONDecodeError:
            pass
        if killed:
            return self._killed_document()
        return AutoDLError(
            ErrorType.INTERNAL_ERROR,
            "脚本没有输出 JSON 文档。",
            "这是一个缺陷: 请把 details 反馈给维护者。",
            {"exit_code": self.child.returncode, "stdout": text[-2000:], "stderr_tail": self.stderr_tail},
        ).to_dict()


    def _killed_document(self) -> dict[str, Any]:
        """The result of a child that outlived the interrupt grace: what is known is that nothing is."""
        policy = self.tool.policy
        details: dict[str, Any] = {"signal": "SIGKILL"}
        hint = "这是只读调用, 没有改变任何东西: 可以直接重新调用。"
        if policy.mutating:
            details["took_effect"] = "unknown"
            # The same rule as effects: unknown may still land; only a repeat-safe change may be resent.
            hint = (f"改动可能已经生效, 也可能稍后才生效: 先用列表工具核对 (等同命令: {self.command}); "
                    + ("这个操作重复执行结果相同, 重新调用也无害。" if policy.idempotent else
                       "不要直接重复调用 (每调用一次就改动一次): 过几分钟核对, 确认没有生效再决定。"))
        if self.tool.name == "queue_submit":
            details["may_have_been_created"] = True
            hint = "部署可能已经创建: 用 list_deployments 按配置中的 name 核对, 确认没有再重新提交。"
        return AutoDLError(ErrorType.INTERRUPTED, "操作被取消, 脚本在宽限时间内没有结束, 已被强制终止; 它的结果未知。",
                           hint, details).to_dict()


# "[12:00:01] message" or "[12:00:01+08:00] message" -> "message": the client stamps its own time.
_LOG_STAMP = re.compile(r"^\[\d{2}:\d{2}:\d{2}[^\]]{0,12}\] ")


def _progress_text(line: str) -> str:
    return _LOG_STAMP.sub("", line, count=1)[:PROGRESS_MESSAGE_LIMIT]


def _die_with_parent() -> Callable[[], None] | None:
    """preexec_fn: the child gets SIGTERM if the server dies without cleaning up (Linux),
    so a queue_submit still waiting for stock cannot create a deployment nobody hears of."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: nothing imports after
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return set_death_signal


def _config_name(config: Any) -> str | None:
    if isinstance(config, dict):
        name = config.get("name")
    elif isinstance(config, str):
        path = Path(config) if Path(config).is_absolute() else SKILL_ROOT / config
        try:
            name = json.loads(path.read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            return None
    else:
        return None
    return name if isinstance(name, str) else None


def _usage_error(message: str, hint: str, details: dict[str, Any]) -> dict[str, Any]:
    return AutoDLError(ErrorType.USAGE_ERROR, message, hint, details).to_dict()


# ----- argument validation -------------------------------------------------------------------

_TYPE_NAMES = {"string": "字符串", "integer": "整数", "number": "数字", "boolean": "布尔值 (true/false)",
               "array": "数组", "object": "JSON 对象"}


def argument_problems(schema: dict[str, Any], arguments: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every way the arguments break the tool's input schema, in Chinese, path first."""
    import jsonschema  # heavy, and needed only when a tool is called

    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(part) for part in error.absolute_path) or "(arguments)"
        problems.append({"path": path, "message": _problem_text(error, path, schema)})
    return problems


def _problem_text(error: Any, path: str, schema: dict[str, Any]) -> str:
    kind, expected = error.validator, error.validator_value
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return f"{path} 应为{'或'.join(_TYPE_NAMES.get(n, n) for n in names)}, 收到 {json.dumps(error.instance, ensure_ascii=False)}"
    if kind == "enum":
        return f"{path} 只能是 {', '.join(json.dumps(v, ensure_ascii=False) for v in expected)} 之一, 收到 {json.dumps(error.instance, ensure_ascii=False)}"
    if kind == "minimum":
        return f"{path} 必须不小于 {expected}, 收到 {error.instance}"
    if kind == "exclusiveMinimum":
        return f"{path} 必须大于 {expected}, 收到 {error.instance}"
    if kind == "maximum":
        return f"{path} 必须不大于 {expected}, 收到 {error.instance}"
    if kind == "required":
        return f"缺少必填参数: {error.message.split(chr(39))[1] if chr(39) in error.message else error.message}"
    if kind == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        return f"未知参数 {', '.join(unknown)}; 可用的参数: {', '.join(known)}"
    return f"{path}: {error.message}"


# ----- the MCP wiring -------------------------------------------------------------------------


def build_server(runner: ToolRunner) -> Any:
    # The MCP SDK (requirements-mcp.txt): --list-tools and the tests of the catalog run without it.
    import mcp_types as types
    from mcp.server.lowlevel import Server

    output_schema = catalog.result_schema()

    def to_tool(tool: catalog.Tool) -> Any:
        return types.Tool(
            name=tool.name, title=tool.policy.title, description=tool.description, input_schema=tool.input_schema,
            output_schema=output_schema, annotations=types.ToolAnnotations(**_annotation_fields(tool.annotations)),
        )

    listing = [to_tool(tool) for tool in runner.tools.values()]
    listing.append(types.Tool(
        name=INTERRUPTED_CALLS_TOOL, title="被取消的调用", description=INTERRUPTED_CALLS_DESCRIPTION,
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema=output_schema,
        annotations=types.ToolAnnotations(title="被取消的调用", read_only_hint=True, idempotent_hint=True,
                                          open_world_hint=False),
    ))

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=listing)

    async def call_tool(ctx: Any, params: Any) -> Any:
        sent = 0

        async def report(message: str) -> None:
            nonlocal sent
            sent += 1
            await ctx.session.report_progress(sent, None, message)

        document = await runner.call(params.name, params.arguments, report)
        text = json.dumps(document, ensure_ascii=False, indent=2, allow_nan=False)
        return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=document,
                                    is_error=document.get("status") != "success")

    instructions = (
        "AutoDL 弹性部署的全部操作, 每个工具对应 skill 中的一个脚本, 结果是脚本的同一个 JSON 文档 "
        "(status / error_type 契约见 SKILL.md)。改变平台的工具默认只预览, 得到用户同意后加 confirm: true。"
        "取消的调用没有回复: 用 interrupted_calls 查看它的结果 (可能含 deployment_uuid), 再决定是否重新提交。"
        + (" 当前连接的是本地模拟器, 不花钱。" if runner.simulated else "")
    )
    return Server(SERVER_NAME, version=SERVER_VERSION, instructions=instructions,
                  on_list_tools=list_tools, on_call_tool=call_tool)


def _annotation_fields(hints: Mapping[str, Any]) -> dict[str, Any]:
    names = {"title": "title", "readOnlyHint": "read_only_hint", "destructiveHint": "destructive_hint",
             "idempotentHint": "idempotent_hint", "openWorldHint": "open_world_hint"}
    return {names[key]: value for key, value in hints.items()}


def known_secrets(env_overrides: Mapping[str, str]) -> None:
    """Register the token the children will use, so the server scrubs it too."""
    register_secret(env_overrides.get("AUTODL_TOKEN"))
    try:
        register_secret(load_settings().token)
    except AutoDLError:
        pass  # no token yet: the tools will say token_missing themselves


async def serve_stdio(runner: ToolRunner) -> None:
    """Serve one client on stdin/stdout until it hangs up or the server gets SIGINT/SIGTERM."""
    # The MCP SDK (requirements-mcp.txt), as in build_server.
    import anyio
    from mcp.server.stdio import stdio_server

    server = build_server(runner)
    async with anyio.create_task_group() as group:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    runner.log.log(f"收到 {signal.Signals(signum).name}, 中断进行中的工具调用并退出")
                    group.cancel_scope.cancel()
                    return

        group.start_soon(stop_on_signal)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        group.cancel_scope.cancel()
