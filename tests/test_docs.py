"""README.md and docs/*.md stay consistent with themselves and with the code.

- every relative link points at a file or folder of the repository, and every ``#anchor`` (in the same
  page or another one) names a heading of that page (GitHub's rule: the heading's text, lower-cased,
  punctuation removed, spaces turned into ``-``, ``-1``, ``-2`` ... for repeats) or an explicit
  ``<a id="...">``;
- every page under docs/ is linked from README.md;
- every ``benchmarks/...`` or ``examples/...`` script named in a page exists (the measured figures cite them
  as their commands), and so does every ``tests/...`` file or folder a page names;
- every ``python`` code block of a page is valid Python (the examples themselves were run by hand);
- no page carries an open ``TODO(lead)`` marker;
- README's model table lists every registered model with its exact parameter count, and nothing else;
- a ``docs/PAGE.md#anchor`` cited in the code exists, and no code cites reference notes kept outside the
  repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)\s*=\s*\"([^\"]+)\"", re.IGNORECASE)
SCRIPT = re.compile(r"(?<![\w/.-])((?:benchmarks|examples)/[\w./-]+\.py)\b")
TEST_PATH = re.compile(r"(?<![\w/.-])(tests/[\w./-]*\w)")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading written in Markdown."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(\*\*|__|\*)", "", text)  # emphasis markers (single underscores stay: GitHub keeps them)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    text = page.read_text(encoding="utf-8")
    for line in prose_lines(text):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    out: list[str] = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        m = REF_DEF.match(line)
        if m:
            out.append(m.group(1))
            continue
        out.extend(LINK.findall(INLINE_CODE.sub("", line)))
    return out


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None


def test_there_are_pages_to_check():
    assert (ROOT / "README.md").is_file()
    assert len(PAGES) > 1, "docs/ has no Markdown pages"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path):
    problems = []
    for target in links(page):
        if is_external(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        try:
            dest.relative_to(ROOT)
        except ValueError:
            problems.append(f"{target}: points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{target}: no such file or folder")
            continue
        if anchor:
            if dest.suffix != ".md" or dest.is_dir():
                problems.append(f"{target}: an anchor into a page that is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{target}: no heading or <a id> for #{anchor} in {dest.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for t in links(readme) if not is_external(t)}
    orphans = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages not linked from README.md: {orphans}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_scripts_exist(page: Path):
    text = page.read_text(encoding="utf-8")
    missing = sorted({s for s in SCRIPT.findall(text) if not (ROOT / s).is_file()})
    assert not missing, f"{page.relative_to(ROOT)} names scripts that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_test_files_exist(page: Path):
    text = page.read_text(encoding="utf-8")
    missing = sorted({s for s in TEST_PATH.findall(text) if not (ROOT / s).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names test files or folders that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_parse(page: Path):
    problems = []
    for block in PYTHON_BLOCK.findall(page.read_text(encoding="utf-8")):
        try:
            ast.parse(block)
        except SyntaxError as exc:
            problems.append(f"line {exc.lineno} of the block starting {block.splitlines()[0]!r}: {exc.msg}")
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_open_todo_markers(page: Path):
    lines = [n for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1) if "TODO(lead)" in line]
    assert not lines, f"{page.relative_to(ROOT)} has TODO(lead) markers on lines {lines}"


def test_slug_follows_github():
    assert slug("Where we differ from Hugging Face transformers (on purpose)") == \
        "where-we-differ-from-hugging-face-transformers-on-purpose"
    assert slug("HF-5 Decoder query mask") == "hf-5-decoder-query-mask"
    assert slug("`perceivers train text`: bytes of the stdlib") == "perceivers-train-text-bytes-of-the-stdlib"
    assert slug("Speed and memory vs HF **transformers**") == "speed-and-memory-vs-hf-transformers"
    assert slug("Layers, 1 -> 2 processes") == "layers-1---2-processes"


CODE = [p for d in ("perceivers", "tests", "benchmarks", "examples") for p in sorted((ROOT / d).rglob("*.py"))
        if p.resolve() != Path(__file__).resolve()]
DOCS_CITATION = re.compile(r"\bdocs/([\w./-]+\.md)(?:#([\w-]+))?")
OUTSIDE_CITATION = re.compile(r"\b(?:perceiver-io|perceiver-ar-and-hip|conventions-checked|peers)\.md\b"
                              r"|\breference [AB]\.\d+")


def test_code_citations_of_the_docs_resolve():
    """A docstring or comment that cites ``docs/PAGE.md#anchor`` names a page and a heading that exist."""
    problems = []
    for path in CODE:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for page, anchor in DOCS_CITATION.findall(line):
                dest = ROOT / "docs" / page
                if not dest.is_file():
                    problems.append(f"{path.relative_to(ROOT)}:{n}: docs/{page} does not exist")
                elif anchor and anchor not in anchors(dest):
                    problems.append(f"{path.relative_to(ROOT)}:{n}: no #{anchor} in docs/{page}")
    assert not problems, "\n".join(problems)


def test_code_cites_no_file_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}" for p in CODE
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE_CITATION.search(line)]
    assert not hits, "cite a paper, an official file or a docs/ anchor instead:\n" + "\n".join(hits)


def readme_model_table() -> dict[str, int]:
    """``name -> count`` from README rows of the form ``| `name` | 1,234 | ... |``."""
    rows: dict[str, int] = {}
    for line in prose_lines((ROOT / "README.md").read_text(encoding="utf-8")):
        m = re.match(r"^\|\s*`([a-z0-9][a-z0-9-]*)`\s*\|\s*([\d,]+)\s*\|", line)
        if m:
            rows[m.group(1)] = int(m.group(2).replace(",", ""))
    return rows


def test_readme_model_table_matches_the_registry():
    import perceivers

    table = readme_model_table()
    registered = set(perceivers.list_models())
    assert set(table) == registered, (f"missing from README: {sorted(registered - set(table))}; "
                                      f"not registered: {sorted(set(table) - registered)}")
    wrong = {}
    for name, count in table.items():
        model = perceivers.create_model(name, device="meta")
        actual = sum(p.numel() for p in model.parameters())
        if actual != count:
            wrong[name] = (count, actual)
    assert not wrong, f"README count vs built model: {wrong}"
