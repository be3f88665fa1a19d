"""The embedded model's LM head product in fp32 and in bf16 on this CPU: how much reduced precision would buy.

    python bench/matmul_precision.py              # 50 rows (a training step's answer positions)
    python bench/matmul_precision.py --rows 3 50 200
    python bench/matmul_precision.py --weight 2048x640 --rows 154   # a decoder MLP projection of a step

The head is 262,144 x 640 (random weights of the same shape: speed does not depend on the values);
--weight OUTxIN times another weight shape instead.
CPUs with bf16 units (AMX, AVX-512 bf16) run the bf16 product several times faster; every figure
measured in fp32 would change with it, so the default CPU path stays fp32 (docs/performance.md).
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from head_slices import median_seconds

VOCAB, HIDDEN = 262_144, 640


def seconds(rows: Any, weight: Any, repeats: int) -> float:
    """The median of `repeats` timed products rows @ weight.T (as the LM head computes), after one untimed."""
    import torch

    return median_seconds(partial(torch.nn.functional.linear, rows, weight), repeats)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[50])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--weight", default=f"{VOCAB}x{HIDDEN}", metavar="OUTxIN", help="the weight's shape")
    args = parser.parse_args()
    out_features, in_features = (int(n) for n in args.weight.lower().split("x"))
    torch.manual_seed(0)
    weight = torch.randn(out_features, in_features) * 0.02
    half = weight.bfloat16()
    print(
        f"CPU kernels: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads; "
        f"weight {out_features} x {in_features}"
    )
    print("| rows | fp32 (s) | bf16 (s) | fp32 / bf16 |")
    print("|---|---|---|---|")
    for rows in args.rows:
        hidden = torch.randn(rows, in_features)
        full = seconds(hidden, weight, args.repeats)
        reduced = seconds(hidden.bfloat16(), half, args.repeats)
        print(f"| {rows} | {full:.4f} | {reduced:.4f} | {full / reduced:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
