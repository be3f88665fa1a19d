"""A fake installed package for tests of editors declared by entry point: modules on sys.path and a
dist-info folder whose entry_points.txt importlib.metadata reads, all under tmp_path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules: dict[str, str], entry_points: dict[str, str]
) -> None:
    """Install `modules` (name -> source) and `entry_points` (name -> 'module:Class') of the
    pytest_factedit.editors group, in that order, for the rest of the test."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
    info = tmp_path / "some_editors-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: some-editors\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text("[pytest_factedit.editors]\n" + lines)
    monkeypatch.syspath_prepend(str(tmp_path))
