"""What the docs tell an agent, checked at each fact's one home: the file that owns a rule, a
list or a field's meaning says it (and says what the code and the schema do), no other doc
repeats it, and the places that need it link to the home.

(The structure of the docs is test_markdown.py, their commands test_commands.py, their
examples and captured outputs test_examples.py.)
"""

from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT, sim_service
from helpers.docs import all_docs, links, read

# (a phrase that states the fact, its home). The phrase appears in the home and nowhere else.
HOMES = [
    ("用户请求里的明确指示就是对它**所指明的那一件事**的同意", "SKILL.md"),
    ("这次提交本身就是用户批准的花费", "references/money.md"),
    ("从守护启动时算起", "references/money.md"),
    ("**计费口径 (本工具的决定: 按卡)**", "references/money.md"),
    ("没有时**不出现**该字段", "references/ops.md"),
    ("只有请求**重叠**", "references/serving.md"),
    ("取它的约 1/10", "references/submit.md"),
    ("单独加只发\"已提交\"", "references/submit.md"),
    ("| `GET /_sim/wechat` |", "references/simulator.md"),
    ("| `GET /metrics` |", "references/simulator.md"),
    ("| `validation_error` |", "SKILL.md"),
    ("<!-- mcp-tools:begin -->", "references/mcp.md"),
    ("### CUDA 代码", "references/platform-api.md"),
    ("**连续 2 次**明确回答", "references/serving.md"),
    ("**绝不会为了找卡创建第二个部署。**", "references/autoscale.md"),
]

# (a doc, the home it must link to for a fact it only mentions).
POINTERS = [
    ("references/submit.md", "references/money.md", "守护"),
    ("references/platform-endpoints.md", "references/money.md", "计费口径"),
    ("references/platform-endpoints.md", "references/ops.md", "停止与删除"),
    ("references/platform-endpoints.md", "references/submit.md", "创建结果不明时"),
    ("references/money.md", "references/simulator.md", "控制接口"),
    ("references/serving.md", "references/simulator.md", "模拟的服务"),
    ("SKILL.md", "README.md", "configuration"),
]


@pytest.mark.parametrize(("phrase", "home"), HOMES, ids=[home + ": " + phrase[:20] for phrase, home in HOMES])
def test_a_fact_is_said_in_its_home_and_nowhere_else(phrase, home):
    assert phrase in read(home), f"{home} no longer says {phrase!r}"
    elsewhere = [doc for doc in all_docs() if doc != home and phrase in read(doc)]
    assert elsewhere == [], f"{phrase!r} is repeated in {elsewhere}; link to {home} instead"
    assert read(home).count(phrase) == 1


@pytest.mark.parametrize(("doc", "home", "fragment"), POINTERS)
def test_a_doc_that_needs_a_fact_links_to_its_home(doc, home, fragment):
    assert ((ROOT / home).resolve(), fragment) in links(doc), f"{doc} should link to {home}#{fragment}"


def line_with(text: str, fragment: str) -> str:
    lines = [line for line in text.splitlines() if fragment in line]
    assert lines, f"no line with {fragment!r}"
    return lines[0]


def _enums(node):
    if isinstance(node, dict):
        if "enum" in node:
            yield node["enum"]
        for value in node.values():
            yield from _enums(value)
    elif isinstance(node, list):
        for value in node:
            yield from _enums(value)


def test_one_cuda_code_list_and_it_is_the_schema():
    api = read("references/platform-api.md")
    schema = json.loads((ROOT / "schemas" / "deployment.schema.json").read_text(encoding="utf-8"))
    enums = {tuple(found) for found in _enums(schema) if all(isinstance(v, int) for v in found)}
    private_codes = max(enums, key=len)  # cuda_v: the public codes plus 0
    section = api[api.index("### CUDA 代码"):api.index("### GPU 型号名称")]
    documented = [int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.M)]
    assert documented == sorted(private_codes)
    from autodl_esd.platform.units import KNOWN_CUDA_CODES

    assert list(KNOWN_CUDA_CODES) == [code for code in documented if code]
    assert all("已知 `111`" not in read(doc) for doc in all_docs()), "no second, partial list"


def test_private_gpu_names_both_styles_and_gpu_stock_is_the_truth():
    row = line_with(read("references/platform-api.md"), "| GPU 型号写法 |")
    assert "NVIDIA GeForce RTX 4090" in row and "`RTX 4090`" in row.split("|")[3] and "gpu_stock.py" in row


def test_unknown_host_dialect_is_settled_by_doctor():
    step = line_with(read("SKILL.md"), "3. 平台")
    assert "doctor.py" in step and "dialect" in step and "不要猜" in step


def test_list_blacklist_is_available_where_the_platform_has_the_route():
    row = line_with(read("SKILL.md"), "| `list_blacklist.py` |")
    assert "平台有这个接口时" in row and "(公有云接口)" not in row


def test_reuse_container_guidance_for_services_and_jobs():
    bullet = line_with(read("SKILL.md"), "- **复用容器**")
    assert "ReplicaSet" in bullet and "Job" in bullet


def test_interval_advice_for_a_short_timeout():
    row = line_with(read("references/submit.md"), "| `--interval S` |")
    assert "--timeout" in row and "1/10" in row


def test_least_inflight_differs_from_random_only_when_requests_overlap():
    bullet = line_with(read("references/serving.md"), "**策略**")
    assert "least_inflight" in bullet and "random" in bullet and "重叠" in bullet


def test_the_docs_say_guards_is_absent_when_none_watch():
    rule = line_with(read("references/ops.md"), "没有时**不出现**该字段")
    assert '"guards" in result' in rule


def test_simulated_wechat_messages_are_where_the_docs_say_and_what_max_cost_counts_from(sim):
    import urllib.request

    row = line_with(read("references/simulator.md"), "| `GET /_sim/wechat` |")
    assert "`title`" in row and "`name`" in row and "`content`" in row and "`at`" in row
    rule = line_with(read("references/money.md"), "从守护启动时算起")
    assert "cost_report.py" in rule and "全程花费" in rule
    # The route and shape the docs name are the simulator's.
    from autodl_esd.platform import api

    instance = sim()
    api.send_wechat_message(sim_service.client(), "标题", "正文", "任务")
    request = urllib.request.Request(instance.url + "/_sim/wechat", headers={"Authorization": instance.token})
    with urllib.request.urlopen(request, timeout=5) as answer:
        envelope = json.loads(answer.read())
    assert envelope["code"] == "Success"
    messages = envelope["data"]
    assert [{key: m[key] for key in ("title", "name", "content")} for m in messages] == [
        {"title": "标题", "name": "任务", "content": "正文"}]
    assert "at" in messages[0]


def test_the_confirmation_rule_names_both_ways_to_start_a_guard():
    rule = line_with(read("references/money.md"), "这次提交本身就是用户批准的花费")
    assert "guard_deployment.py" in rule and "--yes" in rule and "--max-runtime" in rule and "deployment_exists" in rule


def test_consent_when_the_user_cannot_be_asked_is_one_rule_among_the_agent_rules():
    skill = read("SKILL.md")
    rules = skill[skill.index("## agent 规则"):skill.index("## Gotchas")]
    rule = line_with(rules, "用户无法被询问时")
    # An explicit instruction consents to exactly what it names; the preview still runs and
    # is checked; the cost and what was done are reported; anything beyond is only offered.
    assert "明确指示" in rule and "所指明的那一件事" in rule
    assert "先预览" in rule and "核对" in rule and "费用" in rule and "做了什么" in rule
    assert "守护" in rule and "更大范围" in rule and "不要做" in rule and "报告里提出" in rule


def test_the_price_basis_is_decided_once_with_its_evidence():
    """Container `price` is per card: the decision and its evidence live in references/money.md."""
    money = read("references/money.md")
    paragraph = line_with(money, "**计费口径 (本工具的决定: 按卡)**")
    assert "price × gpu_num" in paragraph.replace("`", "") and "2000" in paragraph and "doctor.py" in paragraph
    assert all("来源未说明是否按卡" not in read(doc) for doc in all_docs())


def test_notify_alone_sends_only_the_submit_notice():
    row = line_with(read("references/submit.md"), "| `--notify` |")
    assert "只发\"已提交\"" in row and "`--wait-running`" in row and "`--wait-finished`" in row and "`--detach`" in row


def test_skill_md_has_one_table_of_every_entry_script():
    """The one script table lists queue_submit.py and every scripts/*.py, and no other table does."""
    skill = read("SKILL.md")
    rows = re.findall(r"^\| `(\w+\.py)` \|", skill, re.M)
    scripts = {"queue_submit.py"} | {path.name for path in (ROOT / "scripts").glob("*.py")}
    assert sorted(rows) == sorted(scripts), set(rows) ^ scripts
    assert len(re.findall(r"^\| 脚本 \|", skill, re.M)) == 1


def test_skill_md_has_the_whole_error_table():
    """Every error_type a script can exit with; the gateway's HTTP-only ones live in serving.md."""
    from autodl_esd.core.errors import SERVING_ONLY, ErrorType

    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|", read("SKILL.md"), re.M)
    assert {name for name, _ in rows} == {member.value for member in ErrorType if member not in SERVING_ONLY}
    serving = read("references/serving.md")
    assert all(f"`{member.value}`" in serving for member in SERVING_ONLY)
