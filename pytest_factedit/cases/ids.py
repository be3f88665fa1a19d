"""Names that come from data and end up in paths (case ids, run ids): what a safe one is, and the guard
that keeps every path built from one inside its folder."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import FactEditError, shown

MAX_NAME = 128
SAFE_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
RULE = f"letters, digits, '.', '_' and '-' only, not starting with '.' or '-', at most {MAX_NAME} characters"


def name_problem(value: object) -> str | None:
    """Why `value` cannot be a case or run id (None when it can): it names folders and files."""
    if isinstance(value, str) and SAFE_NAME.fullmatch(value):
        return None
    return f"expected {RULE}, found {shown(value)}"


def sequence_folder(position: int, case_id: str) -> str:
    """The folder a sequence's edit is saved to, under DIR/sequence/: its position first, so names sort in order."""
    return f"{position:04d}-{case_id}"


def inside(parent: Path, name: str) -> Path:
    """`parent / name`, resolved, and refused unless it lies strictly inside `parent`."""
    base = Path(parent).resolve()
    target = (base / name).resolve()
    if target == base or not target.is_relative_to(base):
        raise FactEditError(f"refusing to write {shown(name, typed=False)}: it points outside {base}")
    return target
