"""Editing methods behind one Editor interface, in one table keyed by name: the built-in ones, those a
`conftest.py` or plugin returns from the `pytest_factedit_editors` hook, and those installed packages
declare in the `pytest_factedit.editors` entry point group.

Importing this package does not import torch or peft: the editors import them when they edit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any, get_args

from ..errors import MethodError
from .alphaedit import AlphaEditEditor
from .base import EditHandle, Editor, EditRequest, Scope
from .full_ft import FullFineTuneEditor, MlpFineTuneEditor
from .peft_staged import IA3AllLayersEditor, IA3SingleStageEditor, IA3TwoStageEditor, LoraEditor, PeftStagedEditor
from .rome import RomeEditor
from .settings import EditSettings, settings_from

ENTRY_POINT_GROUP = "pytest_factedit.editors"
EDITORS: dict[str, type[Editor]] = {
    cls.name: cls
    for cls in (
        IA3TwoStageEditor,
        IA3SingleStageEditor,
        IA3AllLayersEditor,
        LoraEditor,
        FullFineTuneEditor,
        RomeEditor,
        AlphaEditEditor,
        MlpFineTuneEditor,
    )
}
BUILT_IN = frozenset(EDITORS)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_installed: list[bool] = []  # the entry point group was read (once per process)


def _problem(cls: Any) -> str:
    """Why `cls` cannot be an editor ('' when it can): the interface of `base.Editor`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return f"`name` must be a lower-case name (letters, digits, '.', '_', '-'), found {name!r}"
    if getattr(cls, "scope", None) not in get_args(Scope):
        return f"`scope` must be one of {', '.join(get_args(Scope))}, found {getattr(cls, 'scope', None)!r}"
    if not isinstance(getattr(cls, "defaults", None), Mapping):
        return "`defaults` must be a mapping of setting name to value (may be empty)"
    if not callable(getattr(cls, "apply", None)):
        return "it needs apply(model, tokenizer, request, targets, settings) returning an EditHandle"
    return ""


def register_editor(cls: type[Editor]) -> type[Editor]:
    """Add an editor class to the table under `cls.name` (also as a decorator). A built-in name, or a name
    another class already took, is refused; registering the same class again (a reloaded conftest) is not."""
    problem = _problem(cls)
    if problem:
        raise MethodError("name", f"cannot register {getattr(cls, '__qualname__', cls)!r} as an editor: {problem}")
    known = EDITORS.get(cls.name)
    same = known is not None and (known.__module__, known.__qualname__) == (cls.__module__, cls.__qualname__)
    if known is not None and not same:
        where = "built in" if cls.name in BUILT_IN else f"registered by {known.__module__}.{known.__qualname__}"
        raise MethodError("name", f"cannot register {cls.__qualname__!r}: the editor name {cls.name!r} is {where}")
    EDITORS[cls.name] = cls
    return cls


def _load_installed() -> None:
    """Register the editors installed packages declare (entry point group `pytest_factedit.editors`)."""
    if _installed:
        return
    _installed.append(True)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            register_editor(entry.load())
        except MethodError:
            raise
        except Exception as exc:  # a broken package names itself, not a traceback from deep inside
            raise MethodError(
                "name", f"the editor entry point {entry.name!r} ({entry.value}) cannot be loaded: {exc}"
            ) from exc


def method_names() -> tuple[str, ...]:
    _load_installed()
    return tuple(EDITORS)


def get_editor(name: str) -> Editor:
    """The editor registered under `name`."""
    _load_installed()
    if name not in EDITORS:
        raise MethodError("name", f"unknown method {name!r}; known: {', '.join(EDITORS)}")
    return EDITORS[name]()


def resolve_settings(method: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> EditSettings:
    """Validated settings for a case's `method:` mapping and command-line overrides (method defaults first)."""
    names = method_names()
    return settings_from(method, names, overrides, {name: cls.defaults for name, cls in EDITORS.items()})


__all__ = [
    "EDITORS",
    "ENTRY_POINT_GROUP",
    "PeftStagedEditor",
    "register_editor",
    "EditHandle",
    "EditRequest",
    "EditSettings",
    "Editor",
    "IA3TwoStageEditor",
    "MethodError",
    "get_editor",
    "method_names",
    "resolve_settings",
]
