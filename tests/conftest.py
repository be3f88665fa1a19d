"""Fixtures shared by the test folders."""

from __future__ import annotations

import pytest

from pytest_factedit import edit


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The editor table and the entry point state, restored after a test that registers editors."""
    monkeypatch.setattr(edit, "EDITORS", dict(edit.EDITORS))
    monkeypatch.setattr(edit, "_installed", [])
    monkeypatch.setattr(edit, "_broken", {}, raising=False)
    return edit.EDITORS
