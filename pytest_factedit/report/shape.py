"""A record read back from disk checked against the TypedDict that describes it (report/records.py).

`factedit show`, `factedit report` and the baseline read files that CI artifacts, other versions or
people may have changed; a value of the wrong type must be a clear error naming the key, not a
traceback deep in a table. The TypedDicts are the one description of the shape, so this reads them.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import shown


def shape_problem(value: Any, hint: Any, where: str, required: tuple[str, ...] | None = None) -> str | None:
    """Why `value` does not fit `hint` (the first misfit, with its dotted key), or None when it fits.

    For a TypedDict only the keys in `required` (default: the TypedDict's own required keys) must be
    there; every key that is there must have its declared type. Keys it does not declare are let be.
    """
    if hint is Any:
        return None
    if typing.is_typeddict(hint):
        return _typed_dict_problem(value, hint, where, required)
    origin = get_origin(hint)
    if origin in (dict, list):
        return _container_problem(value, origin, get_args(hint), where)
    if origin in (Union, types.UnionType):
        fits = any(shape_problem(value, option, where) is None for option in get_args(hint))
    elif origin is Literal:
        fits = value in get_args(hint)
    else:
        fits = _is_instance(value, hint)
    return None if fits else f"{where}: expected {_describe(hint)}, found {shown(value)}"


def _typed_dict_problem(value: Any, hint: Any, where: str, required: tuple[str, ...] | None) -> str | None:
    if not isinstance(value, dict):
        return f"{where}: expected an object, found {shown(value)}"
    needed = hint.__required_keys__ if required is None else required
    missing = [key for key in sorted(needed) if key not in value]
    if missing:
        return f"{where}: the key {missing[0]!r} is missing"
    for key, sub in _declared(hint).items():
        if key in value:
            found = shape_problem(value[key], sub, f"{where}.{key}")
            if found:
                return found
    return None


@functools.cache
def _declared(hint: Any) -> dict[str, Any]:
    """A TypedDict's resolved field types, once per TypedDict (a results.jsonl repeats them per record)."""
    return get_type_hints(hint)


def _container_problem(value: Any, origin: type, args: tuple[Any, ...], where: str) -> str | None:
    if not isinstance(value, origin):
        return f"{where}: expected {'an object' if origin is dict else 'a list'}, found {shown(value)}"
    if origin is dict:
        items = [(f"{where}.{key}", item) for key, item in value.items()]
        item_hint = args[1] if args else Any
    else:
        items = [(f"{where}[{index}]", item) for index, item in enumerate(value)]
        item_hint = args[0] if args else Any
    for place, item in items:
        found = shape_problem(item, item_hint, place)
        if found:
            return found
    return None


def _is_instance(value: Any, hint: Any) -> bool:
    if hint is type(None) or hint is None:
        return value is None
    if hint is float:  # JSON has one number type: an int is a float here, a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in get_args(hint))
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(str(option) for option in get_args(hint))
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    if get_origin(hint) is dict or typing.is_typeddict(hint):
        return "an object"
    if get_origin(hint) is list:
        return "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))
