"""A record read back from disk checked against the TypedDict that describes it (report/records.py).

`factedit show`, `factedit report` and the baseline read files that CI artifacts, other versions or
people may have changed; a value of the wrong type must be a clear error naming the key, not a
traceback deep in a table. The TypedDicts are the one description of the shape, so this reads them.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import FactEditError, shown

MAX_NESTING = 32  # levels a file read back may nest: what the tool writes nests under 10


@dataclass(frozen=True)
class Misfit:
    """Where a value read back does not fit its shape (a dotted key, '' for the whole value), and how."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


def shape_problem(value: Any, hint: Any, where: str, required: tuple[str, ...] | None = None) -> str | None:
    """Why `value` does not fit `hint` (the first misfit, with its dotted key), or None when it fits.

    For a TypedDict only the keys in `required` (default: the TypedDict's own required keys) must be
    there; every key that is there must have its declared type. Keys it does not declare are let be.
    """
    found = misfit(value, hint, where, required)
    return None if found is None else str(found)


def misfit(
    value: Any, hint: Any, where: str = "", required: tuple[str, ...] | None = None, values: bool = True
) -> Misfit | None:
    """shape_problem's answer with the key apart; `values=False` names only the type of what was found
    (for files whose values must not be echoed: a baseline, a summary)."""
    if hint is Any:
        return None
    if typing.is_typeddict(hint):
        return _typed_dict_problem(value, hint, where, required, values)
    origin = get_origin(hint)
    if origin in (dict, list):
        return _container_problem(value, origin, get_args(hint), where, values)
    if origin in (Union, types.UnionType):
        fits = any(misfit(value, option, where) is None for option in get_args(hint))
    elif origin is Literal:
        fits = value in get_args(hint)
    else:
        fits = _is_instance(value, hint)
    return None if fits else Misfit(where, f"expected {_describe(hint)}, found {described(value, values)}")


def described(value: Any, values: bool) -> str:
    """What was found: a bounded repr with its type, or (`values=False`) the type alone."""
    if values or value is None or isinstance(value, (list, tuple, dict)):
        return shown(value)
    return type(value).__name__


def _inside(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _typed_dict_problem(
    value: Any, hint: Any, where: str, required: tuple[str, ...] | None, values: bool
) -> Misfit | None:
    if not isinstance(value, dict):
        return Misfit(where, f"expected an object, found {described(value, values)}")
    needed = hint.__required_keys__ if required is None else required
    missing = [key for key in sorted(needed) if key not in value]
    if missing:
        return Misfit(where, f"the key {missing[0]!r} is missing")
    for key, sub in _declared(hint).items():
        if key in value:
            found = misfit(value[key], sub, _inside(where, key), values=values)
            if found:
                return found
    return None


@functools.cache
def _declared(hint: Any) -> dict[str, Any]:
    """A TypedDict's resolved field types, once per TypedDict (a results.jsonl repeats them per record)."""
    return get_type_hints(hint)


def _container_problem(
    value: Any, origin: type[dict[Any, Any]] | type[list[Any]], args: tuple[Any, ...], where: str, values: bool
) -> Misfit | None:
    if not isinstance(value, origin):
        return Misfit(
            where, f"expected {'an object' if origin is dict else 'a list'}, found {described(value, values)}"
        )
    if isinstance(value, dict):  # after the check above: the same as `origin is dict`
        items = [(_inside(where, key), item) for key, item in value.items()]
        item_hint = args[1] if args else Any
    else:
        items = [(f"{where}[{index}]", item) for index, item in enumerate(value)]
        item_hint = args[0] if args else Any
    for place, item in items:
        found = misfit(item, item_hint, place, values=values)
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


def nesting_misfit(value: Any, limit: int = MAX_NESTING) -> Misfit | None:
    """The first object or list nested more than `limit` levels deep, found without recursion: the
    readers, tables and HTML writer recurse into what they are given."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if depth > limit:
            return Misfit(where, f"expected at most {limit} levels of nested objects and lists, found more")
        children = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in children:
            if isinstance(child, (dict, list)):
                place = _inside(where, key) if isinstance(item, dict) else f"{where}[{key}]"
                stack.append((child, depth + 1, place))
    return None


def utf8_text(data: bytes, path: Path | str, error: type[FactEditError], fix: str, line: int | None = None) -> str:
    """`data` decoded as UTF-8, or `error` naming the file, the line (when given) and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"line {line}: " if line is not None else ""
        raise error(
            f"{where}expected UTF-8 text, found the byte {data[exc.start]:#04x} at offset {exc.start}, which is "
            f"not UTF-8. Fix: {fix}",
            path=path,
        ) from None


def json_value(text: str, path: Path | str, error: type[FactEditError], fix: str, line: int | None = None) -> Any:
    """`text` parsed as JSON and nested at most MAX_NESTING levels, or `error` with the file, line and key."""
    where = f"line {line}: " if line is not None else ""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        nested: Misfit | None = Misfit(
            "", f"expected at most {MAX_NESTING} levels of nested objects and lists, found more"
        )
    except ValueError as exc:
        what = f"line {line} is not a JSON record" if line is not None else "not JSON"
        raise error(f"{what}: {exc}. Fix: {fix}", path=path) from None
    else:
        nested = nesting_misfit(value) if isinstance(value, (dict, list)) else None
    if nested is not None:
        raise error(f"{where}{nested.message}. Fix: {fix}", path=path, key=nested.key or None)
    return value
