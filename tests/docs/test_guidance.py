"""What SKILL.md and api-reference.md tell an agent, checked at its one home: where a rule,
a list or an answer's field is described, the text says what the code and the schema do.
(Sentence-level checks; the structure of the docs is test_markdown.py, their commands
test_commands.py, their examples test_examples.py.)"""

from __future__ import annotations

import json
import re

from helpers import ROOT, sim_service

SKILL = (ROOT / "SKILL.md").read_text(encoding="utf-8")
API = (ROOT / "api-reference.md").read_text(encoding="utf-8")


def line_with(text: str, fragment: str) -> str:
    lines = [line for line in text.splitlines() if fragment in line]
    assert lines, f"no line with {fragment!r}"
    return lines[0]


def test_one_cuda_code_list_and_it_is_the_schema():
    schema = json.loads((ROOT / "schemas" / "deployment.schema.json").read_text(encoding="utf-8"))
    enums = {tuple(found) for found in _enums(schema) if all(isinstance(v, int) for v in found)}
    private_codes = max(enums, key=len)  # cuda_v: the public codes plus 0
    section = API[API.index("### CUDA 代码"):API.index("### GPU 型号名称")]
    documented = [int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.M)]
    assert documented == sorted(private_codes)
    from autodl_esd.platform.units import KNOWN_CUDA_CODES

    assert list(KNOWN_CUDA_CODES) == [code for code in documented if code]
    assert "已知 `111`" not in API, "no second, partial list"


def _enums(node):
    if isinstance(node, dict):
        if "enum" in node:
            yield node["enum"]
        for value in node.values():
            yield from _enums(value)
    elif isinstance(node, list):
        for value in node:
            yield from _enums(value)


def test_private_gpu_names_both_styles_and_gpu_stock_is_the_truth():
    row = line_with(API, "| GPU 型号写法 |")
    assert "NVIDIA GeForce RTX 4090" in row and "`RTX 4090`" in row.split("|")[3] and "gpu_stock.py" in row


def test_unknown_host_dialect_is_settled_by_doctor():
    step = line_with(SKILL, "4. 私有云默认地址")
    assert "doctor.py" in step and "dialect" in step


def test_list_blacklist_is_available_where_the_platform_has_the_route():
    row = line_with(SKILL, "| `scripts/list_blacklist.py` |")
    assert "平台有这个接口时" in row and "(公有云接口)" not in row


def test_reuse_container_guidance_for_services_and_jobs():
    bullet = line_with(SKILL, "- **容器复用**")
    assert "ReplicaSet" in bullet and "Job" in bullet


def test_interval_advice_for_a_short_timeout():
    row = line_with(SKILL, "| `--interval S` |")
    assert "--timeout" in row and "1/10" in row


def test_least_inflight_differs_from_random_only_when_requests_overlap():
    bullet = line_with(SKILL, "- **策略**")
    assert "least_inflight" in bullet and "random" in bullet and "重叠" in bullet


def test_the_docs_say_guards_is_absent_when_none_watch():
    skill = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    reference = (ROOT / "api-reference.md").read_text(encoding="utf-8")
    assert "没有时不出现该字段" in skill and "有守护在监视时才有" in skill
    assert '"guards" in result' in reference


def test_skill_says_where_simulated_wechat_messages_are_and_what_max_cost_counts_from(sim):
    import urllib.request

    skill = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    reference = (ROOT / "api-reference.md").read_text(encoding="utf-8")
    assert "/_sim/wechat" in skill and "/_sim/wechat" in reference
    assert "花费从守护启动算起" in skill and "cost_report.py" in skill
    assert "从守护启动时算起" in reference and "全程花费" in reference
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


def test_the_confirmation_rule_is_documented_where_both_are_described():
    skill = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    reference = (ROOT / "api-reference.md").read_text(encoding="utf-8")
    assert "这次提交本身就是用户批准的花费" in skill and "这次提交本身就是用户批准的花费" in reference


def test_consent_when_the_user_cannot_be_asked_is_one_rule_among_the_money_rules():
    money = SKILL[SKILL.index("<!-- SECTION:money -->"):SKILL.index("<!-- /SECTION:money -->")]
    rule = line_with(money, "用户无法被询问时")
    # An explicit instruction consents to exactly what it names; the preview still runs and
    # is checked; the cost and what was done are reported; anything beyond is only offered.
    assert "明确指示" in rule and "所指明的那一件事" in rule
    assert "先预览" in rule and "核对" in rule and "费用" in rule and "做了什么" in rule
    assert "守护" in rule and "更大范围" in rule and "不要做" in rule and "报告里提出" in rule
    assert SKILL.count("用户无法被询问时") == 1, "one home"


def test_the_price_basis_is_decided_once_with_its_evidence():
    """Container `price` is per card: the decision and its evidence live in api-reference.md."""
    start = API.index("**计费口径 (本工具的决定: 按卡)**")
    paragraph = API[start:API.index("\n", start)]
    assert "price × gpu_num" in paragraph.replace("`", "") and "2000" in paragraph and "doctor.py" in paragraph
    assert "来源未说明是否按卡" not in API


def test_skill_says_notify_alone_sends_only_the_submit_notice():
    [line] = [line for line in SKILL.splitlines() if line.startswith("| `--notify` |")]
    assert "只发 已提交" in line and "`--wait-running`" in line and "`--wait-finished`" in line and "`--detach`" in line
