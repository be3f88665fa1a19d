"""Editing methods behind one Editor interface, in one table keyed by name: the built-in ones, those a
`conftest.py` or plugin returns from the `pytest_factedit_editors` hook, and those installed packages
declare in the `pytest_factedit.editors` entry point group.

Importing this package does not import torch or peft: the editors import them when they edit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any, get_args

from ..errors import FactEditError, MethodError, shown
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
_broken: dict[str, str] = {}  # entry point name -> why it could not be loaded (the others are registered)


def _problem(cls: Any) -> str:
    """Why `cls` cannot be an editor ('' when it can): a class with the interface of `base.Editor`."""
    if not isinstance(cls, type):
        return f"expected the editor class itself, found {shown(cls)} (an instance or another value)"
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


def register_hook_editors(returned: object, plugin: str) -> None:
    """Register what one plugin's `pytest_factedit_editors` returned: None, or a list of editor classes.
    Anything else stops the run at start-up naming the plugin, not later inside a case."""
    if returned is None:
        return
    if isinstance(returned, (str, bytes, Mapping, type)) or not isinstance(returned, Iterable):
        raise FactEditError(
            f"pytest_factedit_editors hook: expected a list of editor classes, found {shown(returned)}. "
            "Fix: return [MyEditor] (or None)",
            path=plugin,
        )
    for cls in list(returned):
        try:
            register_editor(cls)
        except MethodError as exc:
            raise FactEditError(f"pytest_factedit_editors hook: {exc.message}", path=plugin) from exc


def _load_installed() -> None:
    """Register the editors installed packages declare (entry point group `pytest_factedit.editors`), each on
    its own: a broken one is kept in `_broken` with its name and error, and the others still register."""
    if _installed:
        return
    _installed.append(True)
    _broken.clear()
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            register_editor(entry.load())
        except Exception as exc:  # a broken package names itself, not a traceback from deep inside
            why = exc.message if isinstance(exc, MethodError) else f"{type(exc).__name__}: {exc}"
            _broken[entry.name] = f"the editor entry point {entry.name!r} ({entry.value}) cannot be loaded: {why}"


def installed_editor_problems() -> list[str]:
    """One line per installed editor entry point that could not be loaded (reading the group once)."""
    _load_installed()
    return list(_broken.values())


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
    try:
        return settings_from(method, names, overrides, {name: cls.defaults for name, cls in EDITORS.items()})
    except MethodError as exc:  # an unknown method may be a broken entry point's: say why it is missing
        if exc.key != "method.name" or not _broken or "unknown method" not in exc.message:
            raise
        raise MethodError("name", f"{exc.message}; {'; '.join(_broken.values())}") from exc


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
    "installed_editor_problems",
    "method_names",
    "register_hook_editors",
    "resolve_settings",
]
