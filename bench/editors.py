"""Every editor on the same known CounterFact facts, isolated edits: the table of docs/benchmarks.md.

    python bench/editors.py                          # 100 facts x every editor (hours on a 2-core CPU)
    python bench/editors.py -n 10 --methods ia3-two-stage full-ft

Facts: a seeded sample of ../shared/data/counterfact-train.json (or --data) that the embedded model
answers correctly; each is a case with its prompt, paraphrase and locality control, plus the shared
controls of fact_cases/_defaults.yaml. Prints per-fact lines and one markdown row per editor.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from facts import fact_arguments, load_known_cases

COLUMNS = ("new-fact acc.", "forget rate", "paraphrase acc.", "control ret. (case)", "control ret. (shared)",
           "efficacy", "generalization", "specificity", "fluency change", "edit s (median)")


def _retention(answers: list, shared: bool) -> list[float]:
    from pytest_factedit.metrics import matches

    controls = [a for a in answers if a.group == "controls"]
    picked = controls[1:] if shared else controls[:1]  # the case's own (locality) control comes first
    return [float(matches(a.edited, a.expected)) for a in picked if matches(a.base, a.expected)]


def main() -> int:
    from pytest_factedit.edit import method_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=100)
    parser.add_argument("--methods", nargs="+", default=list(method_names()), choices=method_names())
    args = parser.parse_args()

    from pytest_factedit import runner
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.runner import BaseAnswerCache, run_case

    runner.LATENCY_REPEATS = 1  # the table reports no latency: one timing pass is enough

    lm, cases, folder = load_known_cases(args)
    cache = BaseAnswerCache()
    table: dict[str, dict[str, list[float]]] = {name: {c: [] for c in COLUMNS} for name in args.methods}
    with folder:
        for case in cases:
            for name in args.methods:
                outcome = run_case(lm, case, resolve_settings(case.method, {"name": name}), cache)
                if outcome.status != "ran":
                    print(f"  {case.id} {name}: {outcome.status} {outcome.reason}", flush=True)
                    continue
                scores = outcome.extra["scores"]
                row = table[name]
                for column, metric in zip(COLUMNS[:3], ("new_fact_accuracy", "forget_rate", "paraphrase_accuracy")):
                    if outcome.metrics[metric].value is not None:
                        row[column].append(outcome.metrics[metric].value)
                row["control ret. (case)"] += _retention(outcome.answers, shared=False)
                row["control ret. (shared)"] += _retention(outcome.answers, shared=True)
                for column, key in (("efficacy", "efficacy"), ("generalization", "generalization"),
                                    ("specificity", "specificity_first_token")):
                    if key in scores:
                        row[column].append(scores[key])
                row["fluency change"].append(scores["fluency_ngram_entropy_after"]
                                             - scores["fluency_ngram_entropy_before"])
                row["edit s (median)"].append(outcome.timings["edit_seconds"])
                print(f"  {case.id} {name}: " + " ".join(
                    f"{m}={v.value:.2f}" for m, v in outcome.metrics.items() if v.value is not None)
                    + f" edit={outcome.timings['edit_seconds']:.1f}s", flush=True)
    print(f"\nembedded model (CPU), {len(cases)} CounterFact facts it knows (seed {args.seed}), isolated edits, "
          "each method with its default settings; means over facts, control retention over the controls "
          "the base model got right, efficacy/generalization/specificity = share with P(new) > P(old) "
          "(specificity: first token, controls), fluency change = n-gram entropy after - before\n")
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, row in table.items():
        cells = []
        for column in COLUMNS:
            values = row[column]
            if not values:
                cells.append("n/a")
            elif column == "edit s (median)":
                cells.append(f"{statistics.median(values):.1f}")
            else:
                cells.append(f"{statistics.mean(values):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
