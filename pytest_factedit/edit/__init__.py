"""Editing methods behind one Editor interface, in one table keyed by name.

Importing this package does not import torch or peft: the editors import them when they edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import MethodError
from .base import EditHandle, Editor, EditRequest
from .full_ft import FullFineTuneEditor
from .peft_staged import IA3AllLayersEditor, IA3SingleStageEditor, IA3TwoStageEditor, LoraEditor
from .settings import EditSettings, settings_from

EDITORS: dict[str, type[Editor]] = {
    cls.name: cls
    for cls in (IA3TwoStageEditor, IA3SingleStageEditor, IA3AllLayersEditor, LoraEditor, FullFineTuneEditor)
}


def method_names() -> tuple[str, ...]:
    return tuple(EDITORS)


def get_editor(name: str) -> Editor:
    """The editor registered under `name`."""
    if name not in EDITORS:
        raise MethodError("name", f"unknown method {name!r}; known: {', '.join(EDITORS)}")
    return EDITORS[name]()


def resolve_settings(method: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> EditSettings:
    """Validated settings for a case's `method:` mapping and command-line overrides (method defaults first)."""
    return settings_from(method, method_names(), overrides, {name: cls.defaults for name, cls in EDITORS.items()})


__all__ = [
    "EDITORS",
    "EditHandle",
    "EditRequest",
    "EditSettings",
    "Editor",
    "MethodError",
    "get_editor",
    "method_names",
    "resolve_settings",
]
