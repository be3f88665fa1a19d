"""Editing methods behind one Editor interface, looked up by name (imports torch only when used)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .settings import EditSettings, MethodError, settings_from

_REGISTRY: dict[str, Callable[[], Any]] = {}


def register(name: str, factory: Callable[[], Any]) -> None:
    """Make an editor available as `method.name` / `--factedit-method`."""
    _REGISTRY[name] = factory


def _ia3_two_stage() -> Any:
    from .ia3_two_stage import IA3TwoStageEditor

    return IA3TwoStageEditor()


register("ia3-two-stage", _ia3_two_stage)


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_editor(name: str) -> Any:
    """The editor registered under `name`."""
    if name not in _REGISTRY:
        raise MethodError("name", f"unknown method {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


def resolve_settings(method: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> EditSettings:
    """Validated settings for a case's `method:` mapping and command-line overrides."""
    return settings_from(method, method_names(), overrides)


__all__ = ["EditSettings", "MethodError", "get_editor", "method_names", "register", "resolve_settings"]
