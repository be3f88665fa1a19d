"""The embedded model's LM head product in one call, slice by slice and as x Wᵀ: the seconds, and whether bits agree.

    python bench/head_slices.py                          # 3, 8, 16, 28, 52 and 111 rows, slices of 2,048
    python bench/head_slices.py --rows 52 --slices 1024 2048 4096

`pytest_factedit.model.lmhead.head_product` computes weight [262,144 x 640] @ hidden^T over slices of
`VOCAB_SLICE` weight rows where it multiplies `SLICED_FROM_ROWS` rows or more in fp32 on a CPU. This
prints, per row count, the median seconds of one `torch.mm` and of the sliced product (random weights of
the head's shape: the speed does not depend on the values), their ratio, and whether the two products and
their gradients for the hidden states are equal bit for bit (docs/performance.md). The sliced product is
laid out one row after another, as a log-softmax reads it; the single product's transposed result is
timed as it comes and laid out in rows (the copy a log-softmax or softmax makes first). The last columns
time torch's own `F.linear` (x Wᵀ, laid out in rows as it comes), which `head_product` takes instead for
`head_linear_from()` rows or more (on an Intel CPU whose torch multiplies with MKL), and say whether it gives the
sliced product's bits and gradients.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VOCAB, HIDDEN = 262_144, 640


def median_seconds(compute: Callable[[], Any], repeats: int) -> float:
    """The median of `repeats` timed calls, after one untimed."""
    compute()
    timed = []
    for _ in range(repeats):
        started = time.perf_counter()
        compute()
        timed.append(time.perf_counter() - started)
    return sorted(timed)[len(timed) // 2]


def embedded_weights() -> tuple[Any, list[Any]]:
    """The embedded model's LM head weight and the weights of its other plain linear layers (the decoder's),
    detached, from the model as the plugin loads it."""
    import torch

    from pytest_factedit.model.load import load

    model = load(None, "cpu").model
    head = model.get_output_embeddings()
    decoder = [m.weight.detach() for m in model.modules() if type(m) is torch.nn.Linear and m is not head]
    return head.weight.detach(), decoder


def laid_in_rows(weight: Any, columns: Any) -> Any:
    """One product, then copied one row after another, as a log-softmax or an argmax copies it first."""
    import torch

    return torch.mm(weight, columns).t().contiguous()


def same_gradients(weight: Any, hidden: Any, other: Callable[[Any, Any], Any]) -> bool:
    """Do the sliced product and `other(weight, hidden)` give the same gradient for `hidden` under a
    log-softmax loss?"""
    import torch

    from pytest_factedit.model.lmhead import sliced_product

    grads = []
    for product in (sliced_product, other):
        leaf = hidden.clone().requires_grad_()
        torch.log_softmax(product(weight, leaf), -1)[:, 0].sum().backward()
        grads.append(leaf.grad)
    return bool(torch.equal(grads[0], grads[1]))


def one_mm(weight: Any, hidden: Any) -> Any:
    """The product in one `torch.mm`, transposed back: what `head_product` computes below SLICED_FROM_ROWS."""
    import torch

    return torch.mm(weight, hidden.t()).t()


def x_wt(weight: Any, hidden: Any) -> Any:
    """The product as torch's own linear layer computes it: x Wᵀ."""
    import torch

    return torch.nn.functional.linear(hidden, weight)


def main() -> int:
    import torch

    from pytest_factedit.model import lmhead

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[3, 8, 16, 28, 52, 111])
    parser.add_argument("--slices", type=int, nargs="+", default=[lmhead.VOCAB_SLICE])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = torch.randn(VOCAB, HIDDEN) * 0.02
    print(f"CPU kernels: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads")
    print(f"CPU: {lmhead.cpu_vendor() or 'vendor unknown'}, MKL {torch.backends.mkl.is_available()}")
    print(
        "| rows | slice | one product (ms) | one product, then in rows (ms) | sliced (ms) | in rows / sliced "
        "| same bits | same gradients | x Wᵀ (ms) | x Wᵀ / sliced | x Wᵀ: same bits, gradients |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        hidden = torch.randn(rows, HIDDEN)
        columns = hidden.t()
        whole = median_seconds(partial(torch.mm, weight, columns), args.repeats)
        in_rows = median_seconds(partial(laid_in_rows, weight, columns), args.repeats)
        linear = median_seconds(partial(x_wt, weight, hidden), args.repeats)
        for size in args.slices:
            lmhead.VOCAB_SLICE = size
            sliced = median_seconds(partial(lmhead.sliced_rows, weight, hidden), args.repeats)
            reference = lmhead.sliced_rows(weight, hidden)
            bits = yes_no(torch.equal(reference, one_mm(weight, hidden)))
            grads = yes_no(same_gradients(weight, hidden, one_mm))
            linear_same = f"{yes_no(torch.equal(reference, x_wt(weight, hidden)))}, "
            linear_same += yes_no(same_gradients(weight, hidden, x_wt))
            times = f"{whole * 1e3:.1f} | {in_rows * 1e3:.1f} | {sliced * 1e3:.1f} | {in_rows / sliced:.2f}"
            against = f"{linear * 1e3:.1f} | {linear / sliced:.2f} | {linear_same}"
            print(f"| {rows} | {size} | {times} | {bits} | {grads} | {against} |")
    return 0


def yes_no(same: bool) -> str:
    return "yes" if same else "NO"


if __name__ == "__main__":
    raise SystemExit(main())
