"""The documentation stays in step with the code: generated pages are the commands' output, the README stays
a short entry point, and the site's navigation names exactly the pages docs/ holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_factedit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 150


class _IgnoringTags(yaml.SafeLoader):
    """mkdocs.yml's `!relative` and `!!python/name:` tags read as None: only the nav matters here."""


_IgnoringTags.add_multi_constructor("", lambda loader, suffix, node: None)


def _nav_pages(entries: list[Any]) -> list[str]:
    pages: list[str] = []
    for entry in entries:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _nav() -> list[str]:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_IgnoringTags)  # a SafeLoader
    return _nav_pages(config["nav"])


@pytest.mark.parametrize(("command", "page"), [("options", "options.md")])
def test_a_generated_page_is_the_output_of_its_command(
    command: str, page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command]) == 0
    printed = capsys.readouterr().out
    written = (DOCS / page).read_text(encoding="utf-8")
    assert written == printed, f"docs/{page} is stale: regenerate it with `factedit {command} > docs/{page}`"


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, expected at most {README_MAX_LINES}: move reference content to a docs/ page"
    )


def test_every_page_of_the_nav_exists_and_every_page_is_in_the_nav() -> None:
    nav = _nav()
    missing = [page for page in nav if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that docs/ does not hold: {missing}"
    unlisted = sorted(path.name for path in DOCS.glob("*.md") if path.name not in nav)
    assert not unlisted, f"docs/ pages missing from mkdocs.yml's nav: {unlisted}"
