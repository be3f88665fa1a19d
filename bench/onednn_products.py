"""fp32 products of the embedded model by MKL and by oneDNN, per number of rows: torch's own `F.linear` (x Wᵀ,
MKL in torch's x86 wheels), W xᵀ (`model/lmhead.py: transposed_product`, in slices for the head from 12 rows:
what the plugin took on an AMD CPU before oneDNN), and oneDNN's product (`model/onednn.py`); then the
gradient a training step takes through the head (grad x W) by MKL and by oneDNN. Which one the plugin takes
here is printed beside each line (`lmhead.through_onednn`).

    python bench/onednn_products.py                      # rows 1 2 3 4 6 8 10 12 16 24 52 111 154 600
    python bench/onednn_products.py --rows 3 52 --repeats 15

The decoder's 126 plain linear layers (100 M weights) are multiplied once per timed call by random rows of
their input width, the head (262,144 x 640) likewise; times are medians of --repeats calls on torch's threads
(2 on a 2-core machine). Run it with the AVX2 caps (`ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
ONEDNN_MAX_CPU_ISA=AVX2`) for an AVX2-only CPU's figures.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from head_slices import embedded_weights, median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 52, 111, 154, 600])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import torch

    from pytest_factedit.infra.cpu import cpuinfo_field
    from pytest_factedit.model.lmhead import cpu_vendor, head_product_form, products_through_onednn

    head, weights = embedded_weights()
    print(
        f"CPU {cpuinfo_field('model name') or 'unknown'} ({cpu_vendor() or 'unknown vendor'}), kernels "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
        f"{len(weights)} linear layers\nproducts through oneDNN here: {products_through_onednn()}; the head's "
        f"many-row products: {head_product_form()}\n"
    )
    with torch.no_grad():
        for name, layers in (("the decoder's linear layers", weights), ("the LM head", [head])):
            print(f"{name}\n\n| rows | F.linear (MKL) | W xᵀ (MKL) | oneDNN | oneDNN / W xᵀ | the plugin takes |")
            print("|---|---|---|---|---|---|")
            for rows in args.rows:
                print(forward_line(layers, rows, args.repeats))
            print()
        print("the gradient through the head, grad [rows, 262,144] x W\n\n| rows | MKL | oneDNN | oneDNN / MKL |")
        print("|---|---|---|---|")
        for rows in [r for r in args.rows if r >= 10]:
            print(backward_line(head, rows, args.repeats))


def forward_line(weights: list[Any], rows: int, repeats: int) -> str:
    """One table line: the three forms over every layer, timed."""
    import torch

    from pytest_factedit.model.lmhead import through_onednn, transposed_product
    from pytest_factedit.model.onednn import onednn_linear

    generator = torch.Generator().manual_seed(rows)
    inputs = {width: torch.randn(rows, width, generator=generator) for width in {w.shape[1] for w in weights}}

    def over_layers(product: Callable[[Any, Any], Any]) -> Callable[[], list[Any]]:
        return lambda: [product(inputs[w.shape[1]], w) for w in weights]

    linear, transposed, onednn = (
        1000 * median_seconds(over_layers(p), repeats)
        for p in (torch.nn.functional.linear, transposed_product, onednn_linear)
    )
    takes = "oneDNN" if all(through_onednn(inputs[w.shape[1]], w) for w in weights) else "MKL"
    return f"| {rows} | {linear:.1f} ms | {transposed:.1f} ms | {onednn:.1f} ms | {onednn / transposed:.2f} | {takes} |"


def backward_line(head: Any, rows: int, repeats: int) -> str:
    """The head's gradient for its input, as torch computes it for W xᵀ (grad.mm(W), MKL) and by oneDNN."""
    import torch

    from pytest_factedit.model.onednn import onednn_linear

    grad = torch.randn(rows, head.shape[0], generator=torch.Generator().manual_seed(rows))
    mkl = 1000 * median_seconds(lambda: grad.mm(head), repeats)
    onednn = 1000 * median_seconds(lambda: onednn_linear(grad, head.t()), repeats)
    return f"| {rows} | {mkl:.1f} ms | {onednn:.1f} ms | {onednn / mkl:.2f} |"


if __name__ == "__main__":
    main()
