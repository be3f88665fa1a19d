"""A greedy step's tokens from a bf16 screen of the LM head and an fp32 product over the few tokens that can
win: the tokens of the full fp32 head, ties included, in 0.2-0.7 of its time on a CPU with bf16 units.

A greedy step reads only each row's argmax over the vocabulary. The bf16 product of the head differs from
the fp32 one by at most `screen_error` on every logit, so a token whose bf16 logit falls below the row's best
by more than twice that cannot be the fp32 argmax. The tokens left (tens to hundreds of Gemma's 262,144) are
multiplied in fp32 in whole `VOCAB_SLICE`-row blocks, in the form the full head takes (the same bits:
every output is its own dot product), and the argmax is taken over them in vocabulary order. The bf16 head
is kept packed in oneDNN's layout: a few rows' product then reads it at memory speed (3 rows: 12 ms, where
a bf16 product that packs the weight at each call takes 21-31 ms and the fp32 head 24-30 ms;
`bench/greedy_head.py` times the whole step per number of rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .introspect import weight_of
from .lmhead import (
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
# `head_product` (W xᵀ) with MKL on an Intel CPU, where no bf16 screen runs: 1-6 rows took 32-71 ms against
# 92-97 ms held to AVX2 kernels, and 30-72 ms against 87-93 ms with AVX-512 kernels and no bf16 units, where
# 8 and 12 rows took 112 and 147 ms against 90 and 116 ms (2 threads, a 2-core Xeon with AMX held below it;
# bench/step_products.py).
HEAD_LINEAR_ROWS_ON_INTEL = range(1, 7)


def greedy_tokens(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """`logits_from_hidden(model, hidden).argmax(-1)` for hidden states [rows, d]: through the screen where
    it is faster (`screens`), else the full head, in the form that is faster for the rows (`head_linear_rows`)."""
    import torch

    if screens(model, hidden):
        weight = weight_of(model.get_output_embeddings())
        tokens = screened_argmax(in_memory_order(hidden), weight, *screen_of(weight))
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


def screens(model: PreTrainedModel, hidden: torch.Tensor) -> bool:
    """Is the screen faster with the same tokens? A plain fp32 head (`plain_fp32_head`) on a CPU whose bf16
    products are fast (`cpu_has_bf16_units`; held to AVX2 kernels a bf16 head took 1.5-3.4x its fp32 time
    over 3-40 rows)."""
    return plain_fp32_head(model, hidden) and cpu_has_bf16_units()


def head_linear_rows() -> range:
    """How many rows of a greedy step's full fp32 head go through `F.linear`: 1-6 where torch multiplies with
    MKL on an Intel CPU (`HEAD_LINEAR_ROWS_ON_INTEL`), none elsewhere. The bf16 screen's fp32 recheck keeps
    `head_product`'s form (its bits), so this applies only where no screen runs."""
    return HEAD_LINEAR_ROWS_ON_INTEL if mkl_on_intel() else range(0)


def greedy_head_form() -> str:
    """How a greedy step's head picks its tokens here, named for what a decoded row depends on."""
    if cpu_has_bf16_units():
        return "bf16 screen, fp32 recheck as " + (head_product_form() if products_through_onednn() else "W xᵀ")
    return product_forms(head_linear_rows())


def screen_of(weight: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """The head's bf16 product (`bf16_head`) and its largest row norm, made once per weight and version."""
    largest = head_derived(weight, "largest row norm", lambda w: float(w.detach().norm(dim=1).max()))
    return head_derived(weight, "bf16 head", bf16_head), largest


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


def kept_by_screen(
    hidden: torch.Tensor, bf16_product: Callable[[torch.Tensor], torch.Tensor], largest_norm: float
) -> torch.Tensor:
    """[rows, vocab], True for each token the bf16 product cannot rule out as its row's fp32 argmax."""
    import torch

    approx = bf16_product(hidden.to(torch.bfloat16))
    best = approx.max(dim=1).values.float()
    # a row's fp32 maximum is at least best - e |h| |w_best|; a token reaches it only if its bf16 logit is
    # within e |h| |w| of it too: below best - 2 e |h| max|w| it cannot
    floor = best - 2 * screen_error(hidden.shape[1]) * hidden.norm(dim=1) * largest_norm
    floor = floor - floor.abs() * 2**-7 - 2**-100  # so that rounding it to bf16 cannot move it up
    kept: torch.Tensor = approx >= floor.to(torch.bfloat16)[:, None]
    return kept


def screened_argmax(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bf16_product: Callable[[torch.Tensor], torch.Tensor],
    largest_norm: float,
) -> torch.Tensor | None:
    """Each row's argmax of hidden x weight^T (fp32), from the bf16 product and the fp32 products of the
    tokens it cannot rule out; None when the hidden states are not finite or too many tokens are left."""
    import torch

    if not bool(torch.isfinite(hidden).all()):
        return None
    left = kept_by_screen(hidden, bf16_product, largest_norm).any(dim=0).nonzero()[:, 0]
    if len(left) > MAX_SCREENED_TOKENS:
        return None
    block = weight.new_zeros((-(-len(left) // VOCAB_SLICE) * VOCAB_SLICE, weight.shape[1]))
    block[: len(left)] = weight.detach()[left]
    exact = gathered_rows_product(hidden, block, weight)  # the bits the full head gives for these tokens
    tokens: torch.Tensor = left[exact[:, : len(left)].argmax(dim=-1)]
    return tokens
