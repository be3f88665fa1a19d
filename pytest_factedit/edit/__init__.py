"""Editing methods behind one Editor interface, looked up by name (imports torch only when used)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .settings import EditSettings, MethodError, settings_from

_REGISTRY: dict[str, Callable[[], Any]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(name: str, factory: Callable[[], Any], defaults: Mapping[str, Any] | None = None) -> None:
    """Make an editor available as `method.name` / `--factedit-method`, with its own setting defaults."""
    _REGISTRY[name] = factory
    _DEFAULTS[name] = dict(defaults or {})


def _peft_staged(class_name: str) -> Callable[[], Any]:
    def factory() -> Any:
        from . import peft_staged

        return getattr(peft_staged, class_name)()
    return factory


def _full_ft() -> Any:
    from .full_ft import FullFineTuneEditor

    return FullFineTuneEditor()


register("ia3-two-stage", _peft_staged("IA3TwoStageEditor"))
register("ia3", _peft_staged("IA3SingleStageEditor"))
register("ia3-all-layers", _peft_staged("IA3AllLayersEditor"))
register("lora", _peft_staged("LoraEditor"), {"lr": 2e-3})
# The paper's foil: plain fine-tuning of every weight on the new answer, without retention or guard.
register("full-ft", _full_ft, {"lr": 2e-5, "kl_weight": 0.0, "guard_weight": 0.0})


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_editor(name: str) -> Any:
    """The editor registered under `name`."""
    if name not in _REGISTRY:
        raise MethodError("name", f"unknown method {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


def resolve_settings(method: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> EditSettings:
    """Validated settings for a case's `method:` mapping and command-line overrides (method defaults first)."""
    return settings_from(method, method_names(), overrides, _DEFAULTS)


__all__ = ["EditSettings", "MethodError", "get_editor", "method_names", "register", "resolve_settings"]
