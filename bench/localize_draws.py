"""Which layers localization picks with fewer noise draws: each fact traced with the default's draws and
with fewer, as the default editor traces it (`run/case.py: localize_case`), and how many facts' chosen
MLP and attention layers change (as sets: an edit adapts the same modules whatever their order).

    cd bench
    python localize_draws.py --cases same_subject --draws 3 2 1 --log results/localize-draws-ss.jsonl
    python localize_draws.py -n 100 --draws 3 2 1 --log results/localize-draws-cf.jsonl

A fact whose layers do not change is edited bit for bit as under the default (the rest of the edit does
not read the trace), so an editor run with fewer draws differs from the default only on the facts counted
here. The seconds are each trace's own, for a first look; compare them within one run only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from editors import case_folder
from facts import fact_arguments, load_known_cases

from pytest_factedit.edit import resolve_settings
from pytest_factedit.run.case import localize_case

HERE = Path(__file__).parent


def traced_layers(lm: Any, case: Any, draws: int) -> dict[str, Any]:
    """The layers the default editor's trace of `case` picks with `draws` noise draws, and its seconds."""
    settings = resolve_settings(case.method, {"noise_samples": draws})
    started = time.perf_counter()
    found = localize_case(lm, case, settings)
    seconds = round(time.perf_counter() - started, 3)
    return {"mlp": sorted(found.mlp_layers), "attention": sorted(found.attention_layers), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fact_arguments(parser, 100)
    parser.add_argument("--cases", type=Path, help="a folder of case files instead of CounterFact facts")
    parser.add_argument("--draws", type=int, nargs="+", default=[3, 2, 1], help="the first is the reference")
    parser.add_argument("--log", type=Path, help="one JSON line per fact, appended")
    args = parser.parse_args()
    lm, cases, folder = case_folder(HERE / args.cases) if args.cases else load_known_cases(args)
    first, *others = args.draws
    changed = dict.fromkeys(others, 0)
    with folder:
        for case in cases:
            row = {"fact": case.id, **{str(d): traced_layers(lm, case, d) for d in args.draws}}
            for draws in others:
                ours, theirs = row[str(draws)], row[str(first)]
                changed[draws] += (ours["mlp"], ours["attention"]) != (theirs["mlp"], theirs["attention"])
            if args.log:
                with args.log.open("a", encoding="utf-8") as log:
                    log.write(json.dumps(row) + "\n")
            print(row, flush=True)
    for draws, count in changed.items():
        print(f"{draws} draws against {first}: the chosen layers change on {count} of {len(cases)} facts")


if __name__ == "__main__":
    main()
