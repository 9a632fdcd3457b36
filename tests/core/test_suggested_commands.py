"""No hint or message offers a mutating command ready to act: a suggested command never
carries --yes (an agent that runs a hint literally must get a preview, never the change).

The scan reads every string the scripts build (literals, f-strings and their `+` joins)
except the --help texts (EXAMPLES, argparse help/description), which document the flag.
"""

from __future__ import annotations

import ast
import re

from helpers import ROOT

# A command line in a text: a script and its arguments up to the end of the clause.
COMMAND_WITH_YES = re.compile(r"\b\w+\.py\b[^。；;,，\n]*?(?<!\S)--yes\b")
# A mutating switch handed over together with --yes ("加 --apply --yes"): the preview skipped.
SWITCH_WITH_YES = re.compile(r"(?<!\S)--(?!yes\b)[\w-]+ +--yes\b")
HELP_KEYWORDS = {"help", "description", "epilog", "usage"}
HELP_CALLS = {"make_parser", "add_argument", "add_argument_group", "ArgumentParser"}


def _text(node: ast.AST) -> str | None:
    """The text a string expression builds (placeholders as {}), or None if it is not one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is not None or right is not None:
            return (left or "{}") + (right or "{}")
    if isinstance(node, ast.IfExp):
        body, orelse = _text(node.body), _text(node.orelse)
        if body is not None or orelse is not None:
            return (body or "") + (orelse or "")  # both branches: either may be shown
    return None


def _help_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under --help texts and docstrings, which the scan skips."""
    skipped: set[int] = set()

    def skip(node: ast.AST) -> None:
        skipped.update(id(child) for child in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id.endswith("EXAMPLES") for target in node.targets):
            skip(node.value)
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in HELP_CALLS:
                skip(node)
            for keyword in node.keywords:
                if keyword.arg in HELP_KEYWORDS:
                    skip(keyword.value)
        elif isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip(body[0])
    return skipped


def suggested_commands_with_yes(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    skipped = _help_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        text = _text(node)
        if text and (COMMAND_WITH_YES.search(text) or SWITCH_WITH_YES.search(text)):
            found.append((node.lineno, text))
    return found


def test_the_scan_catches_a_command_with_yes_and_spares_the_help():
    source = '''
EXAMPLES = ["python scripts/stop_deployment.py --name x --yes"]
def f(parser, uuid, machine):
    parser.add_argument("--yes", help="blacklist_host.py --move-replicas --yes")
    a = {"hint": f"想分散时: blacklist_host.py --container-uuid {uuid} --move-replicas --yes"}
    b = "保留最早的, 停止: " + "; ".join(f"python scripts/stop_deployment.py --deployment-uuid {u} --yes" for u in x)
    c = ("python3 scripts/guard_deployment.py --deployment-uuid " + uuid + " --yes --detach")
    d = "要拉黑报告的主机请加 --apply --yes"
    e = "得到明确同意后加 --yes 重新执行; 想全部停下请用 stop_deployment.py。"
    g = f"用户确认的正是这些时, 加 --yes --expect-uuids {uuid} 重新执行"
'''
    assert sorted({line for line, _ in suggested_commands_with_yes(source)}) == [5, 6, 7, 8]


def test_no_hint_or_message_in_scripts_suggests_a_command_with_yes():
    offenders = []
    for path in sorted((ROOT / "scripts").rglob("*.py")) + [ROOT / "queue_submit.py"]:
        if "simulator" in path.relative_to(ROOT).parts:
            continue
        for line, text in suggested_commands_with_yes(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert not offenders, "\n".join(offenders)
