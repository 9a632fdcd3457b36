"""The MCP tool catalog: one tool per entry script, built from that script's own parser.

Nothing here imports the MCP SDK, so the catalog can be checked by plain tests and printed
by `mcp_server.py --list-tools` in an environment without it.

A tool's input schema is generated from the script's `build_parser()` at start-up: every
argparse option becomes a property (type, enum, range, default, the Chinese `--help` text as
its description), except the few listed in `ToolPolicy.hidden` with the reason. A flag added
to a script therefore shows up in its tool by itself; `tests/mcp/test_catalog.py` fails when
an entry script has neither a policy here nor a place in `NOT_TOOLS`.

Calling a tool turns the arguments back into the script's argv (`argv_for`), so the tool
and the command line are one operation with one contract.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

from ..core.deps import SKILL_ROOT

# Entry scripts that are not tools, and why. Keep this list short and the reasons true.
NOT_TOOLS: dict[str, str] = {
    "autodl_sim.py": "the local simulator is a long-running HTTP server; start the MCP server with --sim instead",
    "mcp_server.py": "the MCP server itself",
    "serve_gateway.py": "a long-running HTTP gateway in front of a ReplicaSet; run it as its own process",
}

# Options every script has that make no sense as tool arguments.
COMMON_HIDDEN: dict[str, str] = {
    "help": "argparse help",
    "quiet": "the server forwards the script's stderr as progress notifications",
    "debug": "tracebacks go to the script's stderr only; the result is the same JSON either way",
}

SIM_HIDDEN: dict[str, str] = {
    "sim": "run the server with --sim: every tool then talks to one embedded simulator",
    "sim_cluster": "a --sim option of the server",
    "sim_busy": "a --sim option of the server",
}

WATCH_HIDDEN: dict[str, str] = {
    name: "--watch mode runs until stopped; the tool is the one-shot registry (run the script for --watch)"
    for name in ("watch", "interval", "out", "serve", "health_path", "health_timeout", "health_failures",
                 "resync_every", "max_cycles", "duration", "redis", "key_prefix", "lock_ttl", "haproxy_socket",
                 "haproxy_backend", "haproxy_server_options", "detach", "job_id")
}

# How `confirm` applies to one call (see `ToolPolicy.mode`):
READ = "read"  # these arguments cannot change anything: run as given
SCRIPT_PREVIEWS = "script"  # the script itself answers confirmation_required without --yes
SERVER_PREVIEWS = "server"  # the script would act at once: the server answers the preview
DRY_RUN = "dry_run"  # queue_submit: without confirm it runs with --dry-run


@dataclass(frozen=True)
class ToolPolicy:
    """What the parser cannot say about a script: its effect on the platform."""

    title: str
    read_only: bool
    destructive: bool = False
    idempotent: bool = False
    # False only for tools that never reach the platform (offline validation).
    open_world: bool = True
    # arguments -> READ / SCRIPT_PREVIEWS / SERVER_PREVIEWS / DRY_RUN; None for read-only tools.
    mode: Callable[[Mapping[str, Any]], str] | None = None
    hidden: Mapping[str, str] = field(default_factory=dict)
    # Defaults that apply only when the server runs --sim (the scripts' own --sim defaults).
    sim_defaults: Mapping[str, Any] = field(default_factory=dict)
    # Flags the server always passes (and hides; give the reason in `hidden`).
    forced: Mapping[str, Any] = field(default_factory=dict)

    @property
    def mutating(self) -> bool:
        return self.mode is not None


def _always(mode: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda _arguments: mode


def _queue_submit_mode(arguments: Mapping[str, Any]) -> str:
    return READ if arguments.get("dry_run") else DRY_RUN


def _set_replicas_mode(arguments: Mapping[str, Any]) -> str:
    # Zero stops every container, and for that the script has its own preview (it lists them).
    return SCRIPT_PREVIEWS if arguments.get("replica_num") == 0 else SERVER_PREVIEWS


def _blacklist_host_mode(arguments: Mapping[str, Any]) -> str:
    return SCRIPT_PREVIEWS if arguments.get("move_replicas") else SERVER_PREVIEWS


def _find_faulty_hosts_mode(arguments: Mapping[str, Any]) -> str:
    return SCRIPT_PREVIEWS if arguments.get("apply") else READ


def _guard_mode(arguments: Mapping[str, Any]) -> str:
    # --list only reads; creating a guard previews itself without --yes (what will stop, when);
    # --cancel / --resume act at once on a local guard.
    if arguments.get("list"):
        return READ
    return SERVER_PREVIEWS if arguments.get("cancel") or arguments.get("resume") else SCRIPT_PREVIEWS


def _jobs_mode(arguments: Mapping[str, Any]) -> str:
    # --cancel / --resume act at once on local background work; the rest only read records
    # (--status may look a submission's name up on the platform, which is a read).
    return SERVER_PREVIEWS if arguments.get("cancel") or arguments.get("resume") else READ


READ_ONLY = dict(read_only=True, idempotent=True)

POLICIES: dict[str, ToolPolicy] = {
    "validate_config.py": ToolPolicy("校验部署配置 (离线)", **READ_ONLY, open_world=False),
    "queue_submit.py": ToolPolicy(
        "等待库存并提交部署", read_only=False, destructive=False, idempotent=False,
        mode=_queue_submit_mode, hidden=SIM_HIDDEN, sim_defaults={"interval": 0.5},
    ),
    "list_images.py": ToolPolicy("列出镜像", **READ_ONLY),
    "gpu_stock.py": ToolPolicy("查询 GPU 库存", **READ_ONLY),
    "list_deployments.py": ToolPolicy("列出部署", **READ_ONLY),
    "list_containers.py": ToolPolicy("列出部署的容器", **READ_ONLY),
    "container_events.py": ToolPolicy("容器事件 / 等待容器状态", **READ_ONLY),
    "ddp_overview.py": ToolPolicy("多机分布式训练总览", **READ_ONLY),
    "list_blacklist.py": ToolPolicy("列出调度黑名单", **READ_ONLY),
    "discover_services.py": ToolPolicy("服务发现 (一次)", **READ_ONLY, hidden=WATCH_HIDDEN),
    "wallet_balance.py": ToolPolicy("查询账户余额", **READ_ONLY),
    # Read calls only (one with a made-up token, to see what a rejection looks like).
    "doctor.py": ToolPolicy("首次使用检查 (只读)", **READ_ONLY, hidden={"sim": SIM_HIDDEN["sim"]}),
    "cost_report.py": ToolPolicy("已花费用报告", **READ_ONLY),
    # Schedules a stop (or scale-down) of a deployment; one guard per deployment.
    # A guard must outlive the tool call (and the MCP session, whose end interrupts every
    # child): the server always detaches it.
    "guard_deployment.py": ToolPolicy("守护部署 (到时/超支/空闲时停止)", read_only=False, destructive=True,
                                      idempotent=False, mode=_guard_mode, forced={"detach": True},
                                      hidden={"detach": "always on: a guard must outlive the tool call and the session"}),
    # Every call sends one more message and uses the daily quota.
    # Background work (detached submits, guards, gateways, watchers) outlives the tool call.
    "jobs.py": ToolPolicy("后台任务: 查看 / 等待 / 取消 / 继续", read_only=False, destructive=False, idempotent=False,
                          mode=_jobs_mode, hidden={"run": "the background process's own entry: never called by hand"}),
    "notify.py": ToolPolicy("发微信通知", read_only=False, destructive=False, idempotent=False,
                            mode=_always(SERVER_PREVIEWS)),
    # Without --out it only returns the config text (the `config` field): nothing is written.
    "haproxy_config.py": ToolPolicy("生成 haproxy.cfg", **READ_ONLY, hidden={
        "out": "the tool returns the config in the result's `config` field; writing files is for the script",
    }),
    # Repeating a scale with the same N is harmless, but a blind retry after someone else
    # scaled undoes their change: not idempotent-safe.
    "set_replicas.py": ToolPolicy("设置副本数", read_only=False, destructive=True, idempotent=False,
                                  mode=_set_replicas_mode),
    # A ReplicaSet replaces a stopped container; with --decrease-one-replica-num every call
    # takes one more replica away.
    "stop_container.py": ToolPolicy("停止一个容器", read_only=False, destructive=True, idempotent=False,
                                    mode=_always(SERVER_PREVIEWS)),
    # A second stop of a stopped deployment changes nothing (changed: false).
    "stop_deployment.py": ToolPolicy("停止部署", read_only=False, destructive=True, idempotent=True,
                                     mode=_always(SCRIPT_PREVIEWS)),
    # A second delete finds nothing and says the first took effect.
    "delete_deployment.py": ToolPolicy("删除部署", read_only=False, destructive=True, idempotent=True,
                                       mode=_always(SCRIPT_PREVIEWS)),
    # Adds an entry (scheduling avoids the host), at once; every call adds another. With
    # --move-replicas it also stops the deployment's containers there (its own preview).
    "blacklist_host.py": ToolPolicy("把主机加入调度黑名单", read_only=False, destructive=True, idempotent=False,
                                    mode=_blacklist_host_mode),
    "find_faulty_hosts.py": ToolPolicy("找出故障主机 (可拉黑)", read_only=False, destructive=False, idempotent=False,
                                       mode=_find_faulty_hosts_mode),
}

CONFIRM_DESCRIPTION = (
    "确认执行。默认 false: 不做任何改变平台的调用, 返回 confirmation_required 说明会发生什么 "
    "(queue_submit 则是 dry run); 把说明告诉用户并得到明确同意后, 以 true 重新调用。"
)
CONFIG_OBJECT_NOTE = "。也可以直接传配置 JSON 对象 (服务器把它写入临时文件再交给脚本)"
RELATIVE_PATH_NOTE = "; 文件的相对路径相对于 skill 根目录。"


def entry_scripts() -> dict[str, Path]:
    """Every entry script of the bundle (a file defining `build_parser`), by file name."""
    candidates = [SKILL_ROOT / "queue_submit.py", *sorted((SKILL_ROOT / "scripts").glob("*.py"))]
    return {path.name: path for path in candidates
            if path.is_file() and "def build_parser" in path.read_text(encoding="utf-8")}


def load_script(path: Path) -> ModuleType:
    """Import an entry script as a module (scripts are not a package); nothing runs at import."""
    spec = importlib.util.spec_from_file_location(f"autodl_tool_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(module)
    return module


@dataclass
class Option:
    """One argparse action seen as a tool argument."""

    dest: str
    action: argparse.Action

    @property
    def positional(self) -> bool:
        return not self.action.option_strings

    @property
    def flag(self) -> str:
        longs = [s for s in self.action.option_strings if s.startswith("--")]
        return (longs or self.action.option_strings)[0]

    @property
    def is_switch(self) -> bool:
        return isinstance(self.action, argparse._StoreTrueAction)

    @property
    def repeated(self) -> bool:
        return isinstance(self.action, argparse._AppendAction)


class UnsupportedArgument(Exception):
    """A parser option whose type the catalog cannot describe (give its type a json_schema)."""


def _value_schema(action: argparse.Action) -> dict[str, Any]:
    parse = action.type
    if parse is None or parse is str:
        schema: dict[str, Any] = {"type": "string"}
    elif parse is int:
        schema = {"type": "integer"}
    elif parse is float:
        schema = {"type": "number"}
    elif hasattr(parse, "json_schema"):
        schema = dict(parse.json_schema)
    else:
        # A script's own parser (e.g. an ISO time): the text goes to argparse as on the
        # command line, which checks it and answers usage_error. cli's shared types carry a
        # precise schema instead (cli._described_as); the catalog test insists on that.
        schema = {"type": "string"}
    if action.choices is not None:
        schema["enum"] = list(action.choices)
    return schema


def _describe(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": ""}
    return text


@dataclass
class Tool:
    """A script seen as an MCP tool: name, schema, annotations, and how to call it."""

    name: str
    script: Path
    policy: ToolPolicy
    description: str
    options: list[Option]
    forced_options: list[Option]
    exclusive_groups: list[list[str]]
    has_yes: bool
    input_schema: dict[str, Any]

    @property
    def annotations(self) -> dict[str, Any]:
        """MCP ToolAnnotations, by their wire names."""
        hints: dict[str, Any] = {"title": self.policy.title, "readOnlyHint": self.policy.read_only,
                                 "openWorldHint": self.policy.open_world}
        if not self.policy.read_only:  # the spec: meaningful only for tools that change things
            hints["destructiveHint"] = self.policy.destructive
            hints["idempotentHint"] = self.policy.idempotent
        else:
            hints["idempotentHint"] = True
        return hints

    @property
    def script_relative(self) -> str:
        return self.script.relative_to(SKILL_ROOT).as_posix()

    def mode(self, arguments: Mapping[str, Any]) -> str:
        return self.policy.mode(arguments) if self.policy.mode else READ

    def argv_for(self, arguments: Mapping[str, Any], *, confirm: bool, config_paths: Mapping[str, str] = {}) -> list[str]:
        """The script's command-line arguments for validated tool arguments.

        `config_paths` maps an argument given as an inline JSON object to the file it was
        written to. Options go as `--flag=value` so a value starting with '-' stays a value.
        """
        argv: list[str] = []
        positionals: list[str] = []
        arguments = {**arguments, **self.policy.forced}
        for option in [*self.options, *self.forced_options]:
            if option.dest not in arguments or arguments[option.dest] is None:
                continue
            value = config_paths.get(option.dest, arguments[option.dest])
            if option.positional:
                positionals.append(str(value))
            elif option.is_switch:
                if value:
                    argv.append(option.flag)
            elif option.repeated:
                argv += [f"{option.flag}={_text(item)}" for item in value]
            else:
                argv.append(f"{option.flag}={_text(value)}")
        mode = self.mode(arguments)
        if mode == DRY_RUN and not confirm:
            argv.append("--dry-run")
        # --yes only where the script asks for it; elsewhere it acts without (and may refuse it).
        if confirm and self.has_yes and mode == SCRIPT_PREVIEWS:
            argv.append("--yes")
        if positionals:
            argv += ["--", *positionals]
        return argv

    def command_line(self, arguments: Mapping[str, Any], *, confirm: bool) -> str:
        """The equivalent shell command, for previews and docs (inline configs shown as FILE)."""
        placeholders = {dest: "CONFIG.json" for dest, value in arguments.items() if isinstance(value, dict)}
        argv = self.argv_for(arguments, confirm=confirm, config_paths=placeholders)
        return shlex.join(["python3", self.script_relative, *argv])


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_tool(name: str, script: Path, policy: ToolPolicy) -> Tool:
    module = load_script(script)
    parser: argparse.ArgumentParser = module.build_parser()
    hidden = {**COMMON_HIDDEN, **policy.hidden}
    options: list[Option] = []
    forced_options: list[Option] = []
    properties: dict[str, Any] = {}
    required: list[str] = []
    has_yes = False
    for action in parser._actions:
        if action.dest == "yes" and action.option_strings:
            has_yes = True
            continue
        if action.dest in policy.forced:
            forced_options.append(Option(action.dest, action))
            continue
        if action.dest in hidden or action.help == argparse.SUPPRESS:
            continue
        option = Option(action.dest, action)
        if action.nargs == 0 and not option.is_switch:
            raise UnsupportedArgument(f"{name}: {option.flag} ({type(action).__name__}) has no tool mapping yet")
        description = _describe(action)
        if option.is_switch:
            schema: dict[str, Any] = {"type": "boolean", "default": False}
        elif option.repeated:
            schema = {"type": "array", "items": _value_schema(action)}
        else:
            schema = _value_schema(action)
            if action.default is not None and action.default is not argparse.SUPPRESS:
                schema["default"] = action.default
        if action.dest == "config":
            # An agent without a shell has no file to point at: let it pass the config itself.
            schema = {"type": ["string", "object"], **{k: v for k, v in schema.items() if k != "type"}}
            description += CONFIG_OBJECT_NOTE + RELATIVE_PATH_NOTE
        if not option.positional and option.flag not in description:
            description = f"{description} (命令行 {option.flag})".strip()
        schema["description"] = description
        properties[action.dest] = schema
        options.append(option)
        if option.positional or action.required:
            required.append(action.dest)
    if policy.mutating:
        properties["confirm"] = {"type": "boolean", "default": False, "description": CONFIRM_DESCRIPTION}
    exclusive_groups = []
    for group in parser._mutually_exclusive_groups:
        members = [a.dest for a in group._group_actions if a.dest in properties]
        if len(members) > 1:
            exclusive_groups.append(members)
    description = parser.description or ""
    for members in exclusive_groups:
        group_required = any(g.required for g in parser._mutually_exclusive_groups
                             if {a.dest for a in g._group_actions} >= set(members))
        description += f"\n参数 {' / '.join(members)} {'必须且只能给一个' if group_required else '最多给一个'}。"
    if policy.mutating:
        description += ("\n会改变平台状态: confirm 默认 false, 只返回预览 (queue_submit 为 dry run), 不做改变; "
                        "说明中的 --yes 即 confirm: true。")
    description += f"\n等同于命令 python3 {script.relative_to(SKILL_ROOT).as_posix()}; 结果是脚本输出的同一个 JSON 文档。"
    input_schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    missing = set(policy.forced) - {option.dest for option in forced_options}
    if missing:
        raise UnsupportedArgument(f"{name}: forced flags the parser lacks: {sorted(missing)}")
    return Tool(name, script, policy, description, options, forced_options, exclusive_groups, has_yes, input_schema)


def tool_name(script_name: str) -> str:
    return script_name.removesuffix(".py")


def build_catalog() -> dict[str, Tool]:
    """Every tool, by name, in script order; scripts without a policy are left out (see tests)."""
    tools: dict[str, Tool] = {}
    for script_name, path in entry_scripts().items():
        policy = POLICIES.get(script_name)
        if policy is None:
            continue
        tools[tool_name(script_name)] = build_tool(tool_name(script_name), path, policy)
    return tools


def uncovered_scripts() -> list[str]:
    """Entry scripts that are neither a tool nor in NOT_TOOLS (what the catalog test reports)."""
    return [name for name in entry_scripts() if name not in POLICIES and name not in NOT_TOOLS]


def result_schema() -> dict[str, Any]:
    """The scripts' output envelope, usable as an MCP outputSchema (object at the root)."""
    schema = json.loads((SKILL_ROOT / "schemas" / "result.schema.json").read_text(encoding="utf-8"))
    schema.pop("$id", None)
    return {"type": "object", **schema}


def markdown_table(tools: Mapping[str, Tool]) -> str:
    """The tool table shown in references/mcp.md (a doc test keeps it equal)."""
    lines = ["| 工具 | 脚本 | 只读 | 破坏性 | 需 confirm |", "|---|---|---|---|---|"]
    for tool in tools.values():
        yes_no = lambda flag: "是" if flag else "否"  # noqa: E731
        lines.append(
            f"| `{tool.name}` | `{tool.script_relative}` | {yes_no(tool.policy.read_only)} | "
            f"{yes_no(tool.policy.destructive)} | {yes_no(tool.policy.mutating)} |"
        )
    return "\n".join(lines)
