"""The bundle's documents, as the doc tests read them: which files are docs, their code
blocks, their headings' anchors, their approximate token count.

Agent-facing docs are SKILL.md, the root *.md files and references/; people's docs add
docs/ and bench/README.md. `approx_tokens` counts like the project's doc_weight tool (one
token per CJK character, one per 4 other characters), so a budget test and the tool agree.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers import ROOT

FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}


def agent_docs() -> list[str]:
    """SKILL.md and the other root *.md files, then every reference file."""
    root = sorted(path.name for path in ROOT.glob("*.md"))
    return root + [f"references/{path.name}" for path in sorted((ROOT / "references").glob("*.md"))]


def all_docs() -> list[str]:
    """Every document of the bundle: the agent's, docs/ and the benchmarks' README."""
    return agent_docs() + [f"docs/{path.name}" for path in sorted((ROOT / "docs").glob("*.md"))] + ["bench/README.md"]


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def without_code(text: str) -> str:
    return FENCE.sub("", text)


def approx_tokens(text: str) -> int:
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef")
    return cjk + (len(text) - cjk) // 4


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lowercase, punctuation dropped (CJK kept), spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in without_code(text).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def links(name: str) -> list[tuple[Path, str]]:
    """(target file, fragment) for every relative link of a doc, outside code blocks."""
    found = []
    for target in LINK.findall(without_code(read(name))):
        if re.match(r"[a-z]+:", target):
            continue  # absolute URL
        path_part, _, fragment = target.partition("#")
        path = ((ROOT / name).parent / path_part).resolve() if path_part else ROOT / name
        found.append((path, fragment))
    return found


def section(text: str, heading: str) -> str:
    """A heading's section: from its line to the next heading of the same or a higher level
    (headings inside code blocks do not count)."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines(keepends=True)
    start = lines.index(heading + "\n")
    in_code = False
    for end in range(start + 1, len(lines)):
        if lines[end].startswith("```"):
            in_code = not in_code
        match = None if in_code else HEADING.match(lines[end])
        if match and len(match.group(1)) <= level:
            return "".join(lines[start:end])
    return "".join(lines[start:])
