"""Localization seconds per fact on the embedded model, for `trace` and `attribution` (budget: 3 s).

    python bench/localization.py                      # the shipped cases, auto precision
    python bench/localization.py --precision float32  # without bf16 autocast, for comparison
    python bench/localization.py --kept-edits 100     # tracing under 100 kept gated edits: rows skipping
                                                      # layers against every row through every layer

Prints one line per case and method (seconds, precision, chosen layers) and a markdown table of the
median and maximum over the shipped cases. With --kept-edits N, each case is traced with N - 1 kept edits
of other subjects and one of its own subject on the model (laid out as bench/cost_model.py's edits
series), two ways alternated --repeats times in this one process: as the plugin traces (restored rows
skip the layers below their own; the shared gate allows it) and with a no-op forward hook on the first
decoder layer, which sends every row through every layer. It prints both medians, their ratio, whether
the chosen layers agree, and the largest difference of an effect; and, traced in the same rounds with no
edit kept, what the kept edits add to the time of the plugin's way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=1, help="localize each case this many times (min taken)")
    parser.add_argument("--kept-edits", type=int, default=0, help="trace under this many kept gated edits")
    args = parser.parse_args()
    if args.kept_edits:
        return under_kept_edits(args.kept_edits, max(args.repeats, 3))

    from pytest_factedit.cases import is_case_file, load_case
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.model.load import load
    from pytest_factedit.run.case import localize_case

    lm = load(None, "cpu")
    seconds: dict[str, list[float]] = {"trace": [], "attribution": []}
    agree = 0
    cases = [load_case(p, root=REPO) for p in sorted((REPO / "fact_cases").glob("*.yaml")) if is_case_file(p)]
    for case in cases:
        settings = resolve_settings(case.method)
        chosen = {}
        for method in seconds:
            runs = [localize_case(lm, case, settings, method, args.precision) for _ in range(args.repeats)]
            found = min(runs, key=lambda r: r.seconds)
            seconds[method].append(found.seconds)
            chosen[method] = (set(found.mlp_layers), set(found.attention_layers))
            print(
                f"{case.id:24s} {method:11s} {found.seconds:5.2f}s  {len(case.prompts)} prompts  "
                f"MLP {list(found.mlp_layers)} attention {list(found.attention_layers)}  [{found.precision}]",
                flush=True,
            )
        agree += chosen["trace"] == chosen["attribution"]
    print(f"\n{len(cases)} shipped cases; attribution chose the same layers as trace in {agree} of them\n")
    print("| method | median s | max s | budget | within |")
    print("|---|---|---|---|---|")
    for method, values in seconds.items():
        median = statistics.median(values)
        print(
            f"| {method} | {median:.2f} | {max(values):.2f} | <= {BUDGET_SECONDS:g} | "
            f"{'yes' if median <= BUDGET_SECONDS else f'no ({median / BUDGET_SECONDS:.1f}x)'} |"
        )
    return 0


def under_kept_edits(count: int, rounds: int) -> int:
    """Each shipped case traced under `count` kept edits, skipping layers and not, and with no edit kept,
    alternated `rounds` times."""
    from pytest_factedit.cases import is_case_file, load_case
    from pytest_factedit.model.load import load

    lm = load(None, "cpu")
    print(
        "| case | skipping, median s | every row, median s | ratio | same layers | largest effect difference "
        "| no edit kept, median s | skipping / no edit kept |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ratios, overheads = [], []
    for path in sorted((REPO / "fact_cases").glob("*.yaml")):
        if is_case_file(path):
            ratio, overhead = _kept_edits_case(lm, load_case(path, root=REPO), count, rounds)
            ratios.append(ratio)
            overheads.append(overhead)
    median = statistics.median(ratios)
    print(f"\nmedian ratio over {len(ratios)} cases: {median:.2f} ({count} kept edits, {rounds} rounds each)")
    print(f"median time under the kept edits / with none: {statistics.median(overheads):.2f}")
    return 0


def _kept_edits_case(lm: object, case: object, count: int, rounds: int) -> tuple[float, float]:
    """One case's row of the --kept-edits table: (skipping / every row, skipping / no edit kept)."""
    import cost_model

    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.localize import forward_hooks
    from pytest_factedit.run.case import localize_case

    settings = resolve_settings(case.method)
    own = {"subject": case.subject, "prompt": case.prompts[0], "ground_truth": case.old[0], "target_new": ""}
    records = [*cost_model.kept_subjects(case, count - 1), own]
    skipping, every, bare = [], [], []
    for _ in range(rounds):
        bare.append(localize_case(lm, case, settings))
        kept = [cost_model.kept_edit(lm, record, seed) for seed, record in enumerate(records)]
        try:
            skipping.append(localize_case(lm, case, settings))
            with forward_hooks(lm.model, {"model.layers.0": lambda _m, _i, _o: None}):
                every.append(localize_case(lm, case, settings))
        finally:
            for edit in kept:
                edit.remove()
    fast, slow, none = (statistics.median(r.seconds for r in runs) for runs in (skipping, every, bare))
    a, b = skipping[-1], every[-1]
    same = (a.mlp_layers, a.attention_layers) == (b.mlp_layers, b.attention_layers)
    gap = max(abs(x - y) for x, y in zip(a.mlp_effects + a.attention_effects, b.mlp_effects + b.attention_effects))
    print(
        f"| {case.id} | {fast:.2f} | {slow:.2f} | {fast / slow:.2f} | {'yes' if same else 'no'} | {gap:.1e} "
        f"| {none:.2f} | {fast / none:.2f} |",
        flush=True,
    )
    return fast / slow, fast / none


if __name__ == "__main__":
    sys.exit(main())
