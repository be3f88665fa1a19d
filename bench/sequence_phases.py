"""The seconds of a sequence's checks around its edits, on a run put back from its checkpoint.

    python bench/sequence_phases.py -n 1000 --latency-repeats 1 --fluency-tokens 0 --checkpoint DIR
    cp bench/sequence_phases.py WORKTREE/bench/   # another revision, in a git worktree of it:
    cd WORKTREE && PYTHONPATH=. python bench/sequence_phases.py -n 1000 ... --checkpoint DIR

Runs bench/sequential.py's main with the same arguments and prints, after its tables, the seconds of three
parts of `run_sequence` (pytest_factedit/run/many.py): the base answers of the rows checked again after
the last edit (and of the controls), putting back the checkpoint's edits (with the base pass over any
fact not logged yet), and the checks after the last edit (every end row answered with every edit on, and
the latency with every edit on and off). On a checkpoint that logged every fact, no edit is made again,
so the checks after the last edit can be timed for two revisions (the second in a worktree, as above)
with the same edits kept, in a few minutes each instead of a whole sequence.

A run put back has no base pass over the facts it puts back, so it decodes their end rows' base answers
itself, and its routers have no kept states of those rows: a sequence run from its start takes less for
both (docs/performance.md, "A sequence's end-of-run rows read from the base pass").
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

PHASES = {
    "_answered_before_any_edit": "the end rows' and controls' base answers",
    "_resumed_on_base": "putting the logged edits back (and the base pass over the facts left)",
    "_answered_at_end": "the checks after the last edit (answers, latency with every edit on and off)",
}


def timing(function: Callable[..., Any], seconds: dict[str, float]) -> Callable[..., Any]:
    """`function`, adding the seconds each call takes to `seconds[its name]`."""

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[function.__name__] = seconds.get(function.__name__, 0.0) + time.perf_counter() - started

    return timed


def main() -> int:
    import sequential

    from pytest_factedit.run import many

    seconds: dict[str, float] = {}
    for name in PHASES:
        setattr(many, name, timing(getattr(many, name), seconds))
    code = sequential.main()
    import pytest_factedit

    print(f"\nphases of the sequence (pytest_factedit from {pytest_factedit.__file__}):\n")
    print("| phase | seconds |\n|---|---:|")
    for name, what in PHASES.items():
        print(f"| {what} (`{name}`) | {seconds[name]:.1f} |" if name in seconds else f"| {what} | did not run |")
    return code


if __name__ == "__main__":
    sys.exit(main())
