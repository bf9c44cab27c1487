"""The README and docs/ link only inside the repository, and every link lands.

A user's clone has nothing beside the repository, so a relative link that leaves it (the
project's old design file in ``../shared/`` did) is a dead link for them. Each relative
link must name a file or directory of the repository, and its ``#anchor``, when it points
into a Markdown file, must be one of that file's headings (GitHub's slugs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_EXTERNAL = ("http://", "https://", "mailto:")


def links(text: str) -> list[str]:
    """Markdown link targets outside fenced code blocks."""
    return _LINK.findall(_FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github() -> None:
    assert slug("6. A pod ADD, from the runtime to another node's FIB") == \
        "6-a-pod-add-from-the-runtime-to-another-nodes-fib"
    assert slug("`make demo`") == "make-demo"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_links_stay_inside_the_repository_and_resolve(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text, f"{doc.name} sends readers outside the repository"
    problems = []
    for target in links(text):
        if target.startswith(_EXTERNAL):
            continue
        name, _, anchor = target.partition("#")
        dest = (doc.parent / name).resolve() if name else doc
        if not dest.is_relative_to(REPO):
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not problems, f"{doc.relative_to(REPO)}: " + "; ".join(problems)
