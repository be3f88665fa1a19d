"""fp32 products by oneDNN, where torch's MKL is the slower library (an AMD CPU): the products, their
gradient, the bits the screen's recheck relies on, which products go there, and a loaded model's layers."""

from __future__ import annotations

import copy
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.model import lmhead
from pytest_factedit.model.onednn import onednn_available, onednn_linear, onednn_product

from .tiny import tiny_model, word_tokenizer

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear op")


def close_to_exact(product: Any, left: Any, right: Any) -> bool:
    """Is `product` left @ right within fp32 rounding: 1e-5 of the sum of each output's terms' magnitudes
    (a wrong product misses by about that sum)?"""
    exact, scale = left.double() @ right.double(), left.double().abs() @ right.double().abs()
    return bool(((product.double() - exact).abs() <= 1e-5 * scale).all())


@pytest.mark.parametrize("rows", [1, 2, 16])
@pytest.mark.parametrize("layout", ["rows", "last-position", "transposed"])
def test_the_product_and_its_gradient_are_the_exact_ones_within_fp32_rounding(rows: int, layout: str) -> None:
    """Whatever the layout of the rows: one after another, the last position of a [rows, 3, d] batch, or a
    transposed [d, rows] tensor's rows."""
    torch.manual_seed(0)
    weight = torch.randn(300, 64)
    source = {
        "rows": lambda: torch.randn(rows, 64),
        "last-position": lambda: torch.randn(rows, 3, 64)[:, -1],
        "transposed": lambda: torch.randn(64, rows).t(),
    }[layout]()
    hidden = source.clone(memory_format=torch.preserve_format).requires_grad_()
    out = onednn_product(hidden, weight)
    upstream = torch.randn(rows, 300)
    (out * upstream).sum().backward()
    assert close_to_exact(out.detach(), source, weight.t())
    assert hidden.grad is not None and close_to_exact(hidden.grad, upstream, weight)
    with torch.no_grad():
        assert torch.equal(onednn_product(source, weight), out.detach())  # no gradient: the same product


def test_its_bits_do_not_depend_on_the_rows_the_weight_rows_or_the_threads() -> None:
    """What the screen's recheck and a batch of any size rely on: a gathered block of weight rows, a subset of
    two or more rows, and one thread give the very bits of the whole product."""
    torch.manual_seed(0)
    weight = torch.randn(5000, 64)
    hidden = torch.randn(12, 64)
    whole = onednn_linear(hidden, weight)
    picked = torch.tensor([3, 2047, 2048, 4999])
    assert torch.equal(onednn_linear(hidden, weight[picked])[:, :], whole[:, picked])
    assert torch.equal(onednn_linear(hidden[:2], weight), whole[:2])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(onednn_linear(hidden, weight), whole)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("onednn", [True, False])
def test_frozen_fp32_products_of_10_rows_or_more_go_to_onednn_where_products_go_there(
    monkeypatch, onednn: bool
) -> None:
    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: onednn)
    start = lmhead.ONEDNN_FROM_ROWS
    small, head = torch.randn(64, 8), torch.randn(2 * lmhead.VOCAB_SLICE, 8)
    for weight in (small, head):
        assert lmhead.through_onednn(torch.randn(start, 8), weight) == onednn
        assert not lmhead.through_onednn(torch.randn(start - 1, 8), weight)
        assert not lmhead.through_onednn(torch.randn(start, 8), weight.clone().requires_grad_())  # a trained weight
        assert not lmhead.through_onednn(torch.randn(start, 8).double(), weight.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not lmhead.through_onednn(torch.randn(start, 8), weight)


def test_the_heads_products_and_their_gradient_are_onednns_where_products_go_there(monkeypatch) -> None:
    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: True)
    torch.manual_seed(0)
    weight = torch.randn(2 * lmhead.VOCAB_SLICE + 333, 64)
    source = torch.randn(lmhead.ONEDNN_FROM_ROWS, 64)
    hidden = source.clone().requires_grad_()
    logits = lmhead.head_product(hidden, weight)
    torch.log_softmax(logits, -1)[:, 5].sum().backward()
    upstream = logits.detach().clone().requires_grad_()  # the gradient that reaches the product
    torch.log_softmax(upstream, -1)[:, 5].sum().backward()
    assert torch.equal(logits.detach(), onednn_linear(source, weight))
    assert hidden.grad is not None and upstream.grad is not None
    assert torch.equal(hidden.grad, onednn_linear(upstream.grad, weight.t()))
    part = weight[: lmhead.VOCAB_SLICE]
    assert torch.equal(lmhead.head_part_product(source, part), onednn_linear(source, part))


def test_route_linears_routes_every_plain_linear_layer_only_where_products_go_to_onednn(monkeypatch) -> None:
    tok = word_tokenizer()
    ids = tok(["the capital of france is"], return_tensors="pt").input_ids
    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: False)
    model = tiny_model("llama", len(tok))
    before = model(ids).logits
    assert lmhead.route_linears(model) == 0
    assert not any("forward" in m.__dict__ for m in model.modules())
    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: True)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert lmhead.route_linears(model) == len(linears) > 0
    assert lmhead.route_linears(model) == 0  # routed once
    calls: list[int] = []
    real = lmhead.linear_product
    monkeypatch.setattr(lmhead, "linear_product", lambda x, w, b: calls.append(1) or real(x, w, b))
    after = model(ids).logits
    assert len(calls) == len(linears) and torch.allclose(after, before, rtol=1e-5, atol=1e-5)
    twin = copy.deepcopy(model)  # a copy computes with its own weights
    with torch.no_grad():
        twin.lm_head.weight.mul_(2)
    assert torch.allclose(twin(ids).logits, 2 * after, rtol=1e-5, atol=1e-5)
    assert torch.equal(model(ids).logits, after)
    layer = linears[0]
    layer.weight.requires_grad_(True)  # a weight that trains: the layer's own forward, F.linear's bits
    x = torch.randn(3, layer.in_features)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
