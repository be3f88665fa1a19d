"""bench/probe_floor.py: the decoder passes of a probe sorted by kind, and the floor each must reach at a
machine's bandwidth and peak."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_factedit.model.decoding import DecodeRow, decode_keeping, timed_step
from pytest_factedit.model.lmhead import decoder
from pytest_factedit.model.text import encode_prompt
from tests.tiny import tiny_model, word_tokenizer

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def probe_floor(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import probe_floor

    return probe_floor


@pytest.mark.parametrize("threads", [None, 1], ids=["default-threads", "one-thread"])
def test_a_probes_passes_are_counted_by_kind_and_the_hooks_removed(probe_floor, threads: int | None) -> None:
    """Also where torch runs one thread anyway: a greedy step is not taken for a timed one."""
    import torch

    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        _count_the_passes(probe_floor)
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def _count_the_passes(probe_floor) -> None:
    from pytest_factedit.model import decoding

    functions = (decoding._teacher_forced, decoding.one_thread)
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    ids = encode_prompt(tok, "The Eiffel Tower is located in the city of", False)
    shorter = encode_prompt(tok, "Big Ben is a clock tower in", False)
    answer = tuple(tok(" Big Ben clock", add_special_tokens=False).input_ids)
    rows = [DecodeRow(ids, 4, False, candidates=(answer,)), DecodeRow(shorter, 2, False)]
    body = decoder(model)
    hooks = (len(body._forward_pre_hooks), len(body._forward_hooks))
    passes = probe_floor.Passes()
    with probe_floor.timed_passes(model, passes):
        _, state = decode_keeping(model, tok, rows, keep=[0])
        assert state is not None
        timed_step(model, state)
    assert (len(body._forward_pre_hooks), len(body._forward_hooks)) == hooks
    assert (decoding._teacher_forced, decoding.one_thread) == functions  # put back
    assert passes.count == {"prefill": 1, "candidates": 1, "greedy steps": 3, "timed steps (one thread)": 1}
    assert passes.tokens["prefill"] == len(ids) + len(shorter)  # the padding is not counted
    assert passes.tokens["candidates"] == len(answer) - 1  # the first token is read from the prefill
    assert passes.tokens["greedy steps"] == 2 + 1 + 1  # both rows, then the longer alone
    assert passes.rows["prefill"] == 2 and all(s >= 0 for s in passes.seconds.values())


def test_each_pass_reaches_its_floor_by_reading_its_weights_or_by_its_products(probe_floor) -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    read, params, head = probe_floor.weight_bytes(model)
    assert read == 4 * params and head == model.get_output_embeddings().weight.numel()
    machine = probe_floor.Machine(bandwidth=1e9, bandwidth_one_thread=5e8, peak=1e12)
    passes = probe_floor.Passes()
    passes.add("prefill", 1.0, tokens=10**6, rows=8)
    passes.add("greedy steps", 1.0, tokens=3, rows=3)
    passes.add("greedy steps", 1.0, tokens=3, rows=3)
    passes.add("timed steps (one thread)", 1.0, tokens=3, rows=3)
    plain = probe_floor.floors(model, passes, machine, screened=False)
    assert plain["prefill"] == pytest.approx(2 * params * 10**6 / 1e12)  # its products, not its reads
    assert plain["greedy steps"] == pytest.approx(2 * read / 1e9)
    assert plain["timed steps (one thread)"] == pytest.approx(read / 5e8)
    heads = 2 * 4 * head / 1e9 + 4 * head / 5e8 + max(4 * head / 1e9, 2 * head * 8 / 1e12)
    assert plain["heads, argmax and the rest"] == pytest.approx(heads)
    screened = probe_floor.floors(model, passes, machine, screened=True)
    assert screened["heads, argmax and the rest"] < plain["heads, argmax and the rest"]  # a bf16 head is half the bytes
