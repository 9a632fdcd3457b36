#!/usr/bin/env python3
"""MCP server (stdio): every script of the bundle as a typed tool, with the same JSON results."""

from __future__ import annotations

import sys

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError
from autodl_esd.core.output import Progress, emit_error

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/mcp_server.py --sim          # 先试这个: 所有工具连到内置模拟器, 不需要令牌, 不花钱",
    "python3 scripts/mcp_server.py                # 真实平台: 令牌取自环境变量或 .env 中的 AUTODL_TOKEN",
    "python3 scripts/mcp_server.py --list-tools   # 只打印工具清单 (JSON) 后退出",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "mcp_server.py",
        "MCP 服务器 (stdio 传输): 把本 skill 的每个脚本作为一个带类型的工具提供给没有 shell 的智能体 "
        "(桌面聊天客户端、IDE 助手)。工具参数由脚本自己的命令行定义生成, 结果就是脚本输出的同一个 JSON 文档; "
        "改变平台的工具默认只预览 (confirm: true 才执行); 长时间等待发送进度通知, 取消调用等同于 Ctrl-C。"
        "stdout 是 MCP 协议通道, 日志在 stderr。需要 pip install -r requirements-mcp.txt。",
        EXAMPLES,
    )
    parser.add_argument("--list-tools", action="store_true", help="打印工具清单 (名称、脚本、注解、参数) 为一个 JSON 文档后退出, 不启动服务器")
    sim = parser.add_argument_group("本地模拟器 (不需要令牌, 不调用真实平台)")
    sim.add_argument("--sim", action="store_true", help="启动内置的本地 AutoDL 模拟器, 所有工具都连到它 (服务器退出时停止)")
    sim.add_argument("--sim-cluster", metavar="FILE", help="模拟器集群文件 (默认 scripts/simulator/default_cluster.json)")
    return parser


def list_tools(args, ctx: cli.Context) -> dict:
    from autodl_esd.mcp import catalog

    items = [
        {"name": tool.name, "script": tool.script_relative, "annotations": tool.annotations,
         "confirm": tool.policy.mutating, "input_schema": tool.input_schema}
        for tool in catalog.build_catalog().values()
    ]
    return cli.list_result(items, not_tools=catalog.NOT_TOOLS)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help
        return int(exit_request.code or 0)
    except cli.UsageError as error:  # before serving, stdout is still ours: the usual JSON error
        return emit_error(error)
    if args.list_tools:
        return cli.run(parser, list_tools, argv)
    if args.sim_cluster and not args.sim:
        return emit_error(cli.UsageError("--sim-cluster 只能和 --sim 一起使用。"))
    # Serving never ends through cli.run: stdout is the MCP channel, not one JSON document.
    return _serve(args)


def _serve(args) -> int:
    from autodl_esd.core.deps import require
    from autodl_esd.mcp import catalog, server

    log = Progress(quiet=args.quiet)
    try:
        require("mcp")  # the MCP SDK (requirements-mcp.txt), with anyio: heavy, and only for serving
        anyio = require("anyio")
    except AutoDLError as error:
        # The client sees a server that would not start; the reason is on both streams. The
        # install command suits this interpreter (PEP 668 aware): the one the client runs.
        log.log(error.message + " " + error.hint)
        return emit_error(error)
    try:
        runner = server.ToolRunner(tools=catalog.build_catalog(), log=log)
        if args.sim:
            return _serve_simulated(args, runner)
        server.known_secrets({})
        log.log(f"MCP 服务器已启动 (stdio), {runner.tool_count} 个工具; 连到 {_platform_host()} (AUTODL_HOST), 令牌取自环境变量或 .env")
        anyio.run(server.serve_stdio, runner)
    except AutoDLError as error:
        log.log(error.message)
        return emit_error(error)
    return 0


def _platform_host() -> str:
    """Where the tools will connect, for the start-up line; a token problem is each tool's to report."""
    from autodl_esd.core.settings import load_settings

    try:
        return load_settings().host
    except AutoDLError:
        return "AUTODL_HOST 或默认平台"


def _serve_simulated(args, runner) -> int:
    import anyio  # the MCP SDK's, checked by _serve

    from autodl_esd.core.sandbox import simulated_platform
    from autodl_esd.mcp import server

    with simulated_platform(runner.log, cluster=args.sim_cluster) as settings:
        runner.env_overrides = {"AUTODL_HOST": settings.host, "AUTODL_TOKEN": settings.token}
        runner.simulated = True
        server.known_secrets(runner.env_overrides)
        runner.log.log(f"MCP 服务器已启动 (stdio), {runner.tool_count} 个工具; 全部连到本地模拟器 {settings.host}")
        anyio.run(server.serve_stdio, runner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
