"""The docs a reader looks for: a short README that names every setting, and links that
lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vectorsvc.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 20_000

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _configuration_table(text: str) -> str:
    start = text.index("## Configuration")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_readme_stays_short() -> None:
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, (
        f"README.md is {size} bytes; keep it under {README_MAX_BYTES}: design goes to "
        "docs/architecture.md, operations to docs/deployment.md, figures to docs/performance.md"
    )


def test_every_setting_has_a_row_in_the_readme_table() -> None:
    table = _configuration_table(README.read_text(encoding="utf-8"))
    rows = [line for line in table.splitlines() if line.startswith("| `VECTORSVC_")]
    named = {name for row in rows for name in re.findall(r"`(VECTORSVC_[A-Z0-9_]+)`", row)}
    expected = {f"VECTORSVC_{field.upper()}" for field in Settings.model_fields}
    assert expected - named == set(), "settings missing from the README's Configuration table"
    assert named - expected == set(), "README table rows for settings that do not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    text = _FENCE.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert broken == [], f"{doc.name}: links to nothing: {broken}"
