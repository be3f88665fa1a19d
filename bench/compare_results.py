"""Two runs' results.jsonl compared field by field, with the fields that measure time left out.

    python bench/compare_results.py reports/before/results.jsonl reports/after/results.jsonl

Cases are matched by (case_file, case_id). Every field of each record is compared recursively; a path
names a field (`metrics.forget_rate.value`, `answers[3].edited`). Left out as timing-derived: the run
id, `timings`, every `seconds` field, and the latency metric's value and verdict. Prints each difference,
each field present on one side only, and a last line with the counts; exits 1 when values differ.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore", nargs="*", default=[], metavar="GLOB", help="more field paths to leave out")
    args = parser.parse_args()
    patterns = TIMING_FIELDS + tuple(args.ignore)
    before, after = records_by_case(args.before), records_by_case(args.after)
    counts = {"value": 0, "only-a": 0, "only-b": 0}
    compared = 0
    for key in sorted(set(before) | set(after)):
        if key not in before or key not in after:
            print(f"{key[1]}: only in {'before' if key in before else 'after'}")
            counts["only-a" if key in before else "only-b"] += 1
            continue
        for kind, path, a, b in _walk(before[key], after[key], ""):
            if _ignored(path, patterns):
                continue
            counts[kind] += 1
            print(
                f"{key[1]}: {path}: "
                + {"value": f"{a!r} -> {b!r}", "only-a": f"only before ({a!r})", "only-b": f"only after ({b!r})"}[kind]
            )
        compared += 1
    print(
        f"{compared} cases compared; {counts['value']} values differ; {counts['only-a']} fields only before; "
        f"{counts['only-b']} fields only after (timings, seconds and the latency value left out)"
    )
    return 1 if counts["value"] else 0


if __name__ == "__main__":
    sys.exit(main())
