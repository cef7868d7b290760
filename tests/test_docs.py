"""The README and docs/ pages: short enough to read, every page reachable, no dead links, no project
diary, and every `ganray ...` command a page names is one the CLI has. Fast: no Ray."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ganray.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = [README, *PAGES]
README_MAX_LINES = 300
# Markdown links and images: [text](target) / ![alt](target); the target up to a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")
DIARY = re.compile(r"\bissues? #?\d+|this session|previous run", re.IGNORECASE)


def _relative_links(doc: Path) -> list[str]:
    targets = LINK.findall(doc.read_text())
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_reads_in_ten_minutes():
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.split("#")[0]).resolve() for t in _relative_links(README)}
    assert PAGES and [p.name for p in PAGES if p.resolve() not in linked] == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve_to_files(doc):
    dead = [t for t in _relative_links(doc) if not (doc.parent / t.split("#")[0]).is_file()]
    assert dead == [], f"{doc.name}: links to missing files {dead}"


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.DOTALL | re.MULTILINE),
                          re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_section_links_name_a_heading(doc):
    links = [t.split("#", 1) for t in _relative_links(doc) if "#" in t]
    dead = [f"{f}#{a}" for f, a in links if (doc.parent / f).is_file() and a not in _anchors(doc.parent / f)]
    assert dead == [], f"{doc.name}: links to missing sections {dead}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_project_diary(doc):
    assert DIARY.findall(doc.read_text()) == []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _code(text: str) -> str:
    """A page's code: fenced blocks and `inline` spans (prose may say "ganray and ...")."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    code = "\n".join([*blocks, *re.findall(r"`([^`\n]+)`", prose)])
    return re.sub(r"(^|\s)#.*$", "", code, flags=re.MULTILINE)  # shell comments are prose too


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_ganray_command_named_exists(doc):
    commands = re.findall(r"\bganray((?: [a-z][a-z_-]*)+)", _code(doc.read_text()))
    assert commands or doc != README
    root = build_parser()
    for words in commands:
        parser, path = root, ["ganray"]
        for word in words.split():
            sub = _subcommands(parser)
            if not sub:
                break  # a leaf command: what follows is its arguments
            assert word in sub, f"{doc.name}: `ganray{words}`: `{word}` is not a command of `{' '.join(path)}`"
            parser, path = sub[word], [*path, word]
