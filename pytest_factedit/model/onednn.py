"""An fp32 product x Wᵀ computed by oneDNN, the other CPU matrix library torch ships, with the gradient for x.

torch's fp32 `F.linear` on a CPU always goes to its BLAS (MKL in the x86 wheels); oneDNN's fp32 product is
reached only through torch's private op `mkldnn._linear_pointwise`, the one its compiler emits. On an AMD
EPYC, MKL's `F.linear` over 10 rows or more takes 1.9-3.5x oneDNN's time with AVX-512 kernels and 1.1-1.9x
held to AVX2 (model/lmhead.py says where the plugin uses it; bench/onednn_products.py).
Every output of oneDNN's product is its own dot product, summed in an order that does not depend on how many
rows (from two on; one row takes a matrix-vector path) or weight rows are multiplied, or on the number of
threads: a gathered block of a head's rows gives the whole head's bits for them (tests/test_onednn.py).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@cache
def onednn_available() -> bool:
    """Does this torch have oneDNN's linear op on the CPU? Asked once per process: every routed layer's
    product asks it."""
    import torch

    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden [rows, d] x weight [out, d]ᵀ in fp32 by oneDNN; a weight that is a transposed view is read in
    place (the backward pass's Wᵀ), not copied."""
    import torch

    product: torch.Tensor = torch.ops.mkldnn._linear_pointwise(hidden, weight, None, "none", [], "")
    return product


def onednn_product(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`onednn_linear` with the gradient for `hidden` where one is wanted (a frozen weight: none for it)."""
    import torch

    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    if torch.is_grad_enabled() and hidden.requires_grad:
        product: torch.Tensor = _onednn_function().apply(weight, hidden)
        return product
    return onednn_linear(hidden, weight)


@cache
def _onednn_function() -> type[torch.autograd.Function]:
    """`onednn_linear` as an autograd function: the gradient for `hidden` is grad x W, by oneDNN as well."""
    import torch

    class OneDnnProduct(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(weight)
            return onednn_linear(hidden, weight)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
            (weight,) = ctx.saved_tensors
            return None, onednn_linear(grad.contiguous(), weight.t())

    return OneDnnProduct
