"""The embedded model's LM head product in fp32 and in bf16 on this CPU: how much reduced precision would buy.

    python bench/matmul_precision.py              # 50 rows (a training step's answer positions)
    python bench/matmul_precision.py --rows 3 50 200

The head is 262,144 x 640 (random weights of the same shape: speed does not depend on the values).
CPUs with bf16 units (AMX, AVX-512 bf16) run the bf16 product several times faster; every figure
measured in fp32 would change with it, so the default CPU path stays fp32 (docs/performance.md).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

VOCAB, HIDDEN = 262_144, 640


def seconds(rows: Any, weight: Any, repeats: int) -> float:
    """The median of `repeats` timed products rows @ weight.T (as the LM head computes), after one untimed."""
    import torch

    torch.nn.functional.linear(rows, weight)
    timed = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.nn.functional.linear(rows, weight)
        timed.append(time.perf_counter() - started)
    return sorted(timed)[len(timed) // 2]


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[50])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = torch.randn(VOCAB, HIDDEN) * 0.02
    half = weight.bfloat16()
    print(f"CPU kernels: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads")
    print("| rows | fp32 (s) | bf16 (s) | fp32 / bf16 |")
    print("|---|---|---|---|")
    for rows in args.rows:
        hidden = torch.randn(rows, HIDDEN)
        full = seconds(hidden, weight, args.repeats)
        reduced = seconds(hidden.bfloat16(), half, args.repeats)
        print(f"| {rows} | {full:.4f} | {reduced:.4f} | {full / reduced:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
