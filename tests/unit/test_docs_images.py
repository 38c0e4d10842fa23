"""Every picture under docs/ is shown by some page: each docs/**/*.png is the target of a Markdown link or
image (``[..](path)``, ``![..](path)``) or an HTML ``src``/``href`` in some .md file of the repository,
resolved from that file's folder. A chart nobody links is a chart nobody sees (or a stale one)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
TARGET = re.compile(r"\]\(\s*(?:<([^>]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\s*\)|(?:src|href)=[\"']([^\"']+)[\"']")


def markdown_files(root: Path = ROOT) -> list[Path]:
    return [p for p in root.rglob("*.md") if not SKIP & set(p.relative_to(root).parts)]


def linked_files(pages: list[Path]) -> set[Path]:
    """Every local file a page links or shows, resolved against the page's folder (anchors and URLs left out)."""
    found: set[Path] = set()
    for page in pages:
        for match in TARGET.finditer(page.read_text(encoding="utf-8")):
            target = unquote((match[1] or match[2] or match[3]).split("#", 1)[0])
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                continue
            found.add((page.parent / target).resolve())
    return found


def test_every_png_under_docs_is_shown_by_a_page() -> None:
    pictures = sorted((ROOT / "docs").rglob("*.png"))
    assert pictures, "no pictures under docs/?"
    linked = linked_files(markdown_files())
    orphans = [str(p.relative_to(ROOT)) for p in pictures if p.resolve() not in linked]
    assert not orphans, f"link these from a page (![what it shows](path)): {orphans}"


def test_links_are_resolved_from_the_page_that_holds_them(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        '![a](sub/a.png) [b](../b.png#x) ![c](<sub/c d.png>) ![d](sub/d.png "title") '
        '<img src="sub/e.png"> [web](https://example.com/f.png) `sub/g.png`\n'
    )
    assert linked_files([page]) == {
        (tmp_path / p).resolve()
        for p in ("docs/sub/a.png", "b.png", "docs/sub/c d.png", "docs/sub/d.png", "docs/sub/e.png")
    }
