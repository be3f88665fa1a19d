"""The whole-model restore check after every case is exact: a change to any weight's bits is seen, in any
dtype, however large the tensor's sum (a float sum in the tensor's dtype rounded such changes away)."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.model.weights import weights_checksum  # noqa: E402

from ..tiny import tiny_model, word_tokenizer  # noqa: E402


def embedding_of(dtype: Any, values: Any) -> tuple[Any, Any]:
    """A tiny llama in `dtype` whose input embedding holds `values` (a number, or a function of its shape)."""
    model = tiny_model("llama", len(word_tokenizer())).to(dtype)
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight.copy_(values(weight.shape) if callable(values) else torch.full_like(weight, values))
    return model, weight


def checksums_around(model: Any, change: Any) -> tuple[str, str]:
    """The checksum before and after `change()` alters the weights in place."""
    before = weights_checksum(model)
    with torch.no_grad():
        change()
    return before, weights_checksum(model)


def test_a_1e_5_change_to_one_fp32_weight_is_seen() -> None:
    model, weight = embedding_of(torch.float32, 1.0)  # a sum in the thousands, as a real embedding's can be
    before, after = checksums_around(model, lambda: weight[3, 5].add_(1e-5))
    assert weight[3, 5].item() != 1.0  # the weight did change
    assert before != after


def test_a_16_change_to_one_bf16_embedding_weight_is_seen() -> None:
    model, weight = embedding_of(torch.bfloat16, 8.0)  # bf16 spacing at the sum is 128: +16 vanished in it
    before, after = checksums_around(model, lambda: weight[3, 5].add_(16))
    assert weight[3, 5].item() == 24.0
    assert before != after
    _, back = checksums_around(model, lambda: weight[3, 5].sub_(16))
    assert back == before  # the same bits again: the same checksum


def test_two_weights_swapped_between_rows_are_seen() -> None:
    """Whole numbers: every float sum is exact, so only the positions tell the two models apart."""
    model, weight = embedding_of(torch.float32, lambda shape: torch.arange(shape.numel()).view(shape).float())

    def swap() -> None:
        first, last = weight[0, 0].clone(), weight[-1, -1].clone()
        weight[0, 0], weight[-1, -1] = last, first

    before, after = checksums_around(model, swap)
    assert before != after
