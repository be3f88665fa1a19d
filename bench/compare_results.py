"""Two runs' results.jsonl compared field by field, with the fields that measure time left out.

    python bench/compare_results.py reports/before/results.jsonl reports/after/results.jsonl
    python bench/compare_results.py before.jsonl after.jsonl --tolerance 1e-4 --shortened

Cases are matched by (case_file, case_id). Every field of each record is compared recursively; a path
names a field (`metrics.forget_rate.value`, `answers[3].edited`). Left out as timing-derived: the run
id, `timings`, every `seconds` field, and the latency metric's value and verdict. Prints each difference,
each field present on one side only, and a last line with the counts; exits 1 when values differ.
With --tolerance, numbers closer than it count as float rounding (counted, not printed one by one); with
--shortened, an answer text that the other side's text begins with counts as stopped earlier (issue 13
stops decoding once an answer is decided), so only texts that say something else are differences.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TIMING_FIELDS = (
    "run_id",
    "timings",
    "timings.*",
    "*.seconds",
    "metrics.latency_overhead.value",
    "metrics.latency_overhead.passed",
    "metrics.latency_overhead_merged.value",
)


def records_by_case(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {(r["case_file"], r["case_id"]): r for r in (json.loads(line) for line in lines if line.strip())}


def _walk(a: Any, b: Any, path: str) -> Iterator[tuple[str, str, Any, Any]]:
    """(kind, path, a, b) for every leaf that differs: kind is 'value', 'only-a' or 'only-b'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in b:
                yield "only-a", sub, a[key], None
            elif key not in a:
                yield "only-b", sub, None, b[key]
            else:
                yield from _walk(a[key], b[key], sub)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b)):
            yield from _walk(x, y, f"{path}[{index}]")
    elif a != b:
        yield "value", path, a, b


def _ignored(path: str, patterns: tuple[str, ...]) -> bool:
    plain = path.replace("[", ".[")  # so that "*.seconds" also matches "method.stages[0].seconds"
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(plain, p) for p in patterns)


def _excused(kind: str, path: str, a: Any, b: Any, tolerance: float, shortened: bool) -> str:
    """'rounding' or 'shortened' where the options excuse a differing value, else `kind`."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if kind == "value" and numbers and abs(a - b) <= tolerance:
        return "rounding"
    texts = isinstance(a, str) and isinstance(b, str) and path.rsplit(".", 1)[-1] in ("base", "edited")
    if kind == "value" and shortened and texts and (a.startswith(b) or b.startswith(a)):
        return "shortened"
    return kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore", nargs="*", default=[], metavar="GLOB", help="more field paths to leave out")
    parser.add_argument("--tolerance", type=float, default=0.0, help="numbers closer than this are rounding")
    parser.add_argument("--shortened", action="store_true", help="an answer text cut shorter is not a difference")
    args = parser.parse_args()
    patterns = TIMING_FIELDS + tuple(args.ignore)
    before, after = records_by_case(args.before), records_by_case(args.after)
    counts = {"value": 0, "only-a": 0, "only-b": 0, "rounding": 0, "shortened": 0}
    largest = 0.0
    compared = 0
    for key in sorted(set(before) | set(after)):
        if key not in before or key not in after:
            print(f"{key[1]}: only in {'before' if key in before else 'after'}")
            counts["only-a" if key in before else "only-b"] += 1
            continue
        for kind, path, a, b in _walk(before[key], after[key], ""):
            if _ignored(path, patterns):
                continue
            kind = _excused(kind, path, a, b, args.tolerance, args.shortened)
            counts[kind] += 1
            if kind == "rounding":
                largest = max(largest, abs(a - b))
                continue
            if kind == "shortened":
                continue
            print(
                f"{key[1]}: {path}: "
                + {"value": f"{a!r} -> {b!r}", "only-a": f"only before ({a!r})", "only-b": f"only after ({b!r})"}[kind]
            )
        compared += 1
    print(
        f"{compared} cases compared; {counts['value']} values differ; {counts['only-a']} fields only before; "
        f"{counts['only-b']} fields only after (timings, seconds and the latency values left out)"
        + (
            f"; {counts['rounding']} numbers within {args.tolerance:g} (largest {largest:.2g})"
            if args.tolerance
            else ""
        )
        + (f"; {counts['shortened']} answer texts stopped earlier" if args.shortened else "")
    )
    return 1 if counts["value"] else 0


if __name__ == "__main__":
    sys.exit(main())
