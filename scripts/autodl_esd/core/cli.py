"""What every entry script shares: the argument parser, common flags and the main loop.

An entry script builds a parser with `make_parser`, then hands it and a handler to `run`:

    def main(argv=None):
        return cli.run(build_parser(), handle, argv)

`run` parses (argparse errors become `usage_error` JSON), installs SIGINT/SIGTERM
handlers, calls `handle(args, ctx)`, and turns the returned dict or any exception into the
single JSON document of the output contract.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys

from .errors import EFFECT_KEYS, EXIT_CODE_EPILOG, AutoDLError, ErrorType, Interrupted, change_sent
from .output import Progress, emit_error, emit_success, scrub
from .skill_venv import reexec_in_skill_venv

# `--help` must start about as fast as the interpreter: this module imports only what
# argparse needs anyway. In a fresh venv, on top of argparse, typing costs ~3 ms, traceback
# ~3 ms, dataclasses ~8 ms and core.settings/core.http (dataclasses, pathlib, json, ...) more,
# against ~10 ms for a bare start: annotations stay strings, the rest is imported where used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence


class UsageError(AutoDLError):
    def __init__(self, message: str, hint: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(ErrorType.USAGE_ERROR, message, hint or "运行 --help 查看用法与示例。", details)


class JsonArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = " ".join(self.format_usage().split())  # one line: the hint is read, not laid out
        raise UsageError(f"命令行参数错误: {message}", f"{usage}; 运行 --help 查看说明与示例。")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples and the exit-code table kept as written; every bounded option's range added to
    its help from its type (`bounds`), so a bound is stated once, where it is enforced."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        bounds = getattr(action.type, "bounds", None)
        if bounds and text and bounds not in text:
            text += f" (取值 {bounds})"
        return text


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """The formatter with the width given, so argparse does not import shutil (and its
    compression modules) just to ask for the terminal size."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 80  # not a terminal: the width shutil would fall back to
    return _HelpFormatter(prog, width=max(columns - 2, 20))


def make_parser(prog: str, description: str, examples: Sequence[str] = (), *, mutating: bool = False) -> JsonArgumentParser:
    """The parser of an entry script. `mutating`: the script changes things on the platform,
    so its errors before any change was sent say took_effect: false (`run`)."""
    epilog = ""
    if examples:
        epilog = "示例:\n" + "\n".join(f"  {line}" for line in examples) + "\n\n"
    parser = JsonArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog + EXIT_CODE_EPILOG,
        formatter_class=_help_formatter,
    )
    parser.mutating = mutating  # type: ignore[attr-defined]
    parser.add_argument("--quiet", action="store_true", help="不在 stderr 输出进度日志")
    parser.add_argument(
        "--debug", action="store_true", help="出现内部错误时在 stderr 打印 traceback"
    )
    return parser


def _number_text(value: float) -> str:
    """2592000, not 2.592e+06: a bound is read by people and copied into commands."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _described_as(schema: dict[str, Any], bounds: str = "") -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
    """Attach the JSON Schema of what an argparse type accepts (the MCP tools are built from
    it) and its range as people read it (added to every --help that uses the type)."""

    def attach(parse: Callable[[str], Any]) -> Callable[[str], Any]:
        parse.json_schema = schema  # type: ignore[attr-defined]
        parse.bounds = bounds  # type: ignore[attr-defined]
        return parse

    return attach


# Every duration flag (--interval, --timeout, --sim-busy, --health-timeout, ...) is a finite
# number of seconds no longer than this: 30 days is past any wait that makes sense, and it
# keeps nan/inf/1e308 out of sleeps, deadlines and socket timeouts.
MAX_DURATION_SECONDS = 30 * 86400
# ... and none is shorter than this (except 0 where 0 means "no limit"): a poll or wait below
# 10 ms is scheduler noise, and 1e-300 would spin a core. The tests poll the local simulator
# every 0.01 s; polls of the platform itself are floored further at run time
# (polling.MIN_REMOTE_POLL_SECONDS).
MIN_DURATION_SECONDS = 0.01
# --lookback-hours: the platform keeps event history for a bounded time; a year covers it.
MAX_LOOKBACK_HOURS = 365 * 24
# Amounts and limits (yuan, hours, minutes) stay at or below this: far past any real budget
# or run time, and small enough that timedelta and money arithmetic never overflow.
MAX_AMOUNT = 1e9
# Counts (cycles, characters, failures, connections) stay at or below this unless a flag has a
# tighter bound of its own: past any real use, and it keeps 10**20 out of loops and queues.
MAX_COUNT = 1_000_000
# An integer literal longer than this is out of every range above; int() is not even asked
# (past 4,300 digits it raises a ValueError of its own).
_MAX_INTEGER_DIGITS = 30


def _bounded_number(text: str, *, minimum: float, maximum: float, unit: str, zero: bool = False,
                    exclusive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"不是数字: {text!r}") from None
    in_range = (minimum < value if exclusive else minimum <= value) and value <= maximum  # nan fails every comparison
    if not (in_range or (zero and value == 0)):
        low = f"{_number_text(minimum)} <" if exclusive else f"{_number_text(minimum)} <="
        alone = "0 或 " if zero else ""
        raise argparse.ArgumentTypeError(f"必须是有限数, 范围 {alone}{low} {unit} <= {_number_text(maximum)}: {text!r}")
    return value


def seconds(minimum: float = MIN_DURATION_SECONDS, maximum: float = MAX_DURATION_SECONDS, *,
            zero: bool = False) -> Callable[[str], float]:
    """argparse type for a duration in fractional seconds, minimum <= S <= maximum; with
    `zero`, 0 as well (a limit where 0 means "none")."""
    schema: dict[str, Any] = {"type": "number", "minimum": 0 if zero else minimum, "maximum": maximum}
    if zero:
        schema["not"] = {"exclusiveMinimum": 0, "exclusiveMaximum": minimum}
    bounds = ("0 或 " if zero else "") + f"{_number_text(minimum)}..{_number_text(maximum)} 秒"

    def parse(text: str) -> float:
        return _bounded_number(text, minimum=minimum, maximum=maximum, unit="秒数", zero=zero)

    parse.__name__ = "seconds " + bounds
    return _described_as(schema, bounds)(parse)


# The two duration types every script shares: a wait or poll, and a limit where 0 means none.
positive_seconds = seconds()
non_negative_seconds = seconds(zero=True)


@_described_as({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LOOKBACK_HOURS},
               f"0 < H <= {MAX_LOOKBACK_HOURS}")
def positive_hours(text: str) -> float:
    """argparse type for look-back windows in hours: 0 < H <= one year."""
    return _bounded_number(text, minimum=0, maximum=MAX_LOOKBACK_HOURS, unit="小时数", exclusive=True)


@_described_as({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AMOUNT}, f"0 < X <= {_number_text(MAX_AMOUNT)}")
def positive_float(text: str) -> float:
    """argparse type for amounts and limits (yuan, hours, minutes): 0 < X <= 1e9, finite."""
    return _bounded_number(text, minimum=0, maximum=MAX_AMOUNT, unit="数值", exclusive=True)


def number_between(minimum: float, maximum: float) -> Callable[[str], float]:
    """argparse type for a finite factor or ratio within a flag's own limits."""

    def parse(text: str) -> float:
        return _bounded_number(text, minimum=minimum, maximum=maximum, unit="数值")

    bounds = f"{_number_text(minimum)}..{_number_text(maximum)}"
    parse.__name__ = f"number {bounds}"
    return _described_as({"type": "number", "minimum": minimum, "maximum": maximum}, bounds)(parse)


def _integer(text: str, minimum: int, maximum: int) -> int:
    digits = text.strip().lstrip("+-")
    if len(digits) > _MAX_INTEGER_DIGITS and digits.isdigit():
        raise argparse.ArgumentTypeError(f"必须在 {minimum}..{maximum} 之间: {text[:12]}... ({len(digits)} 位)")
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"不是整数: {text!r}") from None
    if not minimum <= value <= maximum:
        raise argparse.ArgumentTypeError(f"必须在 {minimum}..{maximum} 之间: {text!r}")
    return value


def int_between(minimum: int, maximum: int) -> Callable[[str], int]:
    """argparse type for an integer within limits (the platform's, or a flag's own)."""

    def parse(text: str) -> int:
        return _integer(text, minimum, maximum)

    parse.__name__ = f"integer {minimum}..{maximum}"
    return _described_as({"type": "integer", "minimum": minimum, "maximum": maximum}, f"{minimum}..{maximum}")(parse)


# The two count types every script shares, up to MAX_COUNT; a flag with a tighter bound of its
# own (replicas, queue slots) uses int_between.
positive_int = int_between(1, MAX_COUNT)
non_negative_int = int_between(0, MAX_COUNT)


def add_deployment_selector(parser: argparse.ArgumentParser, required: bool = True, name_glob: bool = False) -> None:
    """--deployment-uuid | --name | --config: the three ways to name one deployment
    (and, for stop/delete, --name-glob for many, confirmed with --expect-uuids)."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--deployment-uuid", metavar="UUID", help="部署 UUID (15 位十六进制)")
    group.add_argument("--name", metavar="NAME", help="按部署名称精确匹配 (重名时报错并列出候选)")
    group.add_argument("--config", metavar="FILE", help="按部署配置文件中的 name 查找")
    if name_glob:
        group.add_argument("--name-glob", metavar="PATTERN",
                           help="一次处理名称匹配 shell 通配符的全部部署 (匹配整个名称, 区分大小写; 'demo-*' 不会匹配 mydemo-x; "
                                "记得加引号)。不加 --yes 时预览每个匹配的状态与运行中的容器; 确认时加 --yes --expect-uuids")
        add_exclude_flag(parser)
        parser.add_argument("--expect-uuids", metavar="U1,U2,...",
                            help="与 --name-glob --yes 一起用: 预览给出的 details.expect_uuids; 匹配集合与它不同时不执行, "
                                 "再次返回 confirmation_required 并列出差别")


def add_exclude_flag(parser: argparse.ArgumentParser) -> None:
    """--exclude: the exceptions of a --name-glob ("all demo-* except demo-keep")."""
    parser.add_argument("--exclude", action="append", metavar="PATTERN",
                        help="与 --name-glob 一起用: 去掉名称匹配这个 shell 通配符的部署 (同样匹配整个名称, 区分大小写; 可重复), "
                             "如 --name-glob 'demo-*' --exclude demo-keep; 在预览和 --expect-uuids 比对之前去掉, 预览的 "
                             "details.excluded 列出被去掉的部署")


# The rule of `took_effect`, said once for every mutating script's --help (and MCP tool).
TOOK_EFFECT_HELP = (
    "改动的结果用 took_effect 报告: true 为已生效 (应答丢失时读回看到了变化); false 为平台明确拒绝 / 证实未生效; "
    "\"unknown\" 为应答丢失 (超时、断连、5xx) 且尚未看到变化, 请求可能仍在途中: 先按 details.check 查看, 不要盲目重复。"
)


def add_confirmation_flag(parser: argparse.ArgumentParser) -> None:
    """--yes: a destructive operation runs only when asked for explicitly."""
    parser.add_argument("--yes", action="store_true", help="确认执行; 不加时只返回 confirmation_required 并说明会发生什么")


def confirmation_required(action: str, details: dict[str, Any], hint: str = "") -> AutoDLError:
    """The answer of a destructive script run without --yes: what would happen, nothing done."""
    return AutoDLError(
        ErrorType.CONFIRMATION_REQUIRED,
        f"{action} 是破坏性操作, 未加 --yes, 什么都没有做。",
        hint or "把 details 中将受影响的部署与容器告诉用户, 得到明确同意后加 --yes 重新执行。",
        details,
    )


def list_result(items: list[Any], **extra: Any) -> dict[str, Any]:
    """The shape every list script returns; an empty list is still a success."""
    return {"items": items, "count": len(items), **extra}


def add_blacklist_flags(parser: argparse.ArgumentParser, comment_help: str, max_expire_minutes: int) -> None:
    """--comment and --expire-minutes, as the blacklist endpoint takes them (the limit is the
    platform's: `platform.units.BLACKLIST_MAX_EXPIRE_MINUTES`)."""
    parser.add_argument("--comment", metavar="TEXT", help=comment_help)
    parser.add_argument(
        "--expire-minutes",
        type=int_between(1, max_expire_minutes),
        metavar="N",
        help=f"多少分钟后解除, 1..{max_expire_minutes} ({max_expire_minutes // 1440:g} 天); 公有云字段, 不指定时平台默认 1440 (24 小时)",
    )


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 drop: Sequence[str] = (), paths: Sequence[str] = ()) -> list[str]:
    """The options `args` holds as a command line `parser` reads back to the same values:
    full flag names (an abbreviation or `--flag=value` typed by the user is spelled out),
    defaults left out, the options named in `drop` left out, and the values of `paths` made
    absolute (a background process runs in another directory)."""
    argv: list[str] = []
    for action in parser._actions:
        if action.dest in (*drop, "help"):
            continue
        value = getattr(args, action.dest, None)
        if not action.option_strings:  # none in the scripts that detach; never drop one silently
            if value is not None:
                raise ValueError(f"command_line: positional {action.dest!r} is not supported")
            continue
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true / store_const: the flag alone says it
            argv.append(flag)
            continue
        for item in value if isinstance(value, list) else [value]:
            text = repr(item) if isinstance(item, float) else str(item)  # repr: every digit back
            text = os.path.abspath(text) if action.dest in paths else text
            argv += [f"{flag}={text}"] if text.startswith("-") else [flag, text]  # "-x" alone reads as a flag
    return argv


class Context:
    """Per-run services handed to a script's handler."""

    def __init__(self, args: argparse.Namespace, progress: Progress, partial: dict[str, Any] | None = None,
                 settings: Any = None) -> None:
        self.args = args
        self.progress = progress
        # Filled in by handlers as they go, so an interrupt can still report it.
        self.partial: dict[str, Any] = {} if partial is None else partial
        # Set to talk to somewhere other than AUTODL_HOST (the embedded simulator).
        self.settings = settings
        self._client: Any = None

    def client(self) -> Any:
        """The authenticated API client (token and host resolved on first use)."""
        if self._client is None:
            # Here, not at the top: --help never needs them (settings loads dataclasses, http json).
            from .http import ApiClient
            from .settings import load_settings

            self._client = ApiClient(self.settings or load_settings(), progress=self.progress)
        return self._client


Handler = "Callable[[argparse.Namespace, Context], dict[str, Any]]"  # a handler's type, for readers


# Set by the first SIGINT/SIGTERM, and when the final document starts being written: from
# then on a signal is ignored, so the document being written stays the only one and a
# second Ctrl-C cannot kill the process halfway through its way out (exit code 130 stays).
_exiting = False


def _raise_interrupted(signum: int, _frame: Any) -> None:
    global _exiting
    if _exiting:
        return
    _exiting = True
    raise Interrupted(signal.Signals(signum).name)


def _begin_exit() -> None:
    global _exiting
    _exiting = True


def _interrupted_during_startup(signum: int, _frame: Any) -> None:
    """A signal before `run` took over (imports, building the parser): nothing was sent yet,
    so say so in the one JSON document and leave at once."""
    if _exiting:
        return  # the document is already out
    _begin_exit()
    emit_error(AutoDLError(
        ErrorType.INTERRUPTED,
        "操作在启动过程中被中断, 什么都没有做。",
        "还没有调用任何接口, 可以直接重新运行。",
        {"signal": signal.Signals(signum).name},
    ))
    os._exit(ErrorType.INTERRUPTED.exit_code)


def install_startup_handlers() -> None:
    """Interrupts from the first statements on get JSON: called when cli is imported by an
    entry script, before its slower imports (requests, jsonschema) and its parser."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(signum, _interrupted_during_startup)
        except ValueError:
            return  # not the main thread: signals are not ours to handle


def is_entry_script(path: str | None) -> bool:
    """Whether `path` (the __main__ file) is one of the bundle's scripts: the root or scripts/."""
    if not path:
        return False
    scripts = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.dirname(os.path.abspath(path)) in (scripts, os.path.dirname(scripts))


def run(parser: argparse.ArgumentParser, handler: Handler, argv: Sequence[str] | None = None) -> int:
    """Parse, run the handler, print exactly one JSON document, return the exit code."""
    global _exiting
    _exiting = False
    if argv is None:  # a real command line, not an in-process call
        reexec_in_skill_venv()
    progress = Progress()
    context: Context | None = None
    previous_handlers = _install_signal_handlers()
    _state_dir_used(reset=True)
    change_sent(reset=True)

    def unsent(error: AutoDLError) -> AutoDLError:
        """A mutating script's error before any change left this process says so (took_effect: false)."""
        partial = context.partial if context else {}
        if getattr(parser, "mutating", False) and not change_sent() and not any(key in partial for key in EFFECT_KEYS):
            error.say_nothing_was_sent()
        return error

    try:
        args = parser.parse_args(argv)
        progress.quiet = getattr(args, "quiet", False)
        context = Context(args=args, progress=progress)
        payload = handler(args, context)
        progress.close()
        _begin_exit()
        state_dir = _state_dir_used()
        if state_dir and isinstance(payload, dict) and "state_dir" not in payload:
            payload = {**payload, "state_dir": state_dir}
        return emit_success(payload)
    except SystemExit as exit_request:
        # argparse --help/--version print for people and exit 0; keep that behaviour.
        _begin_exit()
        progress.close()
        return int(exit_request.code or 0)
    except AutoDLError as error:
        progress.close()
        _begin_exit()
        state_dir = _state_dir_used()
        if state_dir and isinstance(error.details, dict):
            error.details.setdefault("state_dir", state_dir)
        return emit_error(unsent(error))
    except (Interrupted, KeyboardInterrupt) as interruption:
        _begin_exit()
        progress.close()
        details = dict(context.partial) if context else {}
        details["signal"] = getattr(interruption, "signal_name", "SIGINT")
        # A handler that had sent a change says how to check it (effects.apply_change, submit).
        hint = details.pop("interrupt_hint", None) or (
            "如果 details 中有 deployment_uuid, 说明部署已创建: 用 list_containers.py 查看, 不要重新提交。"
        )
        return emit_error(unsent(AutoDLError(ErrorType.INTERRUPTED, "操作被中断。", hint, details)))
    except Exception as bug:  # noqa: BLE001 - the contract is one JSON document, always
        _begin_exit()
        progress.close()
        if context is not None and getattr(context.args, "debug", False):
            import traceback  # only for --debug after a bug (~3 ms, see the note at the top)

            sys.stderr.write(scrub(traceback.format_exc()))
        details = dict(context.partial) if context else {}
        details["exception"] = scrub(f"{type(bug).__name__}: {bug}")
        # What was already sent comes first: the bug does not undo a create or a change.
        sent = details.pop("interrupt_hint", None)
        return emit_error(unsent(
            AutoDLError(
                ErrorType.INTERNAL_ERROR,
                "脚本内部错误。",
                (sent + " " if sent else "") + "加 --debug 重新运行可在 stderr 看到 traceback; 请把输出反馈给维护者。",
                details,
            )
        ))
    finally:
        _restore_signal_handlers(previous_handlers)


def _state_dir_used(reset: bool = False) -> str | None:
    """The state directory this run used (core.state.state_root), so every result that read
    or wrote local state names it. Read from sys.modules, not imported: a script that never
    touches state (and --help) does not load core.state."""
    state = sys.modules.get(f"{__package__}.state")
    if state is None:
        return None
    if reset:
        state.last_state_root = None
        return None
    root = getattr(state, "last_state_root", None)
    return None if root is None else str(root)


def _install_signal_handlers() -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, _raise_interrupted)
        except ValueError:
            pass  # not the main thread (e.g. called from a test worker thread)
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def script_main(main: Callable[[Sequence[str] | None], int]) -> None:
    """`if __name__ == "__main__": script_main(main)` — exit with main's code.

    The document is out by now; signals are ignored for the way out. (Interpreter shutdown
    puts the default handlers back, and a second Ctrl-C would then end the process by
    signal instead of with this exit code; an ignored signal stays ignored.)
    """
    code = main(None)
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(signum, signal.SIG_IGN)
        except ValueError:
            break  # not the main thread
    sys.exit(code)


# An entry script imports this module first: from here on an interrupt gets its JSON.
if is_entry_script(getattr(sys.modules.get("__main__"), "__file__", None)):
    install_startup_handlers()
