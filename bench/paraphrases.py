"""Paraphrase accuracy split by whether the base model itself answered the paraphrase with the old answer.

    python bench/paraphrases.py bench/results/editors-shard*.jsonl     # about 3 minutes

A CounterFact paraphrase the unedited model does not answer with `old` is one it does not connect to
the fact; an edit that stays local has no reason to move it. This script asks the base model every
paraphrase of the benchmark sample (the same --data, -n and --seed as bench/editors.py), then splits
each logged method's paraphrase accuracy into the paraphrases it knew and the ones it did not.
Logged paraphrase accuracy is per fact; each benchmark fact has one paraphrase.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from editors import read_logs
from facts import fact_arguments, load_known_cases


def base_knows_paraphrases(lm: object, cases: list) -> dict[str, bool]:
    """Per case id: does the base model give `old` on every paraphrase of the case?"""
    from pytest_factedit.metrics.answers import matches
    from pytest_factedit.model.probe import greedy_continuations
    from pytest_factedit.model.text import answer_token_budget

    known = {}
    for case in cases:
        budget = answer_token_budget(lm.tokenizer, case.old + case.new)
        answers = greedy_continuations(lm.model, lm.tokenizer, list(case.paraphrases), [budget] * len(case.paraphrases))
        known[case.id] = bool(answers) and all(matches(a, case.old) for a in answers)
    return known


def _cell(samples: list[float]) -> str:
    return f"{statistics.mean(samples):.3f} ({len(samples)})" if samples else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, n=100)
    parser.add_argument("logs", nargs="+", type=Path, metavar="JSONL", help="bench/editors.py --log files")
    args = parser.parse_args()
    results = read_logs(args.logs)
    lm, cases, folder = load_known_cases(args)
    with folder:
        known = base_knows_paraphrases(lm, cases)
    print(f"\nthe base model gives the old answer on the paraphrases of {sum(known.values())} of {len(known)} facts\n")
    print("| method | paraphrase acc. (all) | base model knew the paraphrase | base model did not |")
    print("|---|---|---|---|")
    for method in dict.fromkeys(r["method"] for r in results):
        split: dict[bool, list[float]] = {True: [], False: []}
        for r in results:
            if r["method"] == method and r["status"] == "ran" and r["fact"] in known:
                split[known[r["fact"]]] += r["values"]["paraphrase acc."]
        print(f"| {method} | {_cell(split[True] + split[False])} | {_cell(split[True])} | {_cell(split[False])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
