"""Matrix products in the form that is fast on a CPU: the language-model head, applied only to the hidden
states a computation needs (over slices of its weight where that is faster), every linear layer during
decoding (`fast_linears`), and on an AMD CPU every fp32 linear layer of a loaded model (`route_linears`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from types import MethodType
from typing import TYPE_CHECKING, Any

from ..infra.cpu import cpuinfo_field
from .onednn import onednn_available, onednn_product

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a causal LM (hidden states, no LM head), also inside a peft wrapper."""
    import torch

    get_base_model = getattr(model, "get_base_model", None)  # only a peft wrapper has one
    inner = get_base_model() if get_base_model is not None else model
    body = inner.base_model
    if not isinstance(body, torch.nn.Module):  # transformers' base_model: the body module, or the model itself
        raise TypeError(f"{type(inner).__name__}.base_model is a {type(body).__name__}, not a module")
    return body


# A product with a weight of at least twice this many rows runs over slices of this many weight rows, where
# it multiplies SLICED_FROM_ROWS rows or more on a CPU in fp32: MKL computes the embedded model's 262,144 x 640
# head with 12-111 rows 1.1-1.4x faster over 2,048-row slices than in one call (each slice stays in cache),
# with the same bits, since every output is the same dot product (not so on an Intel CPU held to AVX2 kernels,
# where MKL's bits differ in the last places); below 12 rows one call is as fast (bench/head_slices.py).
VOCAB_SLICE = 2048
SLICED_FROM_ROWS = 12


def head_product(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden [rows, d] x weight [vocab, d]^T, computed as (weight @ hidden^T)^T, or (`head_linear_from`)
    on an Intel CPU with MKL for many rows of a frozen fp32 head as torch's own `F.linear`, or on an AMD CPU
    (`through_onednn`) by oneDNN.

    With a vocabulary of 262k and few rows, `F.linear` takes slow CPU paths on an AMD EPYC: one vector
    product per row for a 3-D input (24 rows: 0.53 s), a packed product for 2-8 rows (3 rows: 125 ms). The
    transposed product reads the weight once (3 rows: 18 ms, 24 rows: 84 ms against 112 ms; a 2-core AMD
    EPYC). A single row is computed as two (the one-row path is a slow matrix-vector product); rows whose
    values are not next to each other in memory are made so first (`in_memory_order`: the product of two
    transposed layer outputs is laid out so, and would take a path 2-3x slower).
    """
    import torch

    if through_onednn(hidden, weight):
        return onednn_product(hidden, weight)
    if in_slices(hidden, weight) and as_linear(hidden, weight):
        return torch.nn.functional.linear(in_memory_order(hidden), weight)
    return transposed_product(hidden, weight)


def transposed_product(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`head_product` as W xᵀ whatever the CPU: over slices where `in_slices`, else in one product."""
    if not in_slices(hidden, weight):
        return one_product(hidden, weight)
    return sliced_product(weight, in_memory_order(hidden))


def head_part_product(hidden: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """The product with a caller's slice of a head's rows (`part`), in `head_product`'s form for the rows:
    oneDNN's where `through_onednn`, x Wᵀ where `as_linear`, else `one_product`."""
    import torch

    if through_onednn(hidden, part):
        return onednn_product(hidden, part)
    if as_linear(hidden, part):
        return torch.nn.functional.linear(in_memory_order(hidden), part)
    return one_product(hidden, part)


def sliced_product(weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """`sliced_rows`, with the gradient for `hidden` where one is wanted."""
    import torch

    if torch.is_grad_enabled() and hidden.requires_grad:
        product: torch.Tensor = _sliced_function().apply(weight, hidden)
        return product
    return sliced_rows(weight, hidden)


# From this many rows, a frozen fp32 head's product (`in_slices`) goes through torch's own `F.linear` (x Wᵀ)
# on an Intel CPU whose torch multiplies with MKL: the embedded model's head took 0.63-1.00 of the sliced
# product's time for 16-200 rows with AVX-512 kernels, with the same bits and gradients, and 0.63-0.92 held to
# AVX2 kernels, with other bits; for 8-14 rows with AVX-512 kernels it took 1.0-1.6x (2 threads, a 2-core
# Xeon with AMX; bench/head_slices.py). An AMD EPYC's MKL is faster the other way round.
HEAD_LINEAR_FROM_ROWS_ON_INTEL = 16


def head_linear_from() -> int | None:
    """From how many rows `head_product` takes `F.linear` for a frozen fp32 head: `HEAD_LINEAR_FROM_ROWS_ON_INTEL`
    where torch multiplies with MKL on an Intel CPU, never elsewhere (None)."""
    return HEAD_LINEAR_FROM_ROWS_ON_INTEL if mkl_on_intel() else None


def as_linear(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Does a head's product of these rows go through `F.linear`: at least `head_linear_from()` rows of a
    `frozen_fp32_on_cpu` product?"""
    start = head_linear_from()
    return start is not None and hidden.shape[0] >= start and frozen_fp32_on_cpu(hidden, weight)


# On an AMD CPU whose torch multiplies with MKL, a frozen fp32 product of this many rows or more goes to
# oneDNN instead (`through_onednn`): the embedded model's 126 decoder linear layers took 0.42-0.70 of the
# time of the W xᵀ form over 10-600 rows with AVX-512 kernels (0.69-1.03 held to AVX2), and its head
# 0.40-0.56 (0.66-0.96); over 2-4 rows W xᵀ is faster (oneDNN 1.04-2.5x). 2-core AMD EPYC, 2 threads;
# bench/onednn_products.py.
ONEDNN_FROM_ROWS = 10


def mkl_on_amd() -> bool:
    """Does torch multiply with MKL on an AMD CPU, whose fp32 products oneDNN computes faster?"""
    import torch

    return bool(torch.backends.mkl.is_available()) and cpu_vendor() == "AuthenticAMD"


def products_through_onednn() -> bool:
    """Do frozen fp32 products go to oneDNN here: MKL on an AMD CPU, and a torch with oneDNN's linear op?"""
    return mkl_on_amd() and onednn_available()


def through_onednn(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Does this product go to oneDNN: a `frozen_fp32_on_cpu` one of at least ONEDNN_FROM_ROWS rows where
    `products_through_onednn`?"""
    return hidden.shape[0] >= ONEDNN_FROM_ROWS and frozen_fp32_on_cpu(hidden, weight) and products_through_onednn()


def head_product_form() -> str:
    """The form of the head's many-row products here (`head_product`, `head_part_product`), named for the
    stores of decoded rows and traces (model/probe_cache.py)."""
    if products_through_onednn():
        return f"oneDNN from {ONEDNN_FROM_ROWS} rows, W xᵀ below"
    start = head_linear_from()
    sliced = f"W xᵀ in slices from {SLICED_FROM_ROWS} rows"
    return sliced if start is None else f"x Wᵀ from {start} rows, {sliced} below"


def gathered_rows_product(hidden: torch.Tensor, block: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden x blockᵀ, for a block of `weight`'s rows gathered in whole `VOCAB_SLICE`s, with the bits
    `head_product(hidden, weight)` gives for those rows: the form it takes for the whole weight (every output
    of each is its own dot product; on an Intel CPU the x Wᵀ it takes from 16 rows gives the sliced bits with
    the AVX-512 kernels that run where a bf16 screen asks for this)."""
    if through_onednn(hidden, weight):
        return onednn_product(hidden, block)
    return sliced_rows(block, hidden) if in_slices(hidden, weight) else one_product(hidden, block)


def one_product(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`head_product` in one `torch.mm`, never in slices: for a caller that slices the weight itself."""
    import torch

    if hidden.shape[0] == 1:
        return torch.mm(weight, hidden.repeat(2, 1).t()).t()[:1]
    return torch.mm(weight, in_memory_order(hidden).t()).t()


def single_row_as_linear(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Is one row's product with a whole head fastest through `F.linear` (MKL's matrix-vector product): fp32 on
    an Intel CPU whose torch multiplies with MKL, outside autocast? There the embedded model's head takes
    24-25 ms for a row, against 73 ms as `head_product`'s two rows of W xᵀ, with AVX-512 and AVX2 kernels
    alike (2 threads, a 2-core Xeon with AMX); in bf16 the two rows are faster (14 ms against 21 ms), and so
    is MKL's one-row path on an AMD EPYC. `head_product` keeps its two rows all the same: the bf16 screen's
    fp32 blocks (model/head_argmax.py) must give its bits, and a matrix-vector product over a block of the
    head's rows need not give the whole head's."""
    import torch

    return (
        hidden.shape[0] == 1
        and hidden.device.type == "cpu"
        and hidden.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and mkl_on_intel()
    )


def in_memory_order(hidden: torch.Tensor) -> torch.Tensor:
    """`hidden` with each row's values next to each other in memory, as the fast product path wants them."""
    return hidden if hidden.stride(-1) == 1 else hidden.contiguous()


def in_slices(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Is the product one that slices make faster with the same result: fp32 on a CPU, many weight rows,
    enough hidden rows, no autocast, and no gradient wanted for the weight (a frozen head)?"""
    return (  # the shapes first: every decoder linear of a decoding step (`fast_linears`) stops there
        weight.shape[0] >= 2 * VOCAB_SLICE
        and hidden.shape[0] >= SLICED_FROM_ROWS
        and frozen_fp32_on_cpu(hidden, weight)
    )


def frozen_fp32_on_cpu(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """fp32 on a CPU outside autocast, with no gradient wanted for the weight (a frozen head): a product whose
    form (`in_slices`, `as_linear`) changes only its speed and last bits."""
    import torch

    return (
        hidden.device.type == "cpu"
        and hidden.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and weight.requires_grad)
    )


def sliced_rows(weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """(weight @ hidden^T)^T, VOCAB_SLICE weight rows at a time, laid out one row after another: what a
    log-softmax or an argmax over the vocabulary reads fastest (it would copy a transposed product first)."""
    import torch

    out = torch.empty((hidden.shape[0], weight.shape[0]), dtype=weight.dtype, device=weight.device)
    columns = hidden.t()
    for start in range(0, weight.shape[0], VOCAB_SLICE):
        out[:, start : start + VOCAB_SLICE] = torch.mm(weight[start : start + VOCAB_SLICE], columns).t()
    return out


@cache
def _sliced_function() -> type[torch.autograd.Function]:
    """`sliced_rows` as an autograd function whose gradient for `hidden` is the one torch computes for
    `torch.mm(weight, hidden.t()).t()`, by the same product (torch's mm_mat2_backward, which picks it by the
    layout of hidden^T), so training sees the bits one product gives (tests/test_decoding.py compares them)."""
    import torch

    class SlicedProduct(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(weight)
            ctx.rows_in_order = hidden.is_contiguous()  # hidden^T is then column-major
            return sliced_rows(weight, hidden)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
            (weight,) = ctx.saved_tensors
            if ctx.rows_in_order:
                return None, grad.mm(weight)
            return None, weight.t().mm(grad.t()).t()

    return SlicedProduct


def logits_from_hidden(
    model: PreTrainedModel, hidden: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """LM head (and the final logit soft-capping some models use) on hidden states [..., d].

    `weight` replaces the head's weight, e.g. a copy already cast to the autocast dtype. A head that is
    not a plain linear layer (an adapter on it) runs as its own module.
    """
    import torch

    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear or weight is not None:
        logits = linear_product(hidden, head.weight if weight is None else weight, getattr(head, "bias", None))
    else:
        logits = head(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def plain_linear_head(model: PreTrainedModel) -> bool:
    """Is the head one linear product: a `torch.nn.Linear` (not an adapter's module) with no bias, and no
    logit soft-capping after it? Its logits are then h Wᵀ alone, in whatever form is fastest."""
    import torch

    head = model.get_output_embeddings()
    plain = type(head) is torch.nn.Linear and getattr(head, "bias", None) is None
    return plain and not getattr(model.config, "final_logit_softcapping", None)


def linear_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A linear layer [..., d] -> [..., out] computed with `head_product`."""
    out = head_product(x.reshape(-1, x.shape[-1]), weight)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


# The rows of a product that torch's own `F.linear` (x Wᵀ) computes faster than `head_product` (W xᵀ, one row
# as two) with MKL on an Intel CPU: the embedded model's 126 decoder linears took 24-48 ms through `F.linear`
# for 1-8 rows and 62-71 ms as W xᵀ (2 threads; one thread: 44-91 ms against 107-124 ms; a 2-core Xeon with
# AMX, bench/step_products.py); from 12 rows on the two are about as fast, and from 16 on they gave the same
# bits. On an AMD CPU MKL is fast the other way round.
LINEAR_ROWS_ON_INTEL = range(1, 9)


@cache
def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD"): from Linux's `cpuinfo`, else the platform's
    processor string (Windows names it there); '' where neither says."""
    import platform

    named = cpuinfo_field("vendor_id", cpuinfo)
    if named is not None:
        return named
    return next((v for v in ("GenuineIntel", "AuthenticAMD") if v in platform.processor()), "")


def mkl_on_intel() -> bool:
    """Does torch multiply with MKL on an Intel CPU, where a few rows' products are fastest as x Wᵀ?"""
    import torch

    return bool(torch.backends.mkl.is_available()) and cpu_vendor() == "GenuineIntel"


def linear_rows() -> range:
    """How many rows of a decoding step's linear layer `fast_linears` leaves to `F.linear`: 1-8 where torch
    multiplies with MKL on an Intel CPU (`LINEAR_ROWS_ON_INTEL`), none elsewhere."""
    return LINEAR_ROWS_ON_INTEL if mkl_on_intel() else range(0)


def product_forms(to_linear: range) -> str:
    """The forms of a step's products when `to_linear` rows go through `F.linear`, named for a decoded row's
    store (model/probe_cache.py) and a benchmark's CPU line."""
    return f"x Wᵀ for {to_linear.start}-{to_linear.stop - 1} rows, else W xᵀ" if to_linear else "W xᵀ"


def few_row_products() -> str:
    """The products a decoding step's linear layers take here: from ONEDNN_FROM_ROWS rows oneDNN's on an AMD
    CPU (`route_linears`), and those `fast_linears` takes."""
    forms = product_forms(linear_rows())
    return f"oneDNN from {ONEDNN_FROM_ROWS} rows, {forms} below" if products_through_onednn() else forms


def _product_forward(module: torch.nn.Linear, to_linear: range) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.numel() // x.shape[-1] in to_linear:
            return torch.nn.Linear.forward(module, x)
        return linear_product(x, module.weight, module.bias)

    return forward


@contextmanager
def fast_linears(model: torch.nn.Module) -> Iterator[None]:
    """Every plain linear layer of `model` computes with `head_product` for the block, except where
    `F.linear` is faster for the rows (`linear_rows`); restored in `finally`.

    A greedy step multiplies a few rows by each weight: 18 layers of the embedded model take 37 ms for
    3 rows through `F.linear` and 13 ms as `head_product` on a 2-core AMD EPYC, 25 ms and 63 ms on a 2-core
    Xeon. From 16 rows on, both give the same bits and about the same time. The weight is read at each call,
    so a merged or swapped weight is used.
    """
    import torch

    patched = []
    rows = linear_rows()
    try:
        for module in model.modules():
            if type(module) is torch.nn.Linear and "forward" not in module.__dict__:
                # an instance attribute shadows the class's forward until `del` (mypy: methods are not assigned)
                module.forward = _product_forward(module, rows)  # type: ignore[method-assign, assignment]
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def route_linears(model: torch.nn.Module) -> int:
    """Where frozen fp32 products go to oneDNN (`products_through_onednn`), every plain linear layer of
    `model` computes with `linear_product` from now on, for the model's life; elsewhere nothing changes.
    Returns how many layers were routed.

    This is how the loaded model computes, as its attention implementation is, not a temporary state: every
    pass sees it (probes, traces, training, the user's own); a shipped case's edit took 0.60 of its time on a
    2-core AMD EPYC (0.86 held to AVX2 kernels). A product that is not `frozen_fp32_on_cpu` (a trained
    weight, autocast, a GPU) runs the layer's own forward. The method is bound to its layer, so a deep copy
    of the model computes with the copy's weights.
    """
    import torch

    if not products_through_onednn():
        return 0
    routed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and "forward" not in module.__dict__:
            # an instance attribute shadows the class's forward (mypy: methods are not assigned)
            module.forward = MethodType(_routed_forward, module)  # type: ignore[method-assign]
            routed += 1
    return routed


def _routed_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    import torch

    if frozen_fp32_on_cpu(x, layer.weight):
        return linear_product(x, layer.weight, layer.bias)
    return torch.nn.Linear.forward(layer, x)
