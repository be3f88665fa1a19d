"""Reading fact case files: safe YAML, `_defaults.yaml` layering, and which files are cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import CaseError
from .schema import CaseDefaults, FactCase, parse_case, parse_defaults, type_name

DEFAULTS_FILE = "_defaults.yaml"
CASE_SUFFIXES = (".yaml", ".yml")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file with safe_load; it must hold a mapping with string keys."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(path, None, f"cannot read file: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CaseError(path, None, f"invalid YAML: {exc}") from exc
    except (RecursionError, ValueError, OverflowError) as exc:
        raise CaseError(path, None, f"invalid YAML: {exc!r}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CaseError(path, None, f"expected a mapping of keys at the top level, found {type_name(data)}")
    for key in data:
        if not isinstance(key, str):
            raise CaseError(path, str(key), f"expected string keys, found {type_name(key)} {key!r}")
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


def is_case_file(path: Path) -> bool:
    """YAML files whose name does not start with '_' are fact cases."""
    return path.suffix in CASE_SUFFIXES and not path.name.startswith("_")
