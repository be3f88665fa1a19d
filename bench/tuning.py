"""Variants of ia3-two-stage on known facts drawn with another seed than the benchmark's (tuning data).

    python bench/tuning.py                    # 8 facts, seed 3, the four variants (about 15 minutes)
    python bench/tuning.py --variants default bf16-training -n 2

Variants: the default (top 2 MLP + 2 attention layers, 2 context prefixes); MLP-only with 4 or 6
layers; 4 MLP + 2 attention layers with six context prefixes; the default trained under bf16
autocast (the AMX speed lever); and learning until P(new) >= 0.9 instead of 0.6, alone or with
unlearning until P(old) < 0.01 instead of 0.05. Prints per-fact lines and one markdown row per
variant. `paraphrase_base_knew` is paraphrase accuracy over the paraphrases the base model answered
with the old answer; `case_controls` and `shared_controls` count the controls the base model got right.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from typing import Any, Iterator

from editors import control_samples
from facts import fact_arguments, load_known_cases

SIX_PREFIXES = ("", "Here is a fact. ", "According to the encyclopedia, ", "I was surprised to read this. ",
                "The weather was nice yesterday. ", "Q: Tell me something true. A: ")
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "mlp4-no-attention": {"mlp_layers": 4, "attention_layers": 0},
    "mlp6-no-attention": {"mlp_layers": 6, "attention_layers": 0},
    "mlp4-attention2-six-prefixes": {"mlp_layers": 4, "prefixes": SIX_PREFIXES},
    "bf16-training": {"bf16": True},
    "learn-stop-0.9": {"learn_stop_prob": 0.9},
    "learn-stop-0.9-unlearn-stop-0.01": {"learn_stop_prob": 0.9, "unlearn_stop_prob": 0.01},
}
DEFAULT_VARIANTS = ["default", "mlp4-no-attention", "mlp6-no-attention", "mlp4-attention2-six-prefixes"]
COLUMNS = ("new_fact_accuracy", "forget_rate", "paraphrase_accuracy", "paraphrase_base_knew", "case_controls",
           "shared_controls", "generalization", "specificity_first_token", "edit_seconds")


@contextlib.contextmanager
def variant_in_place(spec: dict[str, Any]) -> Iterator[None]:
    """Context prefixes and bf16 training are not settings: swap them in for the block, then put them back."""
    from pytest_factedit.edit import objectives, peft_staged
    from pytest_factedit.localize.patching import bf16_autocast

    prefixes, apply = objectives.CONTEXT_PREFIXES, peft_staged.PeftStagedEditor.apply

    def bf16_apply(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        with bf16_autocast(model, "cpu"):
            return apply(self, model, *args, **kwargs)

    try:
        objectives.CONTEXT_PREFIXES = spec.get("prefixes", prefixes)
        if spec.get("bf16"):
            peft_staged.PeftStagedEditor.apply = bf16_apply
        yield
    finally:
        objectives.CONTEXT_PREFIXES, peft_staged.PeftStagedEditor.apply = prefixes, apply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=8)
    parser.set_defaults(seed=3)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    args = parser.parse_args()

    from pytest_factedit import runner
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.metrics import matches
    from pytest_factedit.runner import BaseAnswerCache, run_case

    runner.LATENCY_REPEATS = 1  # no latency column
    lm, cases, folder = load_known_cases(args)
    cache = BaseAnswerCache()
    table: dict[str, dict[str, list[float]]] = {v: {c: [] for c in COLUMNS} for v in args.variants}
    with folder:
        for case in cases:
            for name in args.variants:
                spec = VARIANTS[name]
                overrides = {k: v for k, v in spec.items() if k not in ("prefixes", "bf16")}
                with variant_in_place(spec):
                    outcome = run_case(lm, case, resolve_settings(case.method, overrides), cache)
                if outcome.status != "ran":
                    print(f"  {case.id} {name}: {outcome.status}", flush=True)
                    continue
                row = table[name]
                for metric in COLUMNS[:3]:
                    if outcome.metrics[metric].value is not None:
                        row[metric].append(outcome.metrics[metric].value)
                row["paraphrase_base_knew"] += [float(matches(a.edited, case.new)) for a in outcome.group("paraphrases")
                                                if matches(a.base, case.old)]
                row["case_controls"] += control_samples(outcome.answers, shared=False)
                row["shared_controls"] += control_samples(outcome.answers, shared=True)
                for key in ("generalization", "specificity_first_token"):
                    if key in outcome.extra["scores"]:
                        row[key].append(outcome.extra["scores"][key])
                row["edit_seconds"].append(outcome.timings["edit_seconds"])
                print(f"  {case.id} {name}: paraphrase={outcome.metrics['paraphrase_accuracy'].value} "
                      f"edit={outcome.timings['edit_seconds']:.1f}s", flush=True)
    print(f"\nembedded model (CPU), {len(cases)} known CounterFact facts (seed {args.seed}); means over facts, "
          "edit seconds median\n")
    print("| variant | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, row in table.items():
        cells = ["n/a" if not row[c] else f"{statistics.median(row[c]):.1f}" if c == "edit_seconds"
                 else f"{statistics.mean(row[c]):.3f}" for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
