"""The screened greedy head: the fp32 head's tokens, ties included, from a bf16 or fp16 screen and a few fp32
rows."""

from __future__ import annotations

from typing import Any

import pytest

from tests.tiny import tiny_model

WIDTH = 64


def head_weight() -> Any:
    """A head of three slices and a part, every row of norm about 1 (as Gemma's are), with ties planted:
    row 4,100 equals row 7 (the argmax is the first of the two), and row 5,000 is row 9 moved by about
    1e-7 of its values (their logits differ in the last bits)."""
    import torch

    from pytest_factedit.model.lmhead import VOCAB_SLICE

    torch.manual_seed(0)
    weight = torch.nn.functional.normalize(torch.randn(3 * VOCAB_SLICE + 333, WIDTH), dim=1)
    weight[4100] = weight[7]
    weight[5000] = weight[9] * (1 + 1e-7 * torch.randn(WIDTH))
    return weight


def hidden_rows(weight: Any, rows: int) -> Any:
    """Random hidden states at the head's scale, every third one pointing at a planted tie."""
    import torch

    hidden = torch.randn(rows, WIDTH) * 4
    hidden[::3] = weight[[7, 9]].repeat(rows, 1)[: len(hidden[::3])] * 30 + 0.01 * torch.randn(WIDTH)
    return hidden


def screens(weight: Any) -> dict[str, Any]:
    """The screens a greedy step can use: bf16 (the plugin's product, packed by oneDNN where this CPU runs that,
    and a plain product) and fp16 by fbgemm, where this torch has it."""
    from dataclasses import replace

    import torch

    from pytest_factedit.model.head_argmax import bf16_screen, fp16_screen

    copy = weight.to(torch.bfloat16)
    plugin = bf16_screen(weight)
    made = {
        "plugin's bf16": plugin,
        "plain bf16": replace(plugin, product=lambda hidden: torch.mm(hidden, copy.t())),
    }
    fp16 = fp16_screen(weight)
    if fp16 is not None:
        made["fp16"] = fp16
    return made


def needs_fbgemm() -> None:
    from pytest_factedit.model.head_argmax import fbgemm_fp16_runs

    if not fbgemm_fp16_runs():
        pytest.skip("this torch has no fbgemm fp16 product")


@pytest.mark.parametrize("rows", [1, 3, 11, 12, 40])
def test_the_screened_argmax_is_the_full_heads_ties_and_near_ties_included(rows: int) -> None:
    import torch

    from pytest_factedit.model.head_argmax import screened_argmax
    from pytest_factedit.model.lmhead import head_product

    weight = head_weight()
    for trial in range(5):
        torch.manual_seed(trial)
        hidden = hidden_rows(weight, rows)
        full = head_product(hidden, weight).argmax(-1)
        assert {7, 9} & set(full.tolist())  # the planted ties are reached (7 before 4,100)
        for name, screen in screens(weight).items():
            tokens = screened_argmax(hidden, weight, screen)
            assert tokens is not None, name
            assert torch.equal(tokens, full), name


def test_the_bf16_logits_stay_within_the_bound_the_screen_assumes() -> None:
    import torch

    from pytest_factedit.model.head_argmax import screen_error

    torch.manual_seed(1)
    weight = torch.randn(3000, WIDTH) * torch.rand(3000, 1) * 3  # rows of many norms
    hidden = torch.randn(24, WIDTH) * torch.logspace(-2, 2, 24)[:, None]
    exact = hidden @ weight.t()
    bound = screen_error(WIDTH) * hidden.norm(dim=1)[:, None] * weight.norm(dim=1)[None, :]
    for name, screen in screens(weight).items():
        if screen.name != "bf16":
            continue
        error = (screen.product(hidden.to(torch.bfloat16)).float() - exact).abs()
        assert bool((error <= bound).all()), name
        assert float((error / bound).max()) > 0.01  # the bound is not vacuous: errors reach a part of it


@pytest.mark.parametrize("slice_rows", [16384, 1000])
def test_the_fp16_logits_stay_within_the_bound_the_screen_assumes(monkeypatch, slice_rows: int) -> None:
    """Against the fp32 head's logits (in float64), for hidden states of many norms, with the head packed whole
    and in slices of 1,000 rows and a part."""
    import torch

    from pytest_factedit.model import fp16_screen
    from pytest_factedit.model.head_argmax import fp16_screen as make_screen

    needs_fbgemm()
    monkeypatch.setattr(fp16_screen, "FP16_SLICE_ROWS", slice_rows)
    torch.manual_seed(1)
    weight = torch.randn(5500, WIDTH) * torch.rand(5500, 1) * 3
    weight[:40] *= 1e-6  # subnormal in fp16
    hidden = torch.randn(24, WIDTH) * torch.logspace(-2, 2, 24)[:, None]
    screen = make_screen(weight)
    assert screen is not None
    exact = hidden.double() @ weight.double().t()
    error = (screen.product(hidden).double() - exact).abs()
    bound = screen.per_norm * hidden.double().norm(dim=1)[:, None]
    assert bool((error <= bound).all())
    assert float((error / bound).max()) > 0.05  # the bound is not vacuous
    assert torch.equal(screen.product(hidden), fp16_screen.sliced_fp16_product(weight)(hidden))


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 9, 10, 11, 12, 30])
def test_a_slice_of_gathered_head_rows_gives_the_full_heads_bits_for_them(monkeypatch, rows: int, onednn: bool) -> None:
    """The premise of the recheck: the few rows the screen leaves, zero-padded to whole slices, multiply
    to the very bits the full head's product gives them, in each form the head takes (one product below
    SLICED_FROM_ROWS, slices above; oneDNN from ONEDNN_FROM_ROWS where products go there)."""
    import torch

    from pytest_factedit.model import lmhead
    from pytest_factedit.model.onednn import onednn_available

    if onednn and not onednn_available():
        pytest.skip("this torch has no oneDNN linear op")
    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: onednn)
    weight = head_weight()
    hidden = torch.randn(rows, WIDTH)
    picked = torch.tensor([3, 7, 500, 2047, 2048, 4100, 6000, weight.shape[0] - 1])
    block = weight.new_zeros((lmhead.VOCAB_SLICE, WIDTH))
    block[: len(picked)] = weight[picked]
    assert lmhead.through_onednn(hidden, weight) == (onednn and rows >= lmhead.ONEDNN_FROM_ROWS)
    part = lmhead.gathered_rows_product(hidden, block, weight)
    assert torch.equal(part[:, : len(picked)], lmhead.head_product(hidden, weight)[:, picked])


@pytest.mark.parametrize(
    ("units", "fbgemm", "expected"), [(True, True, "bf16"), (False, True, "fp16"), (False, False, None)]
)
def test_the_screen_is_used_only_where_it_is_faster_and_gives_the_same_tokens(
    monkeypatch, units: bool, fbgemm: bool, expected: str | None
) -> None:
    import torch

    from pytest_factedit.model import head_argmax
    from pytest_factedit.model.lmhead import logits_from_hidden

    if fbgemm and not units:
        needs_fbgemm()
    model = tiny_model("llama", 2 * head_argmax.VOCAB_SLICE + 100)
    small = tiny_model("llama", 300)
    hidden = torch.randn(6, 32)
    used = []
    real = head_argmax.screened_argmax
    monkeypatch.setattr(head_argmax, "screened_argmax", lambda *a: used.append(a[2].name) or real(*a))
    monkeypatch.setattr(head_argmax, "cpu_has_bf16_units", lambda: units)
    monkeypatch.setattr(head_argmax, "fbgemm_fp16_runs", lambda: fbgemm)
    screen = head_argmax.screen_for(model, hidden)
    assert (screen and screen.name) == expected
    assert torch.equal(head_argmax.greedy_tokens(model, hidden), logits_from_hidden(model, hidden).argmax(-1))
    assert used == ([expected] if expected else [])
    assert head_argmax.screen_for(small, hidden) is None  # a vocabulary of less than two slices
    assert head_argmax.screen_for(model, hidden.double()) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head_argmax.screen_for(model, hidden) is None
    many = torch.randn(head_argmax.FP16_SCREEN_ROWS.stop, 32)
    assert (head_argmax.screen_for(model, many) is not None) == units  # past the fp16 screen's rows


def test_hidden_states_that_are_not_finite_take_the_full_head() -> None:
    import torch

    from pytest_factedit.model.head_argmax import screened_argmax

    weight = head_weight()
    hidden = torch.randn(4, WIDTH)
    hidden[2, 5] = float("nan")
    for screen in screens(weight).values():
        assert screened_argmax(hidden, weight, screen) is None


def test_a_product_that_is_not_what_the_fp16_bound_assumes_gives_no_screen() -> None:
    """A product that rounds its input to fp16, or the weight another way (toward zero), fails the check; a
    weight that fp16 cannot hold, or that is not finite, gets no screen."""
    import torch

    from pytest_factedit.model import fp16_screen

    needs_fbgemm()
    weight = head_weight()
    nearest = weight.half()
    bits = nearest.view(torch.int16)  # one less in the bit pattern: one fp16 step nearer zero, either sign
    rounded_up = nearest.float().abs() > weight.abs()
    toward_zero = torch.where(rounded_up, bits - 1, bits).view(torch.float16).float()
    nearest = nearest.float()
    faithful = fp16_screen.sliced_fp16_product(weight)
    assert fp16_screen.products_as_assumed(faithful, weight)
    assert fp16_screen.products_as_assumed(lambda h: h @ nearest.t(), weight)
    assert not fp16_screen.products_as_assumed(lambda h: h.half().float() @ nearest.t(), weight)
    assert not fp16_screen.products_as_assumed(lambda h: h @ toward_zero.t(), weight)
    for bad in (float("nan"), float("inf"), 7e4):
        broken = weight.clone()
        broken[5, 3] = bad
        assert fp16_screen.fp16_head(broken) is None
    assert fp16_screen.fp16_head(weight.double()) is None


def test_greedy_decoding_generates_the_same_tokens_with_the_screen(monkeypatch) -> None:
    import torch

    from pytest_factedit.model import head_argmax
    from pytest_factedit.model.decoding import DecodeRow, greedy, prefill

    fbgemm_here = head_argmax.fbgemm_fp16_runs()
    model = tiny_model("llama", 2 * head_argmax.VOCAB_SLICE + 100)
    torch.manual_seed(3)
    prompts = [tuple(torch.randint(3, 4000, (n,)).tolist()) for n in (3, 5, 8, 4, 6, 7, 2, 5, 9, 3, 4, 6, 5)]
    rows = [DecodeRow(p, max_tokens=6 + i % 3, stop_at_newline=False) for i, p in enumerate(prompts)]

    def generated(units: bool, fbgemm: bool) -> list[Any]:
        monkeypatch.setattr(head_argmax, "cpu_has_bf16_units", lambda: units)
        monkeypatch.setattr(head_argmax, "fbgemm_fp16_runs", lambda: fbgemm)
        return greedy(model, prefill(model, prompts, 0), rows, frozenset({2}), lambda token: False)

    without = generated(False, False)
    assert generated(True, False) == without
    if fbgemm_here:
        assert generated(False, True) == without


@pytest.mark.parametrize(
    ("rows", "units", "fbgemm", "linear_rows", "through_linear"),
    [
        (3, False, False, range(1, 7), True),
        (1, False, False, range(1, 7), True),
        (12, False, False, range(1, 7), False),
        (3, False, False, range(0), False),
        (3, True, False, range(1, 7), False),  # the bf16 screen runs: its recheck keeps the full head's form
        (3, False, True, range(1, 7), False),  # so does the fp16 screen's
    ],
)
def test_without_a_screen_few_rows_take_the_full_head_through_f_linear_where_that_is_faster(
    monkeypatch, rows: int, units: bool, fbgemm: bool, linear_rows: range, through_linear: bool
) -> None:
    import torch

    from pytest_factedit.model import head_argmax

    if fbgemm:
        needs_fbgemm()
    monkeypatch.setattr(head_argmax, "fbgemm_fp16_runs", lambda: fbgemm)
    model = tiny_model("llama", 2 * head_argmax.VOCAB_SLICE + 100)
    hidden = torch.randn(rows, 32)
    full_heads = []
    real = head_argmax.logits_from_hidden
    monkeypatch.setattr(head_argmax, "logits_from_hidden", lambda m, h: full_heads.append(1) or real(m, h))
    monkeypatch.setattr(head_argmax, "cpu_has_bf16_units", lambda: units)
    monkeypatch.setattr(head_argmax, "head_linear_rows", lambda: linear_rows)
    tokens = head_argmax.greedy_tokens(model, hidden)
    weight = model.get_output_embeddings().weight
    assert (full_heads == [] and not units and not fbgemm) == through_linear
    if through_linear:
        assert torch.equal(tokens, torch.nn.functional.linear(hidden, weight).argmax(-1))
    assert torch.equal(tokens, real(model, hidden).argmax(-1))  # random states: no near tie to tell the forms apart


@pytest.mark.parametrize("fbgemm", [False, True])
@pytest.mark.parametrize(
    ("vendor", "units"),
    [("GenuineIntel", False), ("AuthenticAMD", False), ("GenuineIntel", True), ("AuthenticAMD", True)],
)
def test_the_greedy_heads_form_is_named_for_the_probe_store(
    monkeypatch, vendor: str, units: bool, fbgemm: bool
) -> None:
    import torch

    from pytest_factedit.model import head_argmax, lmhead
    from pytest_factedit.model.onednn import onednn_available

    monkeypatch.setattr(lmhead, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    monkeypatch.setattr(head_argmax, "cpu_has_bf16_units", lambda: units)
    monkeypatch.setattr(head_argmax, "fbgemm_fp16_runs", lambda: fbgemm)
    intel = vendor == "GenuineIntel"
    fp16 = fbgemm and not units
    linear = head_argmax.HEAD_LINEAR_ROWS_ON_INTEL if intel and not units and not fbgemm else range(0)
    assert head_argmax.head_linear_rows() == linear
    expected = "x Wᵀ for 1-6 rows, else W xᵀ" if intel else "W xᵀ"
    recheck = "oneDNN from 10 rows, W xᵀ below" if not intel and onednn_available() else "W xᵀ"
    if units:
        assert head_argmax.greedy_head_form() == f"bf16 screen, fp32 recheck as {recheck}"
    elif fp16:
        rows = "1-15" if intel else "1-32"
        full = lmhead.head_product_form()
        assert head_argmax.fp16_screen_rows() == (range(1, 16) if intel else range(1, 33))
        assert head_argmax.greedy_head_form() == f"fp16 screen for {rows} rows; fp32 recheck and other rows as {full}"
    else:
        assert head_argmax.fp16_screen_rows() == range(0)
        assert head_argmax.greedy_head_form() == expected


def test_a_timed_step_finds_its_screen_made(monkeypatch) -> None:
    """The latency figure's timed step must not time the making of the screen: it is made before the clock
    starts, once per head weight."""
    import torch

    from pytest_factedit.model import decoding, head_argmax

    model = tiny_model("llama", 2 * head_argmax.VOCAB_SLICE + 100)
    monkeypatch.setattr(head_argmax, "cpu_has_bf16_units", lambda: True)
    made = []
    real = head_argmax.bf16_screen
    monkeypatch.setattr(head_argmax, "bf16_screen", lambda weight: made.append(1) or real(weight))
    clock_started = []
    real_clock = decoding.time.thread_time
    monkeypatch.setattr(decoding.time, "thread_time", lambda: clock_started.append(len(made)) or real_clock())
    model.get_output_embeddings().weight.data.mul_(1.0)  # a new version: nothing made for it yet
    torch.manual_seed(4)
    prompts = [tuple(torch.randint(3, 4000, (n,)).tolist()) for n in (3, 5, 4)]
    step = decoding.timed_step(model, decoding.prefill(model, prompts, 0))
    assert step.head > 0
    assert made == [1]
    assert clock_started and clock_started[0] == 1  # made before the first reading of the clock
