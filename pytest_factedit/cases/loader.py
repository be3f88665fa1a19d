"""Reading fact case files: safe YAML, `_defaults.yaml` layering, and which files are cases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import CaseError, printable, shown
from ..infra.files import read_regular
from .schema import CaseDefaults, FactCase, parse_case, parse_defaults

DEFAULTS_FILE = "_defaults.yaml"
CASE_SUFFIXES = (".yaml", ".yml")


MAX_FILE_BYTES = 1_000_000  # a fact case is a few kB; anything near this is not one
MAX_NODES = 100_000  # YAML nodes once every alias is expanded (a fact case has hundreds)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


# the base is picked at import (libyaml's loader where installed), which mypy cannot type
class _CaseLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """yaml's safe loader (libyaml's where installed) that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
                line, key = key_node.start_mark.line + 1, (key_node.tag, key_node.value)
                if key in seen:
                    raise _DuplicateKey(key_node.value, line, seen[key])
                seen[key] = line
        # the base class is chosen at import (libyaml's or Python's), so mypy sees Any; a mapping node gives a dict
        return cast("dict[Any, Any]", super().construct_mapping(node, deep))


def _expanded_size(root: Node, cap: int) -> int:
    """How many nodes the document has with every alias expanded, counted without expanding (up to `cap`)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise _RecursiveAlias
        open_nodes.add(id(node))
        children = node.value if isinstance(node, SequenceNode) else []
        if isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total = min(cap + 1, total + size(child))
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


class _RecursiveAlias(Exception):
    pass


def _regular_file_inside(path: Path, folder: Path) -> Path:
    """Where `path` leads, refused unless it lies inside `folder` (links followed): a link out of the
    folder could show a file of the CI runner (a token) in an error. `read_regular` checks its kind."""
    try:
        target, base = Path(path).resolve(), Path(folder).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise CaseError(path, None, f"cannot read file: {exc}") from exc
    if not target.is_relative_to(base):
        raise CaseError(
            path,
            None,
            f"expected a file inside the case folder {printable(str(base))}, found a symlink that leads out "
            "of it: a case file is read from its folder only; copy the file in instead",
        )
    return target


def _read_text(path: Path, folder: Path) -> str:
    """The file's text, from at most MAX_FILE_BYTES + 1 bytes read (the size on disk is not trusted)."""
    target = _regular_file_inside(path, folder)
    try:
        data, kind = read_regular(target, MAX_FILE_BYTES)
    except OSError as exc:
        raise CaseError(path, None, f"cannot read file: {exc.strerror or exc}") from exc
    if kind:
        raise CaseError(path, None, f"expected a regular file, found {kind}: a case file is YAML text")
    if len(data) > MAX_FILE_BYTES:
        raise CaseError(path, None, f"the file is larger than {MAX_FILE_BYTES:,} bytes: not a fact case")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaseError(
            path,
            None,
            f"expected UTF-8 text, found byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}: save the file as UTF-8",
        ) from exc


def _parse(path: Path, text: str) -> Any:
    """The YAML document, refused before construction when its aliases expand past MAX_NODES."""
    loader = _CaseLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_NODES) > MAX_NODES:
            raise CaseError(
                path,
                None,
                f"the YAML expands to more than {MAX_NODES:,} values once its aliases "
                "(*name) are repeated: a fact case needs far fewer; write the values out",
            )
        return loader.construct_document(node)
    except _RecursiveAlias as exc:
        raise CaseError(path, None, "invalid YAML: an alias refers to the collection that contains it") from exc
    except _DuplicateKey as exc:
        raise CaseError(
            path,
            exc.key,
            f"duplicate key (lines {exc.first} and {exc.line}): YAML would keep only the last value; remove one",
        ) from exc
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong with the YAML and where, without the line itself (yaml quotes it: it may be a secret)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    mark = exc.problem_mark or exc.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return printable(" ".join(filter(None, (exc.context, exc.problem))))[:200] + where


def read_yaml_mapping(path: Path, folder: Path | None = None) -> dict[str, Any]:
    """Parse a YAML file with the safe loader; it must hold a mapping with string keys.

    Bounded: a regular file inside `folder` (default: its own folder), at most MAX_FILE_BYTES, at most
    MAX_NODES values with aliases expanded, no duplicate keys. A file that is no mapping is shown by the
    type of what it holds only: it may be another file than a case (a symlinked secret).
    """
    text = _read_text(path, Path(path).parent if folder is None else folder)
    try:
        data = _parse(path, text)
    except yaml.YAMLError as exc:
        raise CaseError(path, None, f"invalid YAML: {_yaml_problem(exc)}") from exc
    except (RecursionError, ValueError, OverflowError) as exc:
        raise CaseError(path, None, f"invalid YAML: {type(exc).__name__}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CaseError(path, None, f"expected a mapping of case keys, found {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise CaseError(path, None, f"expected string keys, found a key of type {type(key).__name__}")
    return data


def load_defaults(path: Path, folder: Path | None = None) -> CaseDefaults:
    """Load and validate one `_defaults.yaml` (a regular file inside `folder`, default: its own)."""
    return parse_defaults(path, read_yaml_mapping(path, folder))


def defaults_for(case_path: Path, root: Path | None = None) -> CaseDefaults:
    """Merge every `_defaults.yaml` from `root` (or the filesystem root) down to the case's folder.

    Each is read only from inside `root` (its own folder without one): anything of that name is
    checked, so a link out of the folder is refused, not skipped."""
    folder = Path(case_path).resolve().parent
    top = Path(root).resolve() if root is not None else None
    chain = [folder]
    while top is not None and chain[-1] != top and chain[-1].parent != chain[-1] and top in chain[-1].parents:
        chain.append(chain[-1].parent)
    merged = CaseDefaults()
    for directory in reversed(chain):
        candidate = directory / DEFAULTS_FILE
        if os.path.lexists(candidate):
            within = top if top is not None and directory.is_relative_to(top) else directory
            merged = merged.merged_with(load_defaults(candidate, within))
    return merged


def load_case(path: Path | str, root: Path | str | None = None, folder: Path | str | None = None) -> FactCase:
    """Load one case file, with the `_defaults.yaml` files between `root` and its folder.

    `folder` is the case folder it was found in (default: the one it lies in): the file, or what a
    symlink leads to, must be a regular file inside it."""
    path = Path(path)
    defaults = defaults_for(path, Path(root) if root is not None else path.resolve().parent)
    return parse_case(path, read_yaml_mapping(path, Path(folder) if folder is not None else None), defaults)


def claim_id(claimed: dict[str, Path], case: FactCase, path: Path) -> None:
    """Record that `path` holds `case.id`; CaseError when another file of the run holds it already.

    Files are told apart by their absolute path, links not followed, and also claimed by the file they
    resolve to (a key no id can be: ids hold no '/'), so a symlink to another case of the run is a
    duplicate, not the same case run twice.
    """
    here = Path(os.path.abspath(path))
    other = claimed.setdefault(case.id, here)
    if other != here:
        link = " (one is a symlink to the other)" if other.resolve() == here.resolve() else ""
        raise CaseError(
            path,
            "id",
            f"duplicate case id {shown(case.id, typed=False)}: {printable(str(other))} has it too{link}; "
            "ids name the saved adapters and the records, so each must be unique",
        )
    other = claimed.setdefault(str(here.resolve()), here)
    if other != here:
        raise CaseError(
            path,
            None,
            f"expected one file per case, found the file {printable(str(other))} holds (one is a symlink "
            "to the other), which this run has already: a case runs once; remove the link",
        )


def is_case_file(path: Path) -> bool:
    """YAML files whose name does not start with '_' are fact cases."""
    return path.suffix in CASE_SUFFIXES and not path.name.startswith("_")
