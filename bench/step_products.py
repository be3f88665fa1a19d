"""A greedy step's products on the embedded model, per number of rows: W xᵀ (`model/lmhead.py: transposed_product`)
against torch's own `F.linear` (x Wᵀ), on 2 threads (greedy steps) and on 1 (the timed latency steps),
whether the two give the same bits, and which one the plugin takes here; first for the decoder's linear
layers (`fast_linears`), then for the LM head (`model/head_argmax.py: greedy_tokens`, where it takes the
full fp32 head: on a CPU without bf16 units).

    python bench/step_products.py                    # rows 1 2 3 4 6 8 12 16 24
    python bench/step_products.py --rows 3 8 --repeats 15

Every plain linear layer of the decoder is multiplied once per timed call (the 126 of Gemma 3 270M, 100 M
weights, 400 MB in fp32), by random rows of its input width; the head (262,144 x 640, 671 MB) likewise;
the times are medians of --repeats calls.
Which form is faster depends on the CPU's vendor through MKL: this prints the vendor and the form the
plugin picks, so that a run on another CPU can check the rule (`LINEAR_ROWS_ON_INTEL`).
"""

from __future__ import annotations

import argparse
from typing import Any

from head_slices import embedded_weights, median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16, 24])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    import torch

    from pytest_factedit.model.head_argmax import greedy_head_form
    from pytest_factedit.model.lmhead import cpu_vendor, few_row_products

    head, weights = embedded_weights()
    print(
        f"CPU vendor {cpu_vendor() or 'unknown'}, kernels {torch.backends.cpu.get_cpu_capability()}, MKL "
        f"{torch.backends.mkl.is_available()}; torch {torch.__version__}; {len(weights)} linear layers, "
        f"{sum(w.numel() for w in weights) / 1e6:.0f} M weights\nthe plugin's greedy steps take: {few_row_products()}\n"
    )
    for name, layers in (("the decoder's linear layers", weights), ("the LM head", [head])):
        print(f"{name}\n\n| rows | threads | W xᵀ | F.linear | F.linear / W xᵀ | same bits |")
        print("|---|---|---|---|---|---|")
        with torch.no_grad():
            for threads in (2, 1):
                torch.set_num_threads(threads)
                for rows in args.rows:
                    print(row_figures(layers, rows, threads, args.repeats))
        print()
    print(f"the plugin's greedy steps take for the head, without a bf16 screen: {greedy_head_form()}")


def row_figures(weights: list[Any], rows: int, threads: int, repeats: int) -> str:
    """One table line: both forms over every layer, timed, and compared bit for bit."""
    import torch

    from pytest_factedit.model.lmhead import transposed_product

    generator = torch.Generator().manual_seed(rows)
    inputs = {width: torch.randn(rows, width, generator=generator) for width in {w.shape[1] for w in weights}}

    def transposed() -> list[Any]:
        return [transposed_product(inputs[w.shape[1]], w) for w in weights]

    def linear() -> list[Any]:
        return [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in weights]

    same = all(torch.equal(a, b) for a, b in zip(transposed(), linear()))
    ours, torchs = (1000 * median_seconds(f, repeats) for f in (transposed, linear))
    return f"| {rows} | {threads} | {ours:.1f} ms | {torchs:.1f} ms | {torchs / ours:.2f} | {'yes' if same else 'no'} |"


if __name__ == "__main__":
    main()
