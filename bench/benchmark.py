"""Performance figures for docs/performance.md, next to the budgets of design.md.

    python bench/benchmark.py                 # everything (about 10-15 minutes on a 2-core CPU)
    python bench/benchmark.py --skip-conversion --skip-suite

Prints: first-conversion seconds of the embedded model (into a throw-away cache), cached load
seconds, edit seconds per shipped case (median, max) and the wall seconds of `pytest fact_cases/`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGETS = {
    "first conversion (s)": 120.0,
    "cached load (s)": 5.0,
    "edit per case, median (s)": 10.0,
    "suite wall (s)": 180.0,
}


def first_conversion_seconds() -> float:
    """Convert the embedded GGUF into an empty cache in a fresh process; returns that process's figure."""
    with tempfile.TemporaryDirectory() as cache:
        code = "from pytest_factedit.model.load import load; lm = load(None, 'cpu'); print(lm.conversion_seconds)"
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "FACTEDIT_CACHE": cache},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[-1])


def cached_load_seconds() -> float:
    """load() from a warm cache, in a fresh process (torch/transformers imports included)."""
    code = (
        "import time; t = time.perf_counter(); from pytest_factedit.model.load import load; "
        "load(None, 'cpu'); print(time.perf_counter() - t)"
    )
    subprocess.run(
        [sys.executable, "-c", "from pytest_factedit.model.load import load; load(None, 'cpu')"],
        check=True,
        capture_output=True,
    )  # make sure the cache exists
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def edit_seconds() -> list[tuple[str, float]]:
    from pytest_factedit.cases import is_case_file, load_case
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.model.load import load
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache

    lm = load(None, "cpu")
    cache = BaseAnswerCache()
    out = []
    for path in sorted((REPO / "fact_cases").glob("*.yaml")):
        if not is_case_file(path):
            continue
        case = load_case(path, root=REPO)
        outcome = run_case(lm, case, resolve_settings(case.method), cache)
        if outcome.status == "ran":
            out.append((case.id, outcome.timings["edit_seconds"]))
            print(
                f"  {case.id}: edit {outcome.timings['edit_seconds']:.1f}s "
                f"(stages {[s['steps'] for s in outcome.stages]})",
                flush=True,
            )
    return out


def suite_wall_seconds() -> tuple[float, str]:
    """Wall seconds of `pytest fact_cases/` in a fresh process, and pytest's closing line."""
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "fact_cases/",
            "-q",
            "-p",
            "no:cacheprovider",
            "--factedit-run-id",
            f"benchmark-suite-{time.strftime('%Y%m%d-%H%M%S')}",
        ],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
    )
    closing = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"exit {done.returncode}"
    return time.perf_counter() - start, closing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-conversion", action="store_true")
    parser.add_argument("--skip-suite", action="store_true")
    args = parser.parse_args()
    figures: dict[str, float | None] = {}
    if not args.skip_conversion:
        figures["first conversion (s)"] = first_conversion_seconds()
    figures["cached load (s)"] = cached_load_seconds()
    edits = edit_seconds()
    times = [t for _, t in edits]
    figures["edit per case, median (s)"] = statistics.median(times) if times else None
    figures["edit per case, max (s)"] = max(times) if times else None
    suite_result = None
    if not args.skip_suite:
        figures["suite wall (s)"], suite_result = suite_wall_seconds()
    print(f"\ncases edited: {len(edits)}; cores: {os.cpu_count()}")
    if suite_result:
        print(f"pytest fact_cases/: {suite_result}")
    print()
    print("| figure | measured | budget (design.md) | distance |")
    print("|---|---|---|---|")
    for name, value in figures.items():
        budget = BUDGETS.get(name)
        shown = "n/a" if value is None else f"{value:.1f}"
        distance = "" if budget is None or value is None else f"{value / budget:.1f}x budget"
        print(f"| {name} | {shown} | {'' if budget is None else f'<= {budget:g}'} | {distance} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
