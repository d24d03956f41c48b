"""The docs stand on their own: a short README, and every link of README.md and docs/*.md inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+).*?\1")
# [text](target) and ![alt](target), the target up to a space (a title may follow) or the closing parenthesis.
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
# <scheme:...>
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link of a Markdown page, code blocks and code spans left out."""
    found = []
    for number, line in _prose_lines(page.read_text()):
        line = _INLINE_CODE.sub("", line)
        found += [(number, m.group(1)) for m in _INLINE_LINK.finditer(line)]
        found += [(number, m.group(1)) for m in _AUTOLINK.finditer(line)]
        if m := _REFERENCE.match(line):
            found.append((number, m.group(1)))
    return found


def slug(heading: str) -> str:
    """The anchor a heading gets when the page is rendered: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a page's headings, repeated headings numbered as the renderer numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(page.read_text()):
        if m := _HEADING.match(line):
            base = slug(m.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def problem(page: Path, target: str) -> str | None:
    """Why a link of `page` is not a link inside the repository, or None when it is."""
    if not target:
        return "empty link"
    if _SCHEME.match(target) or target.startswith("//"):
        return "points outside the repository (a URL)"
    path_part, _, anchor = target.partition("#")
    if path_part.startswith("/"):
        return "absolute path: use a path relative to the page"
    dest = (page.parent / path_part).resolve() if path_part else page
    try:
        inside = dest.relative_to(ROOT)
    except ValueError:
        return "points outside the repository"
    if "shared" in Path(path_part).parts:
        return "points to shared/, which is not part of the repository"
    if not dest.exists():
        return f"no such file: {inside}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"no heading with anchor #{anchor} in {inside}"
    return None


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it to {MAX_README_LINES}, move the rest to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_stays_inside_the_repository_and_resolves(page):
    bad = [f"{page.relative_to(ROOT)}:{n}: {t} ({why})" for n, t in links(page) if (why := problem(page, t))]
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The link rules themselves, on a page of their own."""
    docs = ROOT / "docs"
    assert problem(docs / "api.md", "../../shared/API.md") == "points outside the repository"
    assert problem(README, "../shared/API.md") == "points outside the repository"
    assert problem(README, "https://example.org/api") == "points outside the repository (a URL)"
    assert problem(README, "docs/no-such-page.md").startswith("no such file")
    assert problem(README, "docs/api.md#no-such-heading").startswith("no heading")
    assert problem(README, "docs/api.md#errors") is None
    assert problem(docs / "api.md", "#errors") is None
    page = tmp_path / "page.md"
    page.write_text("[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n<https://example.org>\n[d]: w.md\n")
    assert [t for _, t in links(page)] == ["x.md", "https://example.org", "w.md"]
    assert slug("Tokens: who is calling") == "tokens-who-is-calling"
    assert slug("GET /catalogs/{sku}") == "get-catalogssku"
