"""Every editor on the same known CounterFact facts, isolated edits: the table of docs/benchmarks.md.

    python bench/editors.py                          # 100 facts x every editor (hours on a 2-core CPU)
    python bench/editors.py -n 10 --methods ia3-two-stage full-ft
    # the same run split over two processes, one thread each, then one table from both logs:
    OMP_NUM_THREADS=1 python bench/editors.py --shard 0/2 --log a.jsonl &
    OMP_NUM_THREADS=1 python bench/editors.py --shard 1/2 --log b.jsonl &
    python bench/editors.py --table a.jsonl b.jsonl
    python bench/editors.py --table a.jsonl b.jsonl --against older.jsonl   # the same facts in another run
    OMP_NUM_THREADS=1 python bench/editors.py --shard 0/2 --log a.jsonl --resume   # go on where a.jsonl stops
    python bench/editors.py --methods ia3-two-stage --set learn_stop_prob=0.9   # a row for other settings
    python bench/editors.py --cases same_subject --methods ia3-two-stage   # the same-subject benchmark
    python bench/editors.py --methods ia3-two-stage ia3-two-stage:gain_positions=subject:subject_rows=0

Facts: a seeded sample of ../shared/data/counterfact-train.json (or --data) that the embedded model
answers correctly; each is a case with its prompt and paraphrase, its locality prompt and up to 3 more
neighbours (records of the same template the model answers, those sharing the old answer first: see
`factedit import counterfact --neighbours`), and the shared controls of fact_cases/_defaults.yaml.
With --cases, the facts are the case files of a folder instead (bench/same_subject: edits whose subject
the model knows other facts about). Prints per-fact lines and one markdown row per editor, each rate with
its Wilson 95% interval. With --log, every (fact, editor) result is
appended to a JSONL file as it is measured, so an interrupted run still gives a table (--table) of the
facts it finished. With --set, every method runs with those settings on top of its defaults, and its
rows are named after them ("ia3-two-stage learn_stop_prob=0.9").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from facts import fact_arguments, load_known_cases, setting_overrides

from pytest_factedit.metrics.verdict import wilson_interval

# (column, metric): share metrics pooled over every fact's samples; one metric, so one protocol, per column.
POOLED = (
    ("new-fact", "new_fact_accuracy"),
    ("forget", "forget_rate"),
    ("paraphrase", "paraphrase_accuracy"),
    ("paraphrase (all)", "paraphrase_accuracy_all"),
    ("neighbours", "neighbour_retention"),
    ("nbr, shares old", "neighbour_retention_sharing_old"),
    ("nbr, other answer", "neighbour_retention_other"),
    ("controls", "control_retention"),
    ("same subject", "relation_specificity"),
    ("context", "context_retention"),
    ("aliases", "alias_accuracy"),
    ("efficacy", "efficacy"),
    ("generalization", "generalization"),
    ("specificity", "specificity"),
)
COLUMNS = tuple(column for column, _ in POOLED) + ("fluency change", "edit s (median)")
# The benchmarks' quality targets (docs/benchmarks.md, "Every configuration tried, against the targets"): a
# pooled metric, or the mean fluency change, and the lowest value that meets it. The edit-time target is
# the median edit over the facts.
QUALITY_TARGETS = (
    ("new_fact_accuracy", 0.99),
    ("forget_rate", 0.97),
    ("paraphrase_accuracy", 0.85),
    ("neighbour_retention", 0.95),
    ("neighbour_retention_sharing_old", 0.90),
    ("control_retention", 0.98),
    ("relation_specificity", 0.90),
    ("context_retention", 0.97),
    ("alias_accuracy", 0.85),
    ("fluency change", -0.10),
)
EDIT_TARGET_SECONDS = 5.0


def read_logs(paths: list[Path]) -> list[dict[str, Any]]:
    """Every (fact, method) result of these --log files, in order."""
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line]


def fact_values(outcome: Any) -> dict[str, Any]:
    """One edited fact: [hits, samples] of each pooled metric, its fluency change and its edit seconds."""
    values: dict[str, Any] = {
        metric: [outcome.metrics[metric].hits or 0, outcome.metrics[metric].samples] for _, metric in POOLED
    }
    values["answers"] = [[a.group, a.prompt, a.base, a.edited] for a in outcome.answers if a.group != "controls"]
    scores = outcome.scores
    values["fluency change"] = scores["fluency_ngram_entropy_after"] - scores["fluency_ngram_entropy_before"]
    values["edit s"] = outcome.timings["edit_seconds"]
    return values


def pooled_counts(results: list[dict[str, Any]], metric: str) -> tuple[int, int]:
    """(hits, samples) of a metric over every fact (a log written before a metric existed has none of it)."""
    hits = sum(r["values"].get(metric, [0, 0])[0] for r in results)
    samples = sum(r["values"].get(metric, [0, 0])[1] for r in results)
    return hits, samples


def pooled_cell(results: list[dict[str, Any]], metric: str) -> str:
    """hits / samples over every fact, with its Wilson interval and the sample count."""
    hits, samples = pooled_counts(results, metric)
    if not samples:
        return "n/a"
    low, high = wilson_interval(hits, samples)
    return f"{hits / samples:.3f} [{low:.2f}, {high:.2f}] ({samples})"


def print_table(results: list[dict[str, Any]]) -> None:
    """One markdown row per method over every logged result that ran."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    facts = {r["fact"] for r in results if r["status"] == "ran"}
    source = "CounterFact facts it knows" if all(f.startswith("counterfact-") for f in facts) else "facts (case files)"
    print(
        f"\nembedded model (CPU), {len(facts)} {source}, isolated edits, each method with its default settings "
        "unless its row names others. Rates pool every fact's samples (in brackets: how many); forget and "
        "paraphrase count what the unedited model answered with `old`, neighbours and controls what it got "
        "right (greedy generation); efficacy, generalization and specificity compare mean log-probabilities "
        "per answer token (CounterFact's ES, PS, NS); fluency change = n-gram entropy after - before, mean "
        "over facts\n"
    )
    print("| method | facts | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for name in methods:
        ran = [r for r in results if r["method"] == name and r["status"] == "ran"]
        if not ran:
            continue
        cells = [pooled_cell(ran, metric) for _, metric in POOLED]
        cells.append(f"{statistics.mean(r['values']['fluency change'] for r in ran):.3f}")
        cells.append(f"{statistics.median(r['values']['edit s'] for r in ran):.1f}")
        print(f"| {name} | {len(ran)} | " + " | ".join(cells) + " |")
    print_time_ratios(results, methods)


def edit_time_against_target(ran: list[dict[str, Any]]) -> dict[str, Any]:
    """The edit seconds of the facts that ran: median, quartiles, how many within EDIT_TARGET_SECONDS."""
    seconds = sorted(r["values"]["edit s"] for r in ran)
    low, _, high = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else seconds * 3
    median = statistics.median(seconds)
    return {
        "median": median,
        "quartiles": (low, high),
        "within": sum(s <= EDIT_TARGET_SECONDS for s in seconds),
        "facts": len(seconds),
        "met": median <= EDIT_TARGET_SECONDS,
    }


def quality_against_targets(ran: list[dict[str, Any]]) -> list[tuple[str, bool | None]]:
    """Each QUALITY_TARGETS metric over the facts that ran, in that order: (its figure, met; "n/a" and None
    where no fact has a sample of it, as the CounterFact facts have no same-subject facts)."""
    rows: list[tuple[str, bool | None]] = []
    for metric, lowest in QUALITY_TARGETS:
        if metric == "fluency change":
            change = statistics.mean(r["values"]["fluency change"] for r in ran) if ran else None
            rows.append(("n/a", None) if change is None else (f"{change:+.3f}", change >= lowest))
            continue
        hits, samples = pooled_counts(ran, metric)
        rows.append(
            (f"{hits / samples:.3f} ({hits} of {samples})", hits / samples >= lowest) if samples else ("n/a", None)
        )
    return rows


def print_time_ratios(results: list[dict[str, Any]], methods: list[str]) -> None:
    """Each later method's edit seconds over the first's, fact by fact (median and range), and on how many
    facts the two gave the same answer texts: read as a ratio only where the methods took turns on each
    fact in one run (`--methods A B`), so that both met the same machine."""
    ran = {(r["fact"], r["method"]): r["values"] for r in results if r["status"] == "ran"}
    first = methods[0] if methods else ""
    for name in methods[1:]:
        facts = [fact for fact, method in ran if method == name and (fact, first) in ran]
        if not facts:
            continue
        ratios = sorted(ran[fact, name]["edit s"] / ran[fact, first]["edit s"] for fact in facts)
        same = sum(ran[fact, name]["answers"] == ran[fact, first]["answers"] for fact in facts)
        print(
            f"\nedit seconds, {name} / {first}, fact by fact: median {statistics.median(ratios):.2f} "
            f"({ratios[0]:.2f}-{ratios[-1]:.2f}) over {len(facts)} facts; the same answer texts in {same}"
        )


def _differing_counts(one: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The pooled metrics whose [hits, samples] differ between two results of a fact."""
    return [metric for _, metric in POOLED if one.get(metric, [0, 0]) != other.get(metric, [0, 0])]


def print_run_against(results: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> None:
    """Each method's facts beside the same method's facts of another run: on how many the answer texts and
    the counts are the same, which facts differ and in what, and the edit seconds' ratio fact by fact (a
    ratio across runs: it compares machines or days, not only code)."""
    ran = {(r["fact"], r["method"]): r["values"] for r in results if r["status"] == "ran"}
    before = {(r["fact"], r["method"]): r["values"] for r in earlier if r["status"] == "ran"}
    for name in dict.fromkeys(method for _, method in ran):
        facts = [fact for fact, method in ran if method == name and (fact, name) in before]
        if not facts:
            print(f"\n{name}: no fact that ran in both")
            continue
        texts = [f for f in facts if ran[f, name]["answers"] != before[f, name]["answers"]]
        counts = {f: _differing_counts(ran[f, name], before[f, name]) for f in facts}
        ratios = sorted(ran[f, name]["edit s"] / before[f, name]["edit s"] for f in facts)
        print(
            f"\n{name} against the other run, fact by fact, over {len(facts)} facts: the same answer texts in "
            f"{len(facts) - len(texts)}, the same counts in {sum(not c for c in counts.values())}; edit seconds "
            f"median ratio {statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"
        )
        for fact in facts:
            if counts[fact]:
                print(f"  {fact}: counts differ in {', '.join(counts[fact])}")


def method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'NAME:KEY=VALUE:...' -> (editor name, its own settings)."""
    from pytest_factedit.edit import method_names

    name, *pairs = spec.split(":")
    if name not in method_names():
        raise SystemExit(f"--methods: unknown editor {name!r}; known: {', '.join(method_names())}")
    return name, setting_overrides(pairs)


def row_name(method: str, overrides: dict[str, Any]) -> str:
    """The table row of a method run with `overrides`: its name, then the settings that differ."""
    return " ".join([method] + [f"{k}={v}" for k, v in overrides.items()])


def _parser() -> argparse.ArgumentParser:
    from pytest_factedit.edit import method_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=100)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(method_names()),
        metavar="NAME[:KEY=VALUE...]",
        help="editors to run, each with its own settings after colons (ia3-two-stage:gain_positions=subject); "
        "they take turns on each fact, so their times are measured under the same load",
    )
    parser.add_argument("--shard", default="0/1", help="K/N: run the facts whose index is K modulo N")
    parser.add_argument("--log", type=Path, help="append each (fact, method) result to this JSONL file")
    parser.add_argument("--resume", action="store_true", help="skip the (fact, method) pairs already in --log")
    parser.add_argument("--only", nargs="+", default=[], metavar="ID", help="run only these facts (case ids)")
    parser.add_argument(
        "--facts-of",
        nargs="+",
        type=Path,
        default=[],
        metavar="JSONL",
        help="with --table: only the facts these logs hold (an older run's row on the facts a stopped run reached)",
    )
    parser.add_argument(
        "--cases", type=Path, help="a folder of fact case files (e.g. bench/same_subject) instead of CounterFact facts"
    )
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
    parser.add_argument(
        "--against",
        nargs="+",
        type=Path,
        default=[],
        metavar="JSONL",
        help="with --table: compare each method's facts with the same method's in these logs (another run, "
        "machine or commit): the same answer texts and counts, fact by fact, and which facts differ",
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


def case_folder(folder: Path) -> tuple[Any, list[Any], Any]:
    """The embedded model on CPU and every case file of `folder` (with its _defaults.yaml), in name order."""
    from contextlib import nullcontext

    from pytest_factedit.cases import is_case_file, load_case
    from pytest_factedit.model.load import load

    paths = sorted(p for p in folder.glob("*.y*ml") if is_case_file(p))
    return load(None, "cpu"), [load_case(p, root=folder) for p in paths], nullcontext()


def run_editors(args: argparse.Namespace, overrides: dict[str, Any], logged: list[dict[str, Any]]) -> list[dict]:
    """Every (fact of this shard, method) not logged yet: edited, measured, logged; all results so far."""
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache, ProbePlan

    shard, shards = (int(x) for x in args.shard.split("/"))
    done = {(r["fact"], r["method"]) for r in logged}
    plan = ProbePlan(latency_repeats=1)  # the table reports no latency: one timing pass is enough
    lm, cases, folder = case_folder(args.cases) if args.cases else load_known_cases(args)
    # one cache per method: the base model's decodes the editor reads (its subject rows, its guard) would
    # otherwise be computed by the first method on a fact and read back by the next, whose edit then
    # looks faster than it is
    caches: dict[str, BaseAnswerCache] = {}
    results: list[dict[str, Any]] = list(logged)
    methods = [method_spec(spec) for spec in args.methods]
    with folder:
        for case in [c for c in cases if not args.only or c.id in args.only][shard::shards]:
            for name, own in methods:
                row = row_name(name, {**overrides, **own})
                if (case.id, row) in done:
                    continue
                settings = resolve_settings(case.method, {**overrides, **own, "name": name})
                outcome = run_case(lm, case, settings, caches.setdefault(row, BaseAnswerCache()), plan=plan)
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
    parser = _parser()
    args = parser.parse_args()
    if args.against and not args.table:
        parser.error("--against compares logs and runs nothing: give this run's logs with --table")
    if args.table:
        logged = read_logs(args.table)
        if args.facts_of:
            kept = {r["fact"] for r in read_logs(args.facts_of)}
            logged = [r for r in logged if r["fact"] in kept]
        print_table(logged)
        if args.against:
            print_run_against(logged, read_logs(args.against))
        return 0
    overrides = setting_overrides(args.set)
    logged = read_logs([args.log]) if args.resume and args.log and args.log.exists() else []
    results = run_editors(args, overrides, logged)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
