"""Every editor on the same known CounterFact facts, isolated edits: the table of docs/benchmarks.md.

    python bench/editors.py                          # 100 facts x every editor (hours on a 2-core CPU)
    python bench/editors.py -n 10 --methods ia3-two-stage full-ft
    # the same run split over two processes, one thread each, then one table from both logs:
    OMP_NUM_THREADS=1 python bench/editors.py --shard 0/2 --log a.jsonl &
    OMP_NUM_THREADS=1 python bench/editors.py --shard 1/2 --log b.jsonl &
    python bench/editors.py --table a.jsonl b.jsonl
    OMP_NUM_THREADS=1 python bench/editors.py --shard 0/2 --log a.jsonl --resume   # go on where a.jsonl stops
    python bench/editors.py --methods ia3-two-stage --set learn_stop_prob=0.9   # a row for other settings

Facts: a seeded sample of ../shared/data/counterfact-train.json (or --data) that the embedded model
answers correctly; each is a case with its prompt, paraphrase and locality control, plus the shared
controls of fact_cases/_defaults.yaml. Prints per-fact lines and one markdown row per editor. With
--log, every (fact, editor) result is appended to a JSONL file as it is measured, so an interrupted
run still gives a table (--table) of the facts it finished. With --set, every method runs with those
settings on top of its defaults, and its rows are named after them ("ia3-two-stage learn_stop_prob=0.9").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from facts import fact_arguments, load_known_cases, setting_overrides

COLUMNS = (
    "new-fact acc.",
    "forget rate",
    "paraphrase acc.",
    "control ret. (case)",
    "control ret. (shared)",
    "efficacy",
    "generalization",
    "specificity",
    "fluency change",
    "edit s (median)",
)


def read_logs(paths: list[Path]) -> list[dict[str, Any]]:
    """Every (fact, method) result of these --log files, in order."""
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line]


def control_samples(answers: list, shared: bool) -> list[float]:
    """1.0 / 0.0 per control the base model got right: still right after the edit? (case's own, or shared)"""
    from pytest_factedit.metrics.answers import matches

    controls = [a for a in answers if a.group == "controls"]
    picked = controls[1:] if shared else controls[:1]  # the case's own (locality) control comes first
    return [float(matches(a.edited, a.expected)) for a in picked if matches(a.base, a.expected)]


def fact_values(outcome: Any) -> dict[str, list[float]]:
    """One edited fact's samples for each column (control columns: one sample per control)."""
    scores = outcome.scores
    values: dict[str, list[float]] = {c: [] for c in COLUMNS}
    for column, metric in zip(COLUMNS[:3], ("new_fact_accuracy", "forget_rate", "paraphrase_accuracy")):
        if outcome.metrics[metric].value is not None:
            values[column].append(outcome.metrics[metric].value)
    values["control ret. (case)"] = control_samples(outcome.answers, shared=False)
    values["control ret. (shared)"] = control_samples(outcome.answers, shared=True)
    for column, key in (
        ("efficacy", "efficacy"),
        ("generalization", "generalization"),
        ("specificity", "specificity_first_token"),
    ):
        if key in scores:
            values[column].append(scores[key])
    values["fluency change"].append(scores["fluency_ngram_entropy_after"] - scores["fluency_ngram_entropy_before"])
    values["edit s (median)"].append(outcome.timings["edit_seconds"])
    return values


def print_table(results: list[dict[str, Any]]) -> None:
    """One markdown row per method over every logged result that ran."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    facts = {r["fact"] for r in results if r["status"] == "ran"}
    print(
        f"\nembedded model (CPU), {len(facts)} CounterFact facts it knows, isolated edits, each method with its "
        "default settings; means over facts, control retention over the controls the base model got right, "
        "efficacy/generalization/specificity = share with P(new) > P(old) (specificity: first token, "
        "controls), fluency change = n-gram entropy after - before\n"
    )
    print("| method | facts | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for name in methods:
        ran = [r for r in results if r["method"] == name and r["status"] == "ran"]
        cells = []
        for column in COLUMNS:
            samples = [v for r in ran for v in r["values"][column]]
            if not samples:
                cells.append("n/a")
            elif column == "edit s (median)":
                cells.append(f"{statistics.median(samples):.1f}")
            else:
                cells.append(f"{statistics.mean(samples):.3f}")
        print(f"| {name} | {len(ran)} | " + " | ".join(cells) + " |")


# The targets for the default editor on this CPU: (column(s), direction, target).
TARGETS = (
    ("new-fact accuracy", ("new-fact acc.",), ">=", 0.99),
    ("forget rate", ("forget rate",), ">=", 0.99),
    ("paraphrase accuracy", ("paraphrase acc.",), ">=", 0.80),
    ("control retention (case + shared controls)", ("control ret. (case)", "control ret. (shared)"), ">=", 0.95),
    ("specificity", ("specificity",), ">=", 0.90),
    ("edit seconds, median", ("edit s (median)",), "<=", 10.0),
)


def print_targets(results: list[dict[str, Any]], method: str) -> None:
    """One editor's rows against the targets: measured value, met or not, and the distance."""
    ran = [r for r in results if r["method"] == method and r["status"] == "ran"]
    if not ran:
        return
    print(f"\n{method} against its targets ({len(ran)} facts)\n")
    print("| metric | target | measured | met | distance |")
    print("|---|---|---|---|---|")
    for label, columns, direction, target in TARGETS:
        samples = [v for r in ran for c in columns for v in r["values"][c]]
        value = statistics.median(samples) if direction == "<=" else statistics.mean(samples)
        met = value >= target if direction == ">=" else value <= target
        places = 1 if direction == "<=" else 4  # seconds; shares to 4 places, so a miss never shows as 0.000
        distance = "" if met else f"{abs(value - target):.{places}f}"
        print(f"| {label} | {direction} {target:g} | {value:.{places}f} | {'yes' if met else 'no'} | {distance} |")


def row_name(method: str, overrides: dict[str, Any]) -> str:
    """The table row of a method run with `overrides`: its name, then the settings that differ."""
    return " ".join([method] + [f"{k}={v}" for k, v in overrides.items()])


def _parser() -> argparse.ArgumentParser:
    from pytest_factedit.edit import method_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=100)
    parser.add_argument("--methods", nargs="+", default=list(method_names()), choices=method_names())
    parser.add_argument("--shard", default="0/1", help="K/N: run the facts whose index is K modulo N")
    parser.add_argument("--log", type=Path, help="append each (fact, method) result to this JSONL file")
    parser.add_argument("--resume", action="store_true", help="skip the (fact, method) pairs already in --log")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="method settings on top of each method's defaults (rows are named after them)",
    )
    parser.add_argument(
        "--table", nargs="+", type=Path, metavar="JSONL", help="print the table of these logs and exit (runs nothing)"
    )
    return parser


def _log_result(result: dict[str, Any], outcome: Any, log: Path | None) -> None:
    """Append one (fact, method) result to the --log file and print its line."""
    if log:
        with log.open("a", encoding="utf-8") as out:
            out.write(json.dumps(result) + "\n")
    if outcome.status != "ran":
        print(f"  {result['fact']} {result['method']}: {outcome.status} {outcome.reason}", flush=True)
        return
    print(
        f"  {result['fact']} {result['method']}: "
        + " ".join(f"{m}={v.value:.2f}" for m, v in outcome.metrics.items() if v.value is not None)
        + f" edit={outcome.timings['edit_seconds']:.1f}s",
        flush=True,
    )


def run_editors(args: argparse.Namespace, overrides: dict[str, Any], logged: list[dict[str, Any]]) -> list[dict]:
    """Every (fact of this shard, method) not logged yet: edited, measured, logged; all results so far."""
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache, ProbePlan

    shard, shards = (int(x) for x in args.shard.split("/"))
    done = {(r["fact"], r["method"]) for r in logged}
    plan = ProbePlan(latency_repeats=1)  # the table reports no latency: one timing pass is enough
    lm, cases, folder = load_known_cases(args)
    cache = BaseAnswerCache()
    results: list[dict[str, Any]] = list(logged)
    with folder:
        for case in cases[shard::shards]:
            for name in args.methods:
                row = row_name(name, overrides)
                if (case.id, row) in done:
                    continue
                settings = resolve_settings(case.method, {**overrides, "name": name})
                outcome = run_case(lm, case, settings, cache, plan=plan)
                result = {
                    "fact": case.id,
                    "method": row,
                    "status": outcome.status,
                    "reason": outcome.reason,
                    "values": fact_values(outcome) if outcome.status == "ran" else {},
                }
                results.append(result)
                _log_result(result, outcome, args.log)
    return results


def main() -> int:
    args = _parser().parse_args()
    if args.table:
        logged = read_logs(args.table)
        print_table(logged)
        for row in dict.fromkeys(r["method"] for r in logged if r["method"].split()[0] == "ia3-two-stage"):
            print_targets(logged, row)
        return 0
    overrides = setting_overrides(args.set)
    logged = read_logs([args.log]) if args.resume and args.log and args.log.exists() else []
    results = run_editors(args, overrides, logged)
    print_table(results)
    print_targets(results, row_name("ia3-two-stage", overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
