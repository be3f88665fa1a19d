"""The LM head in fp16 by fbgemm, for a greedy step's screen on a CPU without bf16 units, and the bound on how
far its logits can fall from the fp32 head's.

fbgemm's fp16 product (torch's `quantized::linear_dynamic_fp16`) keeps the head's weight rounded to fp16, half
the bytes of fp32, and multiplies it with the fp32 hidden states in fp32: held to AVX2 kernels, a greedy step
of 1-12 rows takes 0.4-0.5 of the fp32 head's time with it. Its only loss is the weight's rounding, at most
2^-11 of each value, so the bound is tight: one or two tokens per row are left for the fp32 recheck. The
weight is packed in slices, on as many threads as torch uses (fbgemm packs 16,384 rows at a time about twice
as fast per row as the whole head at once, on one thread, and multiplies the slices as fast). Where torch has
no such product, or a check of it on known inputs fails, there is no fp16 screen and the full head runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Rows of the head packed, and multiplied, as one fbgemm matrix.
FP16_SLICE_ROWS = 16384
# fp16's largest finite value (a weight beyond it would round to infinity), its unit roundoff for normal
# values, and half the spacing of its subnormals (the most a subnormal's rounding moves a value).
FP16_MAX = 65504.0
FP16_UNIT_ROUNDOFF = 2.0**-11
FP16_SUBNORMAL_HALF_STEP = 2.0**-25


def fp16_head(weight: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], float] | None:
    """(hidden [rows, d] fp32 -> logits [rows, vocab] fp32 of `weight` rounded to fp16, error per unit hidden
    norm), or None where fbgemm's fp16 product is missing or does not compute what the bound assumes."""
    import torch

    detached = weight.detach()
    if detached.dtype != torch.float32:
        return None
    lowest, highest = (float(v) for v in torch.aminmax(detached))  # NaN propagates: a NaN weight fails too
    if not (-FP16_MAX <= lowest and highest <= FP16_MAX):
        return None
    try:
        product = sliced_fp16_product(detached)
        agrees = products_as_assumed(product, detached)
    except (RuntimeError, AttributeError, NotImplementedError):  # no fbgemm in this torch, or a CPU it does not run on
        return None
    return (product, error_per_norm(detached)) if agrees else None


def sliced_fp16_product(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden -> hidden x fp16(weight)ᵀ, the weight packed by fbgemm in `FP16_SLICE_ROWS`-row slices."""
    import torch

    starts = range(0, weight.shape[0], FP16_SLICE_ROWS)
    pack = torch.ops.quantized.linear_prepack_fp16
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:  # fbgemm packs on one thread
        packs: list[Any] = list(pool.map(lambda start: pack(weight[start : start + FP16_SLICE_ROWS], None), starts))

    def product(hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.contiguous()
        return torch.cat([torch.ops.quantized.linear_dynamic_fp16(rows, packed) for packed in packs], dim=1)

    return product


def summation_error(width: int) -> float:
    """γ: a sum of `width` fp32 products in any order, fused or not, is within γ sum |x_i w_i| of the exact."""
    unit = width * 2.0**-24
    return unit / (1 - unit)


def error_per_norm(weight: torch.Tensor) -> float:
    """A bound on |fp16 screen logit - fp32 head logit| / |h| over every row w of the head.

    Rounding to fp16 moves each value by at most 2^-11 of it, or 2^-25 where it is subnormal, so
    |w - fp16(w)| <= 2^-11 |w| + 2^-25 sqrt(d), and |h . (w - fp16(w))| is at most |h| times that
    (Cauchy-Schwarz); each of the two products adds its fp32 summation error, γ |h| |w| and
    γ |h| |fp16(w)|. The margin covers the norms' own rounding, of |w| here and of |h| by the caller.
    """
    width = weight.shape[1]
    largest = float(weight.norm(dim=1).max())
    floor = FP16_SUBNORMAL_HALF_STEP * math.sqrt(width)
    moved = FP16_UNIT_ROUNDOFF * largest + floor
    gamma = summation_error(width)
    return (moved + gamma * (2 * largest + moved)) * (1 + 2.0**-10)


def products_as_assumed(product: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor) -> bool:
    """Does `product` multiply fp32 hidden states, unrounded, with the weight rounded to nearest fp16? Checked
    on the first and last slices, on one-hot rows of a value fp16 cannot hold (a rounded input or another
    rounding of the weight shows at once) and on seeded random rows against torch's fp32 product with the
    weight rounded by torch."""
    import torch

    width = weight.shape[1]
    columns = [0, width // 2, width - 1]
    value = 1 + 2.0**-13
    one_hot = torch.zeros(len(columns), width)
    one_hot[range(len(columns)), columns] = value
    random_rows = torch.randn(4, width, generator=torch.Generator().manual_seed(0))
    one_hot_out, random_out = product(one_hot), product(random_rows)
    if one_hot_out.shape != (len(columns), weight.shape[0]):
        return False
    gamma = summation_error(width)
    last = (weight.shape[0] - 1) // FP16_SLICE_ROWS * FP16_SLICE_ROWS
    for start in sorted({0, last}):
        rounded = weight[start : start + FP16_SLICE_ROWS].half().float()
        stop = start + len(rounded)
        expected = value * rounded[:, columns].t()
        if not bool(((one_hot_out[:, start:stop] - expected).abs() <= expected.abs() * 2.0**-22).all()):
            return False
        reference = random_rows @ rounded.t()
        allowed = 2 * gamma * random_rows.norm(dim=1)[:, None] * rounded.norm(dim=1)[None, :] * (1 + 2.0**-10)
        if not bool(((random_out[:, start:stop] - reference).abs() <= allowed).all()):
            return False
    return True
