"""A greedy step's tokens from a screen of the LM head and an fp32 product over the few tokens that can win:
the tokens of the full fp32 head, ties included, in a fraction of its time.

A greedy step reads only each row's argmax over the vocabulary. A screen is a cheaper product of the head
whose logits differ from the fp32 head's by at most a known bound per unit hidden norm, so a token whose
screened logit falls below the row's best by more than twice the bound cannot be the fp32 argmax. The
tokens left (a few to hundreds of Gemma's 262,144) are multiplied in fp32 in whole `VOCAB_SLICE`-row
blocks, in the form the full head takes (the same bits: every output is its own dot product), and the
argmax is taken over them in vocabulary order. Two screens:

- bf16 on a CPU with bf16 units: the head rounded to bf16, kept packed in oneDNN's layout, so a few rows'
  product reads it at memory speed (3 rows: 12 ms, where the fp32 head takes 24-30 ms);
- fp16 elsewhere (model/fp16_screen.py): fbgemm's product with the head rounded to fp16, for the rows
  where it is faster (`fp16_screen_rows`); its bound is the rounding's own size, so it leaves fewer tokens.

`bench/greedy_head.py` times the whole step per number of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from .fp16_screen import fp16_head
from .introspect import weight_of
from .lmhead import (
    HEAD_LINEAR_FROM_ROWS_ON_INTEL,
    VOCAB_SLICE,
    gathered_rows_product,
    head_product_form,
    in_memory_order,
    logits_from_hidden,
    mkl_on_intel,
    plain_linear_head,
    product_forms,
    products_through_onednn,
)
from .precision import cpu_has_bf16_units, head_derived

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# Past this many tokens left by the screen (in all rows together) the fp32 products would cost more than
# they save: the full head computes the step.
MAX_SCREENED_TOKENS = 4 * VOCAB_SLICE


# The rows of a greedy step whose full fp32 head torch's own `F.linear` (x Wᵀ) multiplies faster than
# `head_product` (W xᵀ) with MKL on an Intel CPU, where no screen runs: 1-6 rows took 32-71 ms against
# 92-97 ms held to AVX2 kernels, and 30-72 ms against 87-93 ms with AVX-512 kernels and no bf16 units, where
# 8 and 12 rows took 112 and 147 ms against 90 and 116 ms (2 threads, a 2-core Xeon with AMX held below it;
# bench/step_products.py).
HEAD_LINEAR_ROWS_ON_INTEL = range(1, 7)

# The rows of a greedy step the fp16 screen takes where the CPU has no bf16 units: held to AVX2 kernels the
# step took 7.9-22.2 ms for 1-12 rows against the full head's 15.6-52.9 ms, 43.9 against 68.0 ms for 24 rows
# and 61.3 against 82.4 ms for 32, where 48 rows took about the full head's time (fbgemm's fp16 product takes
# time in proportion to its rows past a few; 2 threads, a 2-core AMD EPYC; bench/greedy_head.py).
FP16_SCREEN_ROWS = range(1, 33)


@dataclass(frozen=True)
class Screen:
    """A cheaper product of the head, `product(hidden.to(dtype))`, whose logits are within `per_norm` x |h| of
    the fp32 head's for every row h and token."""

    name: str
    product: Callable[[torch.Tensor], torch.Tensor]
    dtype: torch.dtype
    per_norm: float


def greedy_tokens(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """`logits_from_hidden(model, hidden).argmax(-1)` for hidden states [rows, d]: through a screen where one
    is faster (`screen_for`), else the full head, in the form that is faster for the rows (`head_linear_rows`)."""
    import torch

    screen = screen_for(model, hidden)
    if screen is not None:
        weight = weight_of(model.get_output_embeddings())
        tokens = screened_argmax(in_memory_order(hidden), weight, screen)
        if tokens is not None:
            return tokens
    elif plain_fp32_head(model, hidden) and hidden.shape[0] in head_linear_rows():
        weight = weight_of(model.get_output_embeddings())
        return torch.nn.functional.linear(in_memory_order(hidden), weight).argmax(-1)
    return logits_from_hidden(model, hidden).argmax(-1)


def plain_fp32_head(model: PreTrainedModel, hidden: torch.Tensor) -> bool:
    """A plain linear fp32 head with no bias or logit cap and a vocabulary of several slices, met by fp32 hidden
    states on a CPU outside autocast: its argmax is one product's, in whatever form is fastest."""
    import torch

    if not plain_linear_head(model):
        return False
    weight = weight_of(model.get_output_embeddings())
    return (
        weight.shape[0] >= 2 * VOCAB_SLICE
        and hidden.device.type == "cpu"
        and hidden.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def screen_for(model: PreTrainedModel, hidden: torch.Tensor) -> Screen | None:
    """The screen that gives these rows the same tokens faster, made once per head weight, or None: the bf16
    screen on a CPU whose bf16 products are fast (`cpu_has_bf16_units`; held to AVX2 kernels a bf16 head took
    1.5-3.4x its fp32 time over 3-40 rows), else the fp16 screen for `fp16_screen_rows`, where fbgemm runs
    and computes what its bound assumes; only for a `plain_fp32_head`."""
    if not plain_fp32_head(model, hidden):
        return None
    weight = weight_of(model.get_output_embeddings())
    if cpu_has_bf16_units():
        screen: Screen = head_derived(weight, "bf16 screen", bf16_screen)
        return screen
    if hidden.shape[0] in fp16_screen_rows():
        fp16: Screen | None = head_derived(weight, "fp16 screen", fp16_screen)
        return fp16
    return None


def ready_screen(model: PreTrainedModel, rows: int) -> None:
    """Make the screen a greedy step of `rows` rows will take, if not made yet: a timed step must not time
    its making (the packing of the head's copy)."""
    import torch

    weight = weight_of(model.get_output_embeddings())
    screen_for(model, torch.zeros((rows, weight.shape[1]), dtype=weight.dtype, device=weight.device))


def fp16_screen_rows() -> range:
    """The rows the fp16 screen takes where the CPU has no bf16 units and fbgemm's fp16 product runs: up to
    `FP16_SCREEN_ROWS`, on an Intel CPU with MKL only below `HEAD_LINEAR_FROM_ROWS_ON_INTEL` (from there its
    full head is x Wᵀ, whose bits a gathered block of rows need not give held to AVX2 kernels)."""
    if cpu_has_bf16_units() or not fbgemm_fp16_runs():
        return range(0)
    return range(1, HEAD_LINEAR_FROM_ROWS_ON_INTEL) if mkl_on_intel() else FP16_SCREEN_ROWS


@cache
def fbgemm_fp16_runs() -> bool:
    """Does this torch have fbgemm's fp16 product, on a CPU fbgemm runs on (AVX2 or later)?"""
    import torch

    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(4, 8), None)
        return bool(torch.ops.quantized.linear_dynamic_fp16(torch.ones(2, 8), packed).eq(8).all())
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def head_linear_rows() -> range:
    """How many rows of a greedy step's full fp32 head go through `F.linear`: 1-6 where torch multiplies with
    MKL on an Intel CPU (`HEAD_LINEAR_ROWS_ON_INTEL`) and no screen runs, none elsewhere. A screen's fp32
    recheck keeps `head_product`'s form (its bits), and so do the rows a screen leaves to the full head."""
    if cpu_has_bf16_units() or fbgemm_fp16_runs():
        return range(0)
    return HEAD_LINEAR_ROWS_ON_INTEL if mkl_on_intel() else range(0)


def greedy_head_form() -> str:
    """How a greedy step's head picks its tokens here, named for what a decoded row depends on."""
    if cpu_has_bf16_units():
        return "bf16 screen, fp32 recheck as " + (head_product_form() if products_through_onednn() else "W xᵀ")
    rows = fp16_screen_rows()
    if rows:
        screened = f"fp16 screen for {rows.start}-{rows.stop - 1} rows"
        return f"{screened}; fp32 recheck and other rows as {head_product_form()}"
    return product_forms(head_linear_rows())


def bf16_screen(weight: torch.Tensor) -> Screen:
    """The head's bf16 product (`bf16_head`) and its bound: `screen_error` x the largest row norm."""
    import torch

    largest = float(weight.detach().norm(dim=1).max())
    return Screen("bf16", bf16_head(weight), torch.bfloat16, screen_error(weight.shape[1]) * largest)


def fp16_screen(weight: torch.Tensor) -> Screen | None:
    """The head's fp16 product by fbgemm and its bound (model/fp16_screen.py), or None where it cannot be used."""
    import torch

    made = fp16_head(weight)
    return None if made is None else Screen("fp16", made[0], torch.float32, made[1])


def bf16_head(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [rows, d] (bf16) -> bf16 logits [rows, vocab] of `weight` rounded to bf16: packed once by
    oneDNN where torch has its linear ops (torch's private ops, as its compiler uses them), else a plain
    product. Both multiply the bf16 values exactly and sum in fp32."""
    import torch

    copy = weight.detach().to(torch.bfloat16)
    mkldnn = torch.ops.mkldnn
    if (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and mkldnn._is_mkldnn_bf16_supported()
    ):
        packed = mkldnn._reorder_linear_weight(copy, 16)
        return lambda hidden: mkldnn._linear_pointwise(hidden, packed, None, "none", [], "")
    return lambda hidden: torch.mm(hidden, copy.t())


def screen_error(width: int) -> float:
    """A bound on |bf16 logit - fp32 logit| / (|h| |w|), for a row h and head row w of `width` values.

    Rounding h and w to bf16 (unit roundoff 2^-8) moves each product h_i w_i by at most (2^-7 + 2^-16) of
    its size; the fp32 sums of the bf16 and of the fp32 products each add at most width x 2^-24 of
    sum |h_i w_i| (2.1 x, for second-order terms); the bf16 output adds 2^-8 of |logit|, at most
    2^-8 (1 + 2^-7) |h| |w|; and sum |h_i w_i| <= |h| |w|.
    """
    return 2**-7 + 2**-16 + 2.1 * width * 2**-24 + 2**-8 * (1 + 2**-7)


def kept_by_screen(hidden: torch.Tensor, screen: Screen) -> torch.Tensor:
    """[rows, vocab], True for each token the screen cannot rule out as its row's fp32 argmax."""
    import torch

    approx = screen.product(hidden.to(screen.dtype))
    best = approx.max(dim=1).values.float()
    # a row's fp32 maximum is at least best - e |h|; a token reaches it only if its screened logit is within
    # e |h| of it too: below best - 2 e |h| it cannot
    floor = best - 2 * screen.per_norm * hidden.norm(dim=1)
    # so that the floor's own rounding (to bf16 for a bf16 product) cannot move it up
    floor = floor - floor.abs() * (2**-7 if approx.dtype == torch.bfloat16 else 2**-20) - 2**-100
    kept: torch.Tensor = approx >= floor.to(approx.dtype)[:, None]
    return kept


def screened_argmax(hidden: torch.Tensor, weight: torch.Tensor, screen: Screen) -> torch.Tensor | None:
    """Each row's argmax of hidden x weight^T (fp32), from the screen and the fp32 products of the tokens it
    cannot rule out; None when the hidden states are not finite or too many tokens are left."""
    import torch

    if not bool(torch.isfinite(hidden).all()):
        return None
    left = kept_by_screen(hidden, screen).any(dim=0).nonzero()[:, 0]
    if len(left) > MAX_SCREENED_TOKENS:
        return None
    block = weight.new_zeros((-(-len(left) // VOCAB_SLICE) * VOCAB_SLICE, weight.shape[1]))
    block[: len(left)] = weight.detach()[left]
    exact = gathered_rows_product(hidden, block, weight)  # the bits the full head gives for these tokens
    tokens: torch.Tensor = left[exact[:, : len(left)].argmax(dim=-1)]
    return tokens
