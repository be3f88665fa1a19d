"""Many edits on one model: N known CounterFact facts applied one after another (`--factedit-mode sequential`).

    python bench/sequential.py              # 50 facts (about 15 minutes on a 2-core CPU)
    python bench/sequential.py -n 10 --method full-ft

Each fact is edited on the model the earlier edits left (each merged before the next), measured
right after its own edit, and checked again after the last one. Prints the end-of-sequence figures
and the retention of earlier edits by position, as markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from facts import fact_arguments, load_known_cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=50)
    parser.add_argument("--method", default="ia3-two-stage")
    args = parser.parse_args()

    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.runner import run_sequence

    lm, cases, folder = load_known_cases(args)
    started = time.perf_counter()
    with folder:
        result = run_sequence(lm, cases, lambda case: resolve_settings(case.method, {"name": args.method}))
    ran = [o for o in result.outcomes if o.status == "ran"]
    for position, outcome in enumerate(result.outcomes):
        kept = result.retained_by_case.get(outcome.case.id)
        print(f"  {position:3d} {outcome.case.id}: {outcome.status}"
              + (f" new_fact={outcome.metrics['new_fact_accuracy'].value:.2f} "
                 f"controls={outcome.metrics['control_retention'].value} retained_at_end={kept:.2f}"
                 if outcome.status == "ran" else f" ({outcome.reason[:100]})"), flush=True)
    print(f"\nembedded model (CPU), {len(cases)} known CounterFact facts (seed {args.seed}), method {args.method}, "
          f"sequential: {time.perf_counter() - started:.0f}s in all, base restored: {result.base_restored}\n")
    print("| figure | value |")
    print("|---|---|")
    print(f"| facts edited / skipped (old answer already changed) / errors | {len(ran)} / "
          f"{sum(o.status == 'skipped' for o in result.outcomes)} / {sum(o.status == 'error' for o in result.outcomes)} |")
    print(f"| new-fact accuracy right after each edit (mean) | "
          f"{statistics.mean(o.metrics['new_fact_accuracy'].value for o in ran):.3f} |" if ran else "| n/a | |")
    for metric in (result.edits_retained, result.controls_retained):
        value = "n/a" if metric.value is None else f"{metric.value:.3f}"
        print(f"| {metric.name} after the last edit ({metric.samples} samples) | {value} |")
    quarter = max(1, len(ran) // 4)
    for start in range(0, len(ran), quarter):
        chunk = ran[start:start + quarter]
        share = statistics.mean(result.retained_by_case[o.case.id] for o in chunk)
        print(f"| edits {start + 1}-{start + len(chunk)} still held at the end | {share:.3f} |")
    print(f"| edit seconds, median | {statistics.median(o.timings['edit_seconds'] for o in ran):.1f} |" if ran else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
