"""The two parts of a timed latency step, per shipped case: the decoder pass and the LM head, on one thread.

    python bench/latency_parts.py                      # every case of fact_cases/, 5 timings of each part
    python bench/latency_parts.py --repeats 9
    python bench/latency_parts.py --base-base 3        # and the latency figure of an edit that changes nothing

The latency figure (docs/metrics.md) times one greedy step over a case's prompts on one thread and counts
its CPU time. Its two parts are timed apart (`pytest_factedit.model.decoding.timed_step`): the decoder pass,
and the LM head taking the token. This prints, per case, the base model's minimum of each over `--repeats`
steps, and the head's share of the step: what timing the head once per case saves. With --base-base N,
it then times each case's latency figure N times as the plugin does (`run/probing.py: latency_timings`) for an
edit that changes nothing, so that both sides are the base model: the spread of those ratios around 1.0 is
the figure's noise (run it beside a busy process to see the noise under load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=REPO / "fact_cases")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--base-base", type=int, default=0, metavar="N", help="latency figures of a no-op edit")
    args = parser.parse_args()

    from benchmark import cpu_line

    from pytest_factedit.cases import is_case_file, load_case
    from pytest_factedit.model.decoding import prefill, timed_step
    from pytest_factedit.model.load import load
    from pytest_factedit.model.text import encode_prompt

    lm = load(None, "cpu")
    print(cpu_line())
    print("| case | prompts | decoder pass (ms) | LM head (ms) | head / step |")
    print("|---|---|---|---|---|")
    shares = []
    cases = [load_case(p, root=args.cases) for p in sorted(args.cases.glob("*.y*ml")) if is_case_file(p)]
    for case in cases:
        ids = [encode_prompt(lm.tokenizer, p, case.chat_format) for p in case.prompts]
        state = prefill(lm.model, ids, lm.tokenizer.pad_token_id)
        steps = [timed_step(lm.model, state) for _ in range(args.repeats)]
        decoder, head = min(s.decoder for s in steps), min(s.head for s in steps)
        shares.append(head / (decoder + head))
        print(f"| {case.id} | {len(ids)} | {decoder * 1000:.1f} | {head * 1000:.1f} | {shares[-1]:.2f} |")
    print(f"\nthe head's share of a step, median over {len(shares)} cases: {statistics.median(shares):.2f}")
    if args.base_base:
        base_base_ratios(lm, cases, args.base_base)
    return 0


def base_base_ratios(lm: Any, cases: list[Any], rounds: int) -> None:
    """The latency figure of an edit that changes nothing (base against base), `rounds` times per case."""
    from pytest_factedit.model.targets import TargetModules
    from pytest_factedit.run.probing import ProbePlan, latency_timings

    nothing = SimpleNamespace(
        targets=TargetModules((), (), "nothing"), disabled=nullcontext, merged=lambda: nullcontext(False)
    )
    ratios = []
    for _ in range(rounds):
        for case in cases:
            timed = latency_timings(lm, case, cast(Any, nothing), ProbePlan(latency_repeats=3, fluency_tokens=0))
            ratios.append(timed["edited_seconds_per_token"] / timed["base_seconds_per_token"])
    print(
        f"base/base latency figures, {len(ratios)} ({rounds} per case): min {min(ratios):.3f}, "
        f"median {statistics.median(ratios):.3f}, max {max(ratios):.3f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
