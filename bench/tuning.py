"""Variants of ia3-two-stage on known facts drawn with another seed than the benchmark's (tuning data).

    python bench/tuning.py                    # 8 facts, seed 3, four variants (about 25 minutes, 2-core EPYC)
    python bench/tuning.py --variants default every-token-gains -n 2
    python bench/tuning.py --anchors 4 --variants every-token-gains   # cases with same-relation anchors

Variants: the default (IA³ gains on the subject's tokens, top 2 MLP + 2 attention layers, 2 context
prefixes); `every-token-gains`, the peft IA³ adapter that was the default before, and the variants
tried on it: MLP-only with 4 or 6 layers; 4 MLP + 2 attention layers with six context prefixes; bf16
autocast (the AMX speed lever); learning until P(new) >= 0.9 instead of 0.6, alone or with unlearning
until P(old) < 0.01; kl_weight 30, twice the retention rows, no attention adapter; EOS after the
answer, 5 prefixes the model wrote itself, the preservation term (weight 10 or 100); with the subject
gate: lr 0.1, learning until P(new) >= 0.9, 5 generated prefixes. Prints per-fact
lines and one markdown row per variant, with the columns of bench/editors.py.
Every variant is a set of method settings, as a case's `method:` would give them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from editors import COLUMNS, POOLED, fact_values, pooled_cell
from facts import fact_arguments, load_known_cases

SIX_PREFIXES = (
    "",
    "Here is a fact. ",
    "According to the encyclopedia, ",
    "I was surprised to read this. ",
    "The weather was nice yesterday. ",
    "Q: Tell me something true. A: ",
)
EVERY = {"gain_positions": "every"}  # the peft IA³ adapter: the default before issue 15, and the variants tried on it
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "every-token-gains": EVERY,
    "mlp4-no-attention": {**EVERY, "mlp_layers": 4, "attention_layers": 0},
    "mlp6-no-attention": {**EVERY, "mlp_layers": 6, "attention_layers": 0},
    "mlp4-attention2-six-prefixes": {**EVERY, "mlp_layers": 4, "context_prefixes": list(SIX_PREFIXES)},
    "bf16-training": {**EVERY, "train_precision": "bfloat16"},
    "learn-stop-0.9": {**EVERY, "learn_stop_prob": 0.9},
    "learn-stop-0.9-unlearn-stop-0.01": {**EVERY, "learn_stop_prob": 0.9, "unlearn_stop_prob": 0.01},
    # the neighbour leak (issue 15): more weight on retention, more retention rows, no attention adapter
    "kl-weight-30": {**EVERY, "kl_weight": 30},
    "retention-rows-x2": {**EVERY, "neighbours_per_prompt": 8, "kl_rows_per_step": 24},
    "mlp2-no-attention": {**EVERY, "attention_layers": 0},
    # issue 15's levers, one by one on every-token gains: EOS after the answer, prefixes the model writes
    # itself, the preservation term; then gains only at the subject's tokens (the default since), alone
    # and with the generated prefixes
    "eos": {**EVERY, "append_eos": True},
    "generated-prefixes-5": {**EVERY, "generated_prefixes": 5},
    "preservation-10": {**EVERY, "preservation_weight": 10.0},
    "preservation-100": {**EVERY, "preservation_weight": 100.0},
    "subject-gains": {"gain_positions": "subject"},
    "subject-gains-lr-0.1": {"gain_positions": "subject", "lr": 0.1},
    "subject-gains-learn-stop-0.9": {"gain_positions": "subject", "learn_stop_prob": 0.9},
    "subject-gains-generated-prefixes-5": {"gain_positions": "subject", "generated_prefixes": 5},
    # the fluency price of lr 0.1 (a subject gain pushed until the answer repeats): a stronger guard
    "lr-0.1-guard-5": {"lr": 0.1, "guard_weight": 5.0},
    "lr-0.1-guard-20": {"lr": 0.1, "guard_weight": 20.0},
}
DEFAULT_VARIANTS = ["default", "every-token-gains", "eos", "generated-prefixes-5"]


def print_table(table: dict[str, list[dict[str, Any]]], facts: int, seed: int) -> None:
    """One markdown row per variant: the pooled rates of bench/editors.py, fluency change and edit seconds."""
    print(
        f"\nembedded model (CPU), {facts} known CounterFact facts (seed {seed}); rates pooled over facts "
        "(in brackets: samples), edit seconds median\n"
    )
    print("| variant | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, results in table.items():
        if not results:
            continue
        cells = [pooled_cell(results, metric) for _, metric in POOLED]
        cells.append(f"{statistics.mean(r['values']['fluency change'] for r in results):.3f}")
        cells.append(f"{statistics.median(r['values']['edit s'] for r in results):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=8)
    parser.set_defaults(seed=3)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument(
        "--anchors", type=int, default=0, metavar="K", help="give each case K same-relation anchors (importer's)"
    )
    args = parser.parse_args()

    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache, ProbePlan

    plan = ProbePlan(latency_repeats=1)  # no latency column
    lm, cases, folder = load_known_cases(args)
    caches = {v: BaseAnswerCache() for v in args.variants}  # one each: no variant reads another's decodes
    table: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    with folder:
        for case in cases:
            for name in args.variants:
                outcome = run_case(lm, case, resolve_settings(case.method, VARIANTS[name]), caches[name], plan=plan)
                if outcome.status != "ran":
                    print(f"  {case.id} {name}: {outcome.status}", flush=True)
                    continue
                table[name].append({"values": fact_values(outcome)})
                print(
                    f"  {case.id} {name}: paraphrase={outcome.metrics['paraphrase_accuracy'].value} "
                    f"edit={outcome.timings['edit_seconds']:.1f}s",
                    flush=True,
                )
    print_table(table, len(cases), args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
