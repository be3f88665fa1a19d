"""Localization seconds per fact on the embedded model, for `trace` and `attribution` (budget: 3 s).

    python bench/localization.py                      # the shipped cases, auto precision
    python bench/localization.py --precision float32  # without bf16 autocast, for comparison

Prints one line per case and method (seconds, precision, chosen layers) and a markdown table of the
median and maximum over the shipped cases.
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    sys.exit(main())
