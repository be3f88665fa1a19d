"""Editing methods behind one Editor interface, in one table keyed by name: the built-in ones, those a
`conftest.py` or plugin returns from the `pytest_factedit_editors` hook, and those installed packages
declare in the `pytest_factedit.editors` entry point group.

Importing this package does not import torch or peft: the editors import them when they edit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from importlib import metadata
from typing import TYPE_CHECKING, Any, get_args

from ..errors import FactEditError, MethodError, did_you_mean, shown
from .alphaedit import AlphaEditEditor, AlphaEditSettings
from .base import EditHandle, Editor, EditRequest, Scope
from .full_ft import FullFineTuneEditor, FullFineTuneSettings, MlpFineTuneEditor, MlpFineTuneSettings
from .ia3 import IA3AllLayersEditor, IA3Settings, IA3SingleStageEditor, IA3TwoStageEditor, IA3TwoStageSettings
from .peft_staged import LoraEditor, LoraSettings, PeftStagedEditor, PeftStageTrainer
from .rank_one import KeyValueSettings
from .rome import RomeEditor
from .settings import (
    DEFAULT_METHOD,
    EditSettings,
    KeyStatisticsSettings,
    PromptSettings,
    TrainingLoopSettings,
    UnlearnStageSettings,
    changed_default,
    setting,
    unknown_key,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..model.decoding import DecodeRow

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
    problem = _settings_problem(cls)
    if problem:
        return problem
    if not callable(getattr(cls, "apply", None)):
        return "it needs apply(model, tokenizer, request, targets, settings) returning an EditHandle"
    return ""


def _settings_problem(cls: type) -> str:
    """Why the settings `cls` declares cannot be an editor's ('' when they can): `settings_class`, optional,
    must be a frozen dataclass deriving from EditSettings whose every field has a rule its default keeps."""
    if hasattr(cls, "defaults"):
        return (
            "`defaults` is no longer read: declare the editor's settings as a @dataclass(frozen=True) deriving "
            "from a shared part (edit/settings.py), its own defaults as the fields' defaults, and name it in "
            "`settings_class` (examples/custom_editor/conftest.py)"
        )
    declared: object = settings_class_of(cls)
    if not isinstance(declared, type) or not issubclass(declared, EditSettings):
        return f"`settings_class` must be a dataclass deriving from EditSettings, found {shown(declared)}"
    params = vars(declared).get("__dataclass_params__")
    if params is None or not params.frozen:
        return f"`settings_class` {declared.__qualname__} must be decorated with @dataclass(frozen=True)"
    ruleless = [spec.name for spec in fields(declared) if "rule" not in spec.metadata]
    if ruleless:
        return f"`settings_class` {declared.__qualname__}: declare {', '.join(ruleless)} with setting(default, kind)"
    try:
        declared()
    except FactEditError as exc:
        return f"`settings_class` {declared.__qualname__}: its defaults break a rule: {exc}"
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


def editor_class(name: str) -> type[Editor]:
    """The editor class registered under `name`; an unknown name may be a broken entry point's: said so."""
    _load_installed()
    if name not in EDITORS:
        broken = "".join(f"; {why}" for why in _broken.values())
        raise MethodError(
            "name", f"unknown method {name!r}; known: {', '.join(EDITORS)}" + did_you_mean(name, EDITORS) + broken
        )
    return EDITORS[name]


def get_editor(name: str) -> Editor:
    """The editor registered under `name`."""
    return editor_class(name)()


def planned_base_decodes(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, settings: EditSettings
) -> list[DecodeRow]:
    """The base-model decodes the editor of `settings` will ask for `request`, from its optional `base_decodes`
    (none for an editor without one): a run decodes them with the base probe's rows, before the edit."""
    plan = getattr(get_editor(settings.name), "base_decodes", None)
    return list(plan(tokenizer, request, settings)) if callable(plan) else []


def settings_class_of(editor: type[Editor]) -> type[EditSettings]:
    """The settings an editor reads: its `settings_class`, or TrainingLoopSettings when it declares none."""
    declared: type[EditSettings] = getattr(editor, "settings_class", TrainingLoopSettings)
    return declared


def resolve_settings(method: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> EditSettings:
    """Validated settings for a case's `method:` mapping and command-line overrides (which win), as the
    chosen editor's settings class. A key that class does not declare is refused, naming the editors
    that read it."""
    merged = {**dict(method), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    name = EditSettings.checked("name", merged.get("name", DEFAULT_METHOD))
    chosen = settings_class_of(editor_class(name))
    declared = chosen.keys()
    for key in merged:
        if key not in declared:
            readers = tuple(other for other, cls in EDITORS.items() if key in settings_class_of(cls).keys())
            raise unknown_key(key, name, declared, readers)
    return chosen(**{**merged, "name": name})


__all__ = [
    "EDITORS",
    "ENTRY_POINT_GROUP",
    "AlphaEditSettings",
    "EditHandle",
    "EditRequest",
    "EditSettings",
    "Editor",
    "FullFineTuneSettings",
    "IA3Settings",
    "IA3TwoStageEditor",
    "IA3TwoStageSettings",
    "KeyStatisticsSettings",
    "KeyValueSettings",
    "LoraSettings",
    "MethodError",
    "MlpFineTuneSettings",
    "PeftStageTrainer",
    "PeftStagedEditor",
    "PromptSettings",
    "TrainingLoopSettings",
    "UnlearnStageSettings",
    "changed_default",
    "editor_class",
    "get_editor",
    "installed_editor_problems",
    "method_names",
    "planned_base_decodes",
    "register_editor",
    "register_hook_editors",
    "resolve_settings",
    "setting",
    "settings_class_of",
]
