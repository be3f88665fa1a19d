"""Reading fact case files: safe YAML, `_defaults.yaml` layering, and which files are cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import CaseError, shown
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
        return super().construct_mapping(node, deep)


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


def _read_text(path: Path) -> str:
    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            raise CaseError(path, None, f"the file is larger than {MAX_FILE_BYTES:,} bytes: not a fact case")
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(path, None, f"cannot read file: {exc}") from exc


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


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file with the safe loader; it must hold a mapping with string keys.

    Bounded: at most MAX_FILE_BYTES, at most MAX_NODES values with aliases expanded, no duplicate keys.
    """
    text = _read_text(path)
    try:
        data = _parse(path, text)
    except yaml.YAMLError as exc:
        raise CaseError(path, None, f"invalid YAML: {exc}") from exc
    except (RecursionError, ValueError, OverflowError) as exc:
        raise CaseError(path, None, f"invalid YAML: {type(exc).__name__}: {shown(str(exc), 200)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CaseError(path, None, f"expected a mapping of keys at the top level, found {shown(data)}")
    for key in data:
        if not isinstance(key, str):
            raise CaseError(path, shown(key, typed=False), f"expected string keys, found {shown(key)}")
    return data


def load_defaults(path: Path) -> CaseDefaults:
    """Load and validate one `_defaults.yaml`."""
    return parse_defaults(path, read_yaml_mapping(path))


def defaults_for(case_path: Path, root: Path | None = None) -> CaseDefaults:
    """Merge every `_defaults.yaml` from `root` (or the filesystem root) down to the case's folder."""
    folder = Path(case_path).resolve().parent
    top = Path(root).resolve() if root is not None else None
    chain = [folder]
    while top is not None and chain[-1] != top and chain[-1].parent != chain[-1] and top in chain[-1].parents:
        chain.append(chain[-1].parent)
    merged = CaseDefaults()
    for directory in reversed(chain):
        candidate = directory / DEFAULTS_FILE
        if candidate.is_file():
            merged = merged.merged_with(load_defaults(candidate))
    return merged


def load_case(path: Path | str, root: Path | str | None = None) -> FactCase:
    """Load one case file, with the `_defaults.yaml` files between `root` and its folder."""
    path = Path(path)
    defaults = defaults_for(path, Path(root) if root is not None else path.resolve().parent)
    return parse_case(path, read_yaml_mapping(path), defaults)


def claim_id(claimed: dict[str, Path], case: FactCase, path: Path) -> None:
    """Record that `path` holds `case.id`; CaseError when another file of the run holds it already."""
    other = claimed.setdefault(case.id, Path(path).resolve())
    if other != Path(path).resolve():
        raise CaseError(
            path,
            "id",
            f"duplicate case id {shown(case.id, typed=False)}: {other} has it too; ids "
            "name the saved adapters and the records, so each must be unique",
        )


def is_case_file(path: Path) -> bool:
    """YAML files whose name does not start with '_' are fact cases."""
    return path.suffix in CASE_SUFFIXES and not path.name.startswith("_")
