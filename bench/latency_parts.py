"""The two parts of a timed latency step, per shipped case: the decoder pass and the LM head, on one thread.

    python bench/latency_parts.py                      # every case of fact_cases/, 5 timings of each part
    python bench/latency_parts.py --repeats 9

The latency figure (docs/metrics.md) times one greedy step over a case's prompts on one thread and counts
its CPU time. Its two parts are timed apart (`pytest_factedit.model.decoding.timed_step`): the decoder pass,
and the LM head taking the token. This prints, per case, the base model's minimum of each over `--repeats`
steps, and the head's share of the step: what timing the head on one side only saves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=REPO / "fact_cases")
    parser.add_argument("--repeats", type=int, default=5)
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
    for path in sorted(p for p in args.cases.glob("*.y*ml") if is_case_file(p)):
        case = load_case(path, root=args.cases)
        ids = [encode_prompt(lm.tokenizer, p, case.chat_format) for p in case.prompts]
        state = prefill(lm.model, ids, lm.tokenizer.pad_token_id)
        steps = [timed_step(lm.model, state) for _ in range(args.repeats)]
        decoder, head = min(s.decoder for s in steps), min(s.head for s in steps)
        shares.append(head / (decoder + head))
        print(f"| {case.id} | {len(ids)} | {decoder * 1000:.1f} | {head * 1000:.1f} | {shares[-1]:.2f} |")
    print(f"\nthe head's share of a step, median over {len(shares)} cases: {sorted(shares)[len(shares) // 2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
