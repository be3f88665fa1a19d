"""Does localization matter? The same edits with localized, all (`none`) and random layers.

    python bench/ablation.py                     # 30 known CounterFact facts (about 25 minutes on 2 cores)
    python bench/ablation.py -n 10 --seed 1

Facts: a seeded sample of ../shared/data/counterfact-train.json (or --data) that the embedded model
answers correctly. Each becomes a case (prompt, paraphrase, locality control) plus the shared
controls of fact_cases/_defaults.yaml, and is edited once per arm with the default editor. Prints a
markdown table of mean metrics per arm.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from facts import fact_arguments, load_known_cases

ARMS = {
    "localized (trace)": {"localize": "trace"},
    "none (every layer)": {"localize": "none"},
    "random layers": {"localize": "random"},
}
METRICS = ("new_fact_accuracy", "forget_rate", "paraphrase_accuracy", "control_retention")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=30)
    args = parser.parse_args()

    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache

    lm, cases, folder = load_known_cases(args)
    caches = {arm: BaseAnswerCache() for arm in ARMS}  # one each: no arm reads another's decodes (its edit time)
    rows: dict[str, dict[str, list[float]]] = {arm: {} for arm in ARMS}
    with folder:
        for case in cases:
            for arm, override in ARMS.items():
                outcome = run_case(lm, case, resolve_settings(case.method, override), caches[arm])
                if outcome.status != "ran":
                    print(f"  {case.id} {arm}: {outcome.status} {outcome.reason}", flush=True)
                    continue
                values = rows[arm]
                for name in METRICS:
                    value = outcome.metrics[name].value
                    if value is not None:
                        values.setdefault(name, []).append(value)
                values.setdefault("edit_seconds", []).append(outcome.timings["edit_seconds"])
                values.setdefault("modules", []).append(len(outcome.targets.modules))
                print(
                    f"  {case.id} {arm}: "
                    + " ".join(f"{n}={outcome.metrics[n].value}" for n in METRICS)
                    + f" edit={outcome.timings['edit_seconds']:.1f}s",
                    flush=True,
                )
    print(
        f"\nembedded model, {len(cases)} CounterFact facts it knows (seed {args.seed}), default editor settings;"
        " means over facts (control retention over the controls the base model got right)\n"
    )
    print(
        "| layers | facts | IA³ modules | new-fact acc. | forget rate | paraphrase acc. | control retention "
        "| edit s (median) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arm, values in rows.items():
        if not values:
            continue
        cells = [f"{statistics.mean(values[n]):.3f}" if values.get(n) else "n/a" for n in METRICS]
        print(
            f"| {arm} | {len(values['edit_seconds'])} | {statistics.median(values['modules']):.0f} | "
            + " | ".join(cells)
            + f" | {statistics.median(values['edit_seconds']):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
