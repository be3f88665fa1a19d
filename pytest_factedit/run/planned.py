"""What this run runs, as collection planned it: each case with its thresholds and edit settings resolved
once, and the suites that pool cases."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..edit import resolve_settings

if TYPE_CHECKING:
    from ..cases.schema import FactCase
    from ..edit.settings import EditSettings
    from .options import Options


@dataclass(frozen=True)
class PlannedCase:
    """A case with --factedit-threshold over its YAML thresholds, and its `method:` resolved with the
    command-line overrides: what collection validated is what runs."""

    case: FactCase
    settings: EditSettings


def plan_case(case: FactCase, options: Options) -> PlannedCase:
    """`case` as this run runs it; an invalid `method:` raises FactEditError here, with its key."""
    settings = resolve_settings(case.method, options.overrides())
    if options.thresholds:
        case = dataclasses.replace(case, thresholds={**case.thresholds, **dict(options.thresholds)})
    return PlannedCase(case, settings)


@dataclass(frozen=True)
class Suite:
    """A folder holding a `_defaults.yaml`: the cases below it, (case file, case id), and its `suite_thresholds`
    (with --factedit-threshold on top)."""

    folder: str
    members: tuple[tuple[str, str], ...]
    thresholds: dict[str, float]


def suite_thresholds(thresholds: dict[str, float], options: Options) -> dict[str, float]:
    """A suite's `suite_thresholds` with --factedit-threshold on top."""
    return {**thresholds, **dict(options.thresholds)}
