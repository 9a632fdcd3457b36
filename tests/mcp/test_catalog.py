"""The MCP tool catalog agrees with the scripts: same list, same flags, same docs.

No MCP SDK needed: the catalog is plain Python built from each script's `build_parser()`.
When one of these fails after adding a script or a flag, the message says what to do.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jsonschema
import pytest

if __name__ == "__main__":  # run as a script (write_tool_tables): pytest is not there to put tests/ on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import ROOT  # noqa: E402

from autodl_esd.mcp import catalog  # noqa: E402
from autodl_esd.mcp.server import INTERRUPTED_CALLS_TOOL, argument_problems  # noqa: E402

CATALOG = catalog.build_catalog()
TABLE_BEGIN = "<!-- mcp-tools:begin -->"
TABLE_END = "<!-- mcp-tools:end -->"


def test_every_entry_script_is_a_tool_or_excluded_with_a_reason():
    missing = catalog.uncovered_scripts()
    assert not missing, (
        f"entry scripts without an MCP tool: {missing}. Add a ToolPolicy for each to POLICIES in "
        "scripts/autodl_esd/mcp/catalog.py (title, read_only/destructive/idempotent, mode if it changes the "
        "platform), or, for a long-running server or a library, an entry in NOT_TOOLS with the reason; "
        "then rewrite the tool table in references/mcp.md with: python3 tests/mcp/test_catalog.py"
    )
    assert set(CATALOG) == {catalog.tool_name(name) for name in catalog.POLICIES}
    assert not set(catalog.POLICIES) & set(catalog.NOT_TOOLS)
    assert all(reason for reason in catalog.NOT_TOOLS.values())


def test_policies_name_only_existing_scripts():
    assert set(catalog.POLICIES) <= set(catalog.entry_scripts())


@pytest.mark.parametrize("name", CATALOG)
def test_every_flag_of_the_script_is_a_tool_argument_or_hidden_with_a_reason(name):
    tool = CATALOG[name]
    parser = catalog.load_script(tool.script).build_parser()
    hidden = {**catalog.COMMON_HIDDEN, **tool.policy.hidden}
    properties = tool.input_schema["properties"]
    for action in parser._actions:
        if action.dest == "yes":
            assert "confirm" in properties, f"{name}: --yes must become confirm"
            continue
        assert action.dest in properties or action.dest in hidden, f"{name}: {action.option_strings} is not in the tool"
    assert set(tool.policy.hidden) <= {a.dest for a in parser._actions}, f"{name}: hides a flag the script lacks"


@pytest.mark.parametrize("name", CATALOG)
def test_input_schemas_are_valid_json_schema_with_chinese_descriptions(name):
    schema = CATALOG[name].input_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    for key, prop in schema["properties"].items():
        assert re.search(r"[\u4e00-\u9fff]", prop["description"]), f"{name}.{key}: no Chinese description"
        if "default" in prop:
            assert jsonschema.Draft202012Validator(prop).is_valid(prop["default"]), f"{name}.{key}: default breaks the schema"


def sample(prop: dict):
    if "enum" in prop:
        return prop["enum"][-1]
    kind = prop["type"]
    if kind == ["string", "object"]:
        return "examples/replicaset-service.json"
    if kind == "boolean":
        return True
    if kind == "integer":
        return max(prop.get("minimum", 0), 1) if "maximum" not in prop else prop["maximum"]
    if kind == "number":
        return 2.5
    if kind == "array":
        return [sample(prop["items"])]
    return "-dash-value"  # a value starting with '-' must stay a value


# Values for arguments whose script parses the text itself (the schema says only "string").
PRIVATE_TYPE_SAMPLES = {"since": "2026-12-01"}


def private_type(option: catalog.Option) -> bool:
    parse = option.action.type
    return parse not in (None, str, int, float) and not hasattr(parse, "json_schema")


def sample_arguments(tool: catalog.Tool) -> dict:
    """Every argument at once, one member per mutually exclusive group."""
    skip = {member for group in tool.exclusive_groups for member in group[1:]}
    arguments = {key: sample(prop) for key, prop in tool.input_schema["properties"].items()
                 if key not in skip and key != "confirm"}
    for option in tool.options:
        if private_type(option) and option.dest in arguments:
            assert option.dest in PRIVATE_TYPE_SAMPLES, f"{tool.name}: add a valid --{option.dest} to PRIVATE_TYPE_SAMPLES"
            arguments[option.dest] = PRIVATE_TYPE_SAMPLES[option.dest]
    return arguments


@pytest.mark.parametrize("name", CATALOG)
@pytest.mark.parametrize("confirm", [False, True])
def test_tool_arguments_become_the_same_command_line_values(name, confirm):
    """argv_for is exact: the script's own parser reads back every argument unchanged."""
    tool = CATALOG[name]
    arguments = sample_arguments(tool)
    assert not argument_problems(tool.input_schema, arguments)
    parsed = catalog.load_script(tool.script).build_parser().parse_args(tool.argv_for(arguments, confirm=confirm))
    options = {option.dest: option for option in tool.options}
    for key, value in arguments.items():
        expected = options[key].action.type(value) if private_type(options[key]) else value
        assert getattr(parsed, key) == expected, f"{name}.{key}"
    for key, value in tool.policy.forced.items():
        assert getattr(parsed, key) == value, f"{name}.{key} is forced"
    mode = tool.mode(arguments)
    if tool.has_yes:
        assert parsed.yes is (confirm and mode == catalog.SCRIPT_PREVIEWS)
    if mode == catalog.DRY_RUN:
        assert parsed.dry_run is (not confirm)


def test_a_new_flag_shows_up_in_the_tool_by_itself(monkeypatch):
    """The catalog is generated: adding an option to a parser adds the argument."""
    tool = CATALOG["list_images"]
    module = catalog.load_script(tool.script)
    original = module.build_parser

    def with_extra_flag():
        parser = original()
        parser.add_argument("--brand-new", type=int, choices=(1, 2), help="新参数")
        return parser

    monkeypatch.setattr(catalog, "load_script", lambda path: type("M", (), {"build_parser": staticmethod(with_extra_flag)}))
    rebuilt = catalog.build_tool("list_images", tool.script, tool.policy)
    assert rebuilt.input_schema["properties"]["brand_new"]["enum"] == [1, 2]
    assert "--brand-new=2" in rebuilt.argv_for({"brand_new": 2}, confirm=False)


def test_every_shared_argparse_type_has_a_schema():
    """cli's argparse types say what they accept; a script's private parser falls back to a string."""
    from autodl_esd.core import cli

    for name, value in vars(cli).items():
        if callable(value) and getattr(value, "__module__", "") == cli.__name__ and not name.startswith("_") \
                and name.endswith(("_int", "_seconds", "_float")):
            assert hasattr(value, "json_schema"), f"cli.{name} has no json_schema: decorate it with @_described_as({{...}})"
    assert hasattr(cli.int_between(1, 5), "json_schema")
    for tool in CATALOG.values():
        for option in tool.options:
            parse = option.action.type
            if getattr(parse, "__module__", "") == cli.__name__:
                assert hasattr(parse, "json_schema"), f"{tool.name}.{option.dest}"


def test_annotations_are_truthful():
    for name, tool in CATALOG.items():
        hints = tool.annotations
        assert set(hints) >= {"readOnlyHint", "idempotentHint", "openWorldHint"}
        assert hints["readOnlyHint"] is (not tool.policy.mutating), name
        if tool.policy.mutating:
            assert "confirm" in tool.input_schema["properties"], name
            assert "destructiveHint" in hints, name
    destructive = {n for n, t in CATALOG.items() if t.policy.destructive}
    assert destructive == {"set_replicas", "stop_container", "stop_deployment", "delete_deployment", "guard_deployment",
                           "blacklist_host"}
    assert not CATALOG["set_replicas"].policy.idempotent
    assert not CATALOG["queue_submit"].policy.idempotent
    assert CATALOG["validate_config"].annotations["openWorldHint"] is False


TOOL_TABLE_HOME = "references/mcp.md"


def test_the_docs_show_the_tool_table():
    """references/mcp.md carries the generated table between the mcp-tools markers (its one home)."""
    expected = catalog.markdown_table(CATALOG)
    text = (ROOT / TOOL_TABLE_HOME).read_text(encoding="utf-8")
    assert TABLE_BEGIN in text and TABLE_END in text, f"{TOOL_TABLE_HOME}: no {TABLE_BEGIN} ... {TABLE_END} block"
    shown = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    assert shown == expected, (
        f"{TOOL_TABLE_HOME}: the MCP tool table is out of date; rewrite it with: python3 tests/mcp/test_catalog.py\n{expected}"
    )
    assert f"`{INTERRUPTED_CALLS_TOOL}`" in text


def write_tool_tables() -> None:
    """`python3 tests/mcp/test_catalog.py` rewrites the table in references/mcp.md."""
    table = catalog.markdown_table(catalog.build_catalog())
    path = ROOT / TOOL_TABLE_HOME
    head, rest = path.read_text(encoding="utf-8").split(TABLE_BEGIN, 1)
    path.write_text(f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}", encoding="utf-8")
    print(f"{TOOL_TABLE_HOME}: tool table written")


if __name__ == "__main__":
    write_tool_tables()


@pytest.mark.parametrize(("name", "took_effect", "may_have_been_created"), [
    ("list_images", None, None), ("stop_deployment", "unknown", None), ("queue_submit", "unknown", True)])
def test_a_child_killed_after_the_grace_says_what_is_unknown(name, took_effect, may_have_been_created):
    from autodl_esd.mcp.server import _ChildOutput
    from autodl_esd.core.output import Progress

    child = type("Child", (), {"returncode": -9})()
    output = _ChildOutput(child, None, CATALOG[name], f"python {name}.py", Progress(quiet=True))
    document = output.document(killed=True)
    assert document["error_type"] == "interrupted"
    assert document["details"].get("took_effect") == took_effect
    assert document["details"].get("may_have_been_created") == may_have_been_created


@pytest.mark.parametrize(("name", "advice"), [("stop_deployment", "重新调用也无害"), ("stop_container", "不要直接重复调用")])
def test_a_killed_mutation_says_whether_it_may_be_repeated(name, advice):
    """Unknown may still land: only a repeat-safe (idempotent) change is said to be safe to resend."""
    from autodl_esd.mcp.server import _ChildOutput
    from autodl_esd.core.output import Progress

    child = type("Child", (), {"returncode": -9})()
    document = _ChildOutput(child, None, CATALOG[name], f"python {name}.py", Progress(quiet=True)).document(killed=True)
    assert document["details"]["took_effect"] == "unknown" and advice in document["hint"]


def test_without_the_sdk_the_server_says_dependency_missing(tmp_path):
    import json
    import os
    import subprocess
    import sys

    fake = tmp_path / "mcp"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "mcp_server.py")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, stdin=subprocess.DEVNULL, timeout=60)
    document = json.loads(done.stdout)
    assert done.returncode == 1 and document["error_type"] == "dependency_missing"
    assert "requirements-mcp.txt" in document["details"]["install_command"]
    assert "requirements-mcp.txt" in done.stderr


def test_list_tools_prints_one_json_document_without_starting_a_server():
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "mcp_server.py"), "--list-tools"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    document = json.loads(done.stdout)
    assert done.returncode == 0 and document["count"] == len(CATALOG)
    assert {item["name"] for item in document["items"]} == set(CATALOG)
