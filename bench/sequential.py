"""Many edits on one model: N known CounterFact facts applied one after another (`--factedit-mode sequential`)
or trained together into one adapter (`--mode batch`, i.e. `--factedit-mode batch`).

    python bench/sequential.py              # 50 facts (about 15 minutes on a 2-core CPU)
    python bench/sequential.py -n 1000      # the scale targets (hours on a 2-core CPU)
    python bench/sequential.py --all-known  # every CounterFact fact the embedded model knows (with 3 neighbours)
    python bench/sequential.py -n 1000 --checkpoint /tmp/seq1000   # stops and goes on where it stopped
    python bench/sequential.py -n 1000 --checkpoint /tmp/seq1000 --stop-after 100   # the figures after 100
    python bench/sequential.py -n 1000 --latency-repeats 1 --fluency-tokens 0   # each fact probed for its answers
    python bench/sequential.py -n 10 --method full-ft
    python bench/sequential.py --mode batch
    python bench/sequential.py --mode batch -n 10 --set kl_rows_per_step=48

The facts: CounterFact's records the embedded model answers, in a seeded order, each with at least 3
neighbours (bench/facts.py; asking the model about all 10,000 records takes about 11 minutes once, and
is saved in bench/results/). Each fact is edited on the model the earlier edits left (each merged before
the next), measured right after its own edit, and checked again after the last one. Prints the end-of-sequence figures
and the retention of earlier edits by position, as markdown, then the scale targets (TARGETS) with
the figure measured after the last edit, the bytes each kept edit holds, the whole run's seconds and
the CPU.

Each fact is probed as the plugin probes a case unless --latency-repeats and --fluency-tokens say less: its
own latency timed with 3 step pairs, its prompts run on to 16 tokens for the fluency score. Neither figure
is in this script's tables (the latency with every edit on is timed at the end, as the plugin times it), and
neither changes an answer or a metric.

With --checkpoint, --stop-after K ends this part after the first K facts of the run with the same checks as
after a last edit, so one sequence gives the figures at 10, 100 and 1,000 edits; facts the checkpoint
already holds are put back, not edited again. Its seconds are the K-th fact's in the log plus this part's
own start and checks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from facts import fact_arguments, load_known_cases, setting_overrides
from sequence_checkpoint import Checkpoint

from pytest_factedit.run.probing import DEFAULT_PLAN as DEFAULT_PROBING
from pytest_factedit.run.probing import ProbePlan

# The scale targets of a long sequence, measured after the last edit: (end-of-run metric, relation, target).
TARGETS = (
    ("edits_retained", ">=", 0.95),
    ("paraphrases_retained", ">=", 0.75),
    ("neighbours_retained", ">=", 0.95),
    ("same_subject_retained", ">=", 0.95),
    ("controls_retained", ">=", 0.95),
    ("latency_overhead_at_end", "<=", 1.2),
)
RUN_TARGET_SECONDS = 90 * 60  # the whole run of RUN_TARGET_FACTS edits, on 2 cores
RUN_TARGET_FACTS = 1000
NO_KEPT_EDIT = "n/a: no edit kept behind the gate (merged edits change the weights in place)"


def _print_positions(result: Any) -> None:
    """One line per fact, in edit order: what it scored right after its edit and what was left at the end."""
    for position, outcome in enumerate(result.outcomes):
        kept = result.retained_by_case.get(outcome.case.id)
        print(
            f"  {position:3d} {outcome.case.id}: {outcome.status}"
            + (
                f" new_fact={outcome.metrics['new_fact_accuracy'].value:.2f} "
                f"controls={outcome.metrics['control_retention'].value} retained_at_end={kept:.2f}"
                if outcome.status == "ran"
                else f" ({outcome.reason[:100]})"
            ),
            flush=True,
        )


def _progress(total: int, started: float) -> Any:
    """Tells stderr of each case as soon as it is measured: a run of hours shows how far it is."""

    def tell(position: int, outcome: Any) -> None:
        edit = outcome.timings.get("edit_seconds")
        took = f", edit {edit:.1f}s" if edit is not None else ""
        print(
            f"[{position + 1}/{total} after {time.perf_counter() - started:.0f}s] {outcome.case.id}: {outcome.status}"
            + took,
            file=sys.stderr,
            flush=True,
        )

    return tell


def _sequence(
    args: argparse.Namespace, lm: Any, cases: list[Any], settings_for: Any, started: float, run_started: float
) -> tuple[Any, float]:
    """run_sequence with progress on stderr; with --checkpoint, resumable (bench/sequence_checkpoint.py), and
    with --stop-after, over the first facts of the run only. (the result, the seconds the run's earlier parts
    took)."""
    from pytest_factedit.infra.events import listening
    from pytest_factedit.run.many import run_sequence

    part = cases[: args.stop_after] if args.stop_after else cases
    progress = _progress(len(part), started)
    print(
        "the base model decodes every fact's rows first (up to 2 s a fact on 2 cores), then edits them",
        file=sys.stderr,
    )
    plan = ProbePlan(args.latency_repeats, args.fluency_tokens)
    if not args.checkpoint:
        with listening(_pass_progress(started)):
            return run_sequence(lm, part, settings_for, each_done=progress, plan=plan), 0.0
    identity = {"method": args.method, "set": args.set, "data": Path(args.data).name, "seed": args.seed}
    checkpoint = Checkpoint(Path(args.checkpoint), cases, identity)
    logged = min(len(checkpoint.logged), len(part))
    if logged:
        print(f"resuming after {logged} logged cases ({args.checkpoint})", file=sys.stderr)

    earlier = checkpoint.earlier_seconds(upto=len(part))

    def each_done(position: int, outcome: Any) -> None:
        checkpoint.log(position, outcome, earlier + time.perf_counter() - run_started)
        progress(position, outcome)

    resume = checkpoint.resume(lm, settings_for, upto=len(part)) if logged else None
    with listening(_pass_progress(started)):
        return run_sequence(lm, part, settings_for, checkpoint.edits, each_done, resume, plan=plan), earlier


def _pass_progress(started: float) -> Any:
    """Tells stderr how far the base pass before the first edit is, after each of its batched decodes."""
    from pytest_factedit.infra.events import PROBED

    def hear(event: Any) -> None:
        if event.kind == PROBED:
            print(
                f"[base pass after {time.perf_counter() - started:.0f}s] {event.done}/{event.total} facts probed",
                file=sys.stderr,
                flush=True,
            )

    return hear


def _print_table(result: Any, mode: str) -> None:
    """The markdown table of docs/benchmarks.md: per-fact means, the end-of-run metrics, retention by position."""
    ran = [o for o in result.outcomes if o.status == "ran"]
    when = "with the batch adapter" if mode == "batch" else "after the last edit"
    right_after = "with the batch adapter" if mode == "batch" else "right after each edit"
    print("| figure | value |")
    print("|---|---|")
    print(
        f"| facts edited / skipped (old answer not given) / errors | {len(ran)} / "
        f"{sum(o.status == 'skipped' for o in result.outcomes)} / {sum(o.status == 'error' for o in result.outcomes)} |"
    )
    for name in ("new_fact_accuracy", "paraphrase_accuracy", "control_retention"):
        values = [o.metrics[name].value for o in ran if o.metrics[name].value is not None]
        print(
            f"| {name.replace('_', ' ')} {right_after} (mean) | "
            + (f"{statistics.mean(values):.3f} |" if values else "n/a |")
        )
    for metric in result.metrics.values():
        value = "n/a" if metric.value is None else f"{metric.value:.3f}"
        print(f"| {metric.name} {when} ({metric.samples} samples) | {value} |")
    if mode == "batch":
        print(f"| training seconds, one adapter for all | {result.batch.get('train_seconds', 'n/a')} |")
        print(f"| IA³ target modules (union) | {len(result.batch.get('target_modules', []))} |")
        return
    quarter = max(1, len(ran) // 4)
    for start in range(0, len(ran), quarter):
        chunk = ran[start : start + quarter]
        share = statistics.mean(result.retained_by_case[o.case.id] for o in chunk)
        print(f"| edits {start + 1}-{start + len(chunk)} still held at the end | {share:.3f} |")
    print(f"| edit seconds, median | {statistics.median(o.timings['edit_seconds'] for o in ran):.1f} |" if ran else "")
    if result.base_pass_seconds is not None:
        print(f"| base pass before the first edit, seconds | {result.base_pass_seconds:.1f} |")


def _met(value: float | None, relation: str, target: float) -> str:
    if value is None:
        return "n/a"
    return "yes" if (value >= target if relation == ">=" else value <= target) else "no"


def print_targets(result: Any, seconds: float) -> None:
    """Each scale target beside its figure after the last edit, the bytes per kept edit, the run's seconds."""
    from pytest_factedit.report.records import memory_per_edit
    from pytest_factedit.run.model_holder import machine_info

    print(f"\nCPU: {machine_info()['cpu']}\n")
    print("| figure | value | target | met |")
    print("|---|---:|---:|:---:|")
    for name, relation, target in TARGETS:
        metric = result.metrics[name]
        value = "n/a" if metric.value is None else f"{metric.value:.3f}"
        print(
            f"| {name} ({metric.samples} samples) | {value} | {relation} {target:g} | "
            f"{_met(metric.value, relation, target)} |"
        )
    memory = memory_per_edit(result.memory) if result.memory else {}
    per_edit = memory.get("bytes_per_edit")
    parts = ", ".join(f"{k} {memory.get(k, 0):,}" for k in ("gains", "tables", "index", "routers")) if memory else ""
    shown = f"{per_edit:,.0f} ({parts} in all)" if per_edit is not None else NO_KEPT_EDIT
    print(f"| memory added per edit, bytes | {shown} | stated | {'n/a' if per_edit is None else 'yes'} |")
    aside = ", ".join(f"{group} {n}" for group, n in result.set_aside.items())
    print(f"| held rows set aside at the end (they name another edited subject) | {aside or 'none'} | | |")
    facts = len(result.outcomes)
    judged = _met(seconds, "<=", RUN_TARGET_SECONDS) if facts >= RUN_TARGET_FACTS else f"n/a ({facts:,} facts)"
    target = f"<= {RUN_TARGET_SECONDS:,} at {RUN_TARGET_FACTS:,} facts"
    print(f"| whole run, seconds | {seconds:,.0f} | {target} | {judged} |")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=50)
    parser.add_argument(
        "--all-known",
        action="store_true",
        help="every fact of --data the embedded model knows (with enough neighbours), in place of -n",
    )
    parser.add_argument("--method", default="ia3-two-stage")
    parser.add_argument("--mode", default="sequential", choices=("sequential", "batch"))
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="method settings on top of the method's defaults (e.g. kl_rows_per_step=48)",
    )
    parser.add_argument(
        "--latency-repeats",
        type=int,
        default=DEFAULT_PROBING.latency_repeats,
        metavar="N",
        help="each fact's latency: N timed greedy steps of the base and of the edited model each (0: none); the "
        "end's latency with every edit on is timed as the plugin times it either way",
    )
    parser.add_argument(
        "--fluency-tokens",
        type=int,
        default=DEFAULT_PROBING.fluency_tokens,
        metavar="N",
        help="each fact's prompts generate N tokens for its fluency score (0: they stop at their answer, no score)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="sequential: save each edit and log each case in DIR, and go on from there when run again",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="K",
        help="with --checkpoint: edit (or put back from the checkpoint) only the first K facts of the run, then "
        "check them as after a last edit; run again with a larger K (or none) to go on from there",
    )
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="also write the end-of-run block (as summary.json's `sequence` or `batch` holds it) to PATH as JSON",
    )
    return parser.parse_args()


def main() -> int:
    args = _arguments()
    overrides = setting_overrides(args.set)
    if args.stop_after is not None and (args.stop_after < 1 or not args.checkpoint or args.mode != "sequential"):
        raise SystemExit(
            f"--stop-after expects a number of facts from 1 and a sequential run with --checkpoint, found "
            f"{args.stop_after} (checkpoint: {args.checkpoint or 'none'}); without a checkpoint, -n K edits the same "
            "first K facts"
        )
    if args.all_known:
        from pytest_factedit.cases.counterfact import read_records

        args.n = len(read_records(Path(args.data)))  # the search stops when the records run out

    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.run.many import run_batch

    run_started = time.perf_counter()
    lm, cases, folder = load_known_cases(args)
    started = time.perf_counter()

    def settings_for(case: Any) -> Any:
        return resolve_settings(case.method, {**overrides, "name": args.method})

    with folder:
        earlier = 0.0  # with --checkpoint: the seconds of the run's earlier parts
        if args.mode == "batch":
            result = run_batch(lm, cases, settings_for)
        else:
            result, earlier = _sequence(args, lm, cases, settings_for, started, run_started)
    _print_positions(result)
    print(
        f"\nembedded model (CPU), {len(result.outcomes)} known CounterFact facts (seed {args.seed}), "
        f"method {args.method}, "
        f"{args.mode}: {time.perf_counter() - started:.0f}s in all, base restored: {result.base_restored}\n"
    )
    _print_table(result, args.mode)
    print_targets(result, earlier + time.perf_counter() - run_started)
    if args.record:
        import json

        from pytest_factedit.metrics.spec import DEFAULT_THRESHOLDS
        from pytest_factedit.report.records import many_record

        block = many_record(result, args.mode, DEFAULT_THRESHOLDS)
        Path(args.record).write_text(json.dumps(block, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
