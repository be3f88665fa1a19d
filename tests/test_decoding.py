"""The batched greedy decoder: the tokens generate() gives, the log-probabilities a plain forward pass gives,
where rows stop (budget, end of sequence, line break, a decided answer), the base-probe cache, and the
matrix products it runs on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_factedit.metrics.answers import said, settled
from pytest_factedit.model.decoding import DecodeRow, StepTime, decode, decode_keeping, timed_step
from pytest_factedit.model.onednn import onednn_available
from pytest_factedit.model.targets import TargetModules
from pytest_factedit.model.text import encode_prompt
from tests.tiny import tiny_model, word_tokenizer

PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "Big Ben is a clock tower in",
    "The river flows slowly through the park until",
    "Here is a fact",
)


def _generated(model, ids: tuple[int, ...], budget: int) -> tuple[int, ...]:
    """What generate() gives for one unpadded prompt, up to and with its first end-of-sequence token."""
    import torch

    prompt = torch.tensor([ids])
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=budget,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=2,
    )[0, len(ids) :].tolist()
    return tuple(out[: out.index(2) + 1] if 2 in out else out)


@pytest.mark.parametrize("kind", ["llama", "phi3", "gpt2"])
def test_greedy_tokens_are_the_ones_generate_gives_each_prompt_alone(kind: str) -> None:
    tok = word_tokenizer()
    model = tiny_model(kind, len(tok))
    rows = [DecodeRow(encode_prompt(tok, p, False), n, False) for p, n in zip(PROMPTS, (1, 6, 3, 9))]
    got = decode(model, tok, rows)
    assert [d.tokens for d in got] == [_generated(model, r.ids, r.max_tokens) for r in rows]
    assert [len(d.tokens) for d in got] == [1, 6, 3, 9]  # rows leave the batch at their own budget


def test_candidate_scores_are_the_log_probabilities_of_a_plain_forward_pass() -> None:
    import torch

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    answers = [tuple(tok(" " + a, add_special_tokens=False).input_ids) for a in ("Paris", "Big Ben clock", "Rome")]
    rows = [DecodeRow(encode_prompt(tok, p, False), 2, candidates=tuple(answers)) for p in PROMPTS]
    for row, found in zip(rows, decode(model, tok, rows)):
        for answer in answers:
            ids = torch.tensor([row.ids + answer])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            expected = sum(float(logp[len(row.ids) - 1 + i, t]) for i, t in enumerate(answer))
            first = logp[len(row.ids) - 1]
            assert found.scores[answer].logprob == pytest.approx(expected, abs=1e-4)
            assert found.scores[answer].tokens == len(answer)
            assert found.scores[answer].first_rank == int((first > first[answer[0]]).sum())


def test_rows_stop_at_end_of_sequence_line_break_budget_or_a_decided_answer() -> None:
    stops = frozenset({2})

    def line(token: int) -> bool:
        return token == 7

    assert DecodeRow((1,), 5).stop_point((4, 2, 9, 9), stops, line) == 2
    assert DecodeRow((1,), 5).stop_point((4, 7, 9), stops, line) == 2
    assert DecodeRow((1,), 5, stop_at_newline=False).stop_point((4, 7, 9), stops, line) is None
    assert DecodeRow((1,), 2, stop_at_newline=False).stop_point((4, 7, 9), stops, line) == 2
    assert DecodeRow((1,), 9, settled=lambda t: sum(t) >= 10).stop_point((4, 5, 6, 1), stops, line) == 3
    assert DecodeRow((1,), 0).stop_point((4,), stops, line) == 0


def test_a_settled_row_stops_early_and_decoding_keeps_the_prompts_state_for_timing() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    ids = encode_prompt(tok, PROMPTS[0], False)
    full = decode(model, tok, [DecodeRow(ids, 6, False)])[0].tokens
    rows = [DecodeRow(ids, 6, False, settled=lambda t: len(t) >= 2), DecodeRow(ids, 6, False)]
    found, state = decode_keeping(model, tok, rows, keep=[1])
    assert found[0].tokens == full[:2] and found[1].tokens == full
    assert state is not None and state.lengths == (len(ids),) and timed_step(model, state).decoder > 0


def test_a_timed_step_counts_the_cpu_time_of_one_thread_and_gives_the_threads_back(monkeypatch) -> None:
    import torch

    from pytest_factedit.model import decoding

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    ids = encode_prompt(tok, PROMPTS[0], False)
    state = decode_keeping(model, tok, [DecodeRow(ids, 2, False)], keep=[0])[1]
    seen = []
    ticks = iter([10.0, 10.5, 10.75, 20.0, 20.25])
    monkeypatch.setattr(decoding.time, "thread_time", lambda: next(ticks))
    model.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    threads = torch.get_num_threads()
    assert timed_step(model, state) == StepTime(0.5, 0.25)  # thread CPU seconds, not wall seconds
    assert timed_step(model, state, head=False) == StepTime(0.25, 0.0)
    assert seen == [1, 1] and torch.get_num_threads() == threads
    with pytest.raises(RuntimeError), decoding.one_thread():
        raise RuntimeError("a failing step")
    assert torch.get_num_threads() == threads


def test_a_timed_step_takes_its_token_as_a_greedy_step_does(monkeypatch) -> None:
    """The timed step is what generation costs: where greedy steps screen the LM head, so does the timing."""
    from pytest_factedit.model import decoding

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    ids = encode_prompt(tok, PROMPTS[0], False)
    taken = []
    real = decoding.greedy_tokens
    monkeypatch.setattr(decoding, "greedy_tokens", lambda m, hidden: taken.append(hidden.shape) or real(m, hidden))
    state = decode_keeping(model, tok, [DecodeRow(ids, 2, False)], keep=[0])[1]
    in_decoding = len(taken)
    assert state is not None and in_decoding > 0
    timed_step(model, state)
    assert taken[in_decoding:] == [(1, model.config.hidden_size)]
    timed_step(model, state, head=False)  # the decoder pass alone: no token taken
    assert taken[in_decoding:] == [(1, model.config.hidden_size)]


class _ScriptedEdit:
    """An edit whose `disabled` and `merged` blocks say which model a timed step ran on."""

    def __init__(self, mergeable: bool, targets: TargetModules) -> None:
        self.mergeable, self.targets, self.now = mergeable, targets, "edited"

    @contextmanager
    def _as(self, name: str) -> Iterator[None]:
        self.now = name
        try:
            yield
        finally:
            self.now = "edited"

    def disabled(self) -> Any:
        return self._as("base")

    @contextmanager
    def merged(self) -> Iterator[bool]:
        with self._as("merged"):
            yield self.mergeable


MLP_ONLY = TargetModules(("model.layers.0.mlp.down_proj",), (), "test")
THE_HEAD = TargetModules(("model.layers.0.mlp.down_proj", "lm_head"), (), "test")
EVERY_WEIGHT = TargetModules((), (), "test", all_weights=True)


@pytest.mark.parametrize("mergeable", [False, True])
@pytest.mark.parametrize("targets", [MLP_ONLY, THE_HEAD, EVERY_WEIGHT], ids=["mlp", "head", "every-weight"])
def test_latency_times_the_head_once_where_the_edit_leaves_it(
    monkeypatch, mergeable: bool, targets: TargetModules
) -> None:
    """An edit that leaves the LM head alone: the head is timed once, on the last edited step, and that time
    goes into the base, edited and merged figures alike, each decoder pass keeping its own minimum. An edit
    that may change the head (named among its targets, or every weight): every step is timed whole, as each
    side runs it. Per token of 2 rows."""
    import torch

    from pytest_factedit.model.decoding import Prefilled
    from pytest_factedit.run import probing

    tok = word_tokenizer()
    edit = _ScriptedEdit(mergeable, targets)
    decoder_seconds = {
        "base": iter([0.5, 0.3, 0.4]),
        "edited": iter([0.7, 0.9, 0.6]),
        "merged": iter([0.45, 0.35, 0.4]),
    }
    head_seconds = {"base": iter([0.15, 0.25, 0.05]), "edited": iter([0.2, 0.1, 0.3]), "merged": iter([0.2] * 3)}
    asked = []

    def scripted(_model: Any, _state: Any, head: bool = True) -> StepTime:
        asked.append((edit.now, head))
        taken = next(head_seconds[edit.now])  # the step's head time, whether it was asked for or not
        return StepTime(next(decoder_seconds[edit.now]), taken if head else 0.0)

    monkeypatch.setattr(probing, "timed_step", scripted)
    state = Prefilled(None, torch.ones((2, 3)), (3, 3), torch.zeros(2, dtype=torch.long), torch.zeros((2, 5)))
    lm: Any = SimpleNamespace(model=tiny_model("llama", len(tok)), tokenizer=tok)
    found = probing.latency_timings(lm, cast(Any, None), cast(Any, edit), probing.ProbePlan(3, 0), state)
    apart = targets is MLP_ONLY
    if apart:  # the head's one timing is the third edited step's (0.3), not the least of the three (0.1)
        expected = {"base_seconds_per_token": (0.3 + 0.3) / 2, "edited_seconds_per_token": (0.6 + 0.3) / 2}
        merged = (0.35 + 0.3) / 2
    else:
        expected = {"base_seconds_per_token": (0.4 + 0.05) / 2, "edited_seconds_per_token": (0.6 + 0.3) / 2}
        merged = (0.35 + 0.2) / 2
    if mergeable:
        expected["merged_seconds_per_token"] = merged
    assert found == pytest.approx(expected)
    merged_steps = [("merged", not apart)] * 3 if mergeable else []
    edited_heads = [True] * 3 if not apart else [False, False, True]
    assert asked == [step for h in edited_heads for step in (("base", not apart), ("edited", h))] + merged_steps
    assert probing.latency_timings(lm, cast(Any, None), cast(Any, edit), probing.ProbePlan(0, 0), state) == {}


ALIASES = st.sampled_from(["Oslo", "Os", "New York", "New York City", "York", "ab"])
# texts made of alias pieces, so that aliases are often named, half named, or run into word characters
PIECES = ["Oslo", "Os", "lo", "w", "New York", "New ", "York", "Ci", "ty", " City", "ab", " ", ",", ".", "\n"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=5).map("".join)


@settings(max_examples=400, deadline=None)
@given(prefix=TEXT, suffix=TEXT, first=st.lists(ALIASES, min_size=1, max_size=2), second=st.lists(ALIASES, max_size=2))
def test_once_settled_no_continuation_changes_which_answer_is_named_first(
    prefix: str, suffix: str, first: list[str], second: list[str]
) -> None:
    candidates = {"new": first, "old": second}
    if settled(prefix, first + second):
        assert said(prefix + suffix, candidates) == said(prefix, candidates)


def test_settled_examples() -> None:
    assert settled(" Oslo.", ["Oslo", "Stockholm"])
    assert not settled(" Oslo", ["Oslo", "Stockholm"])  # "Oslow" would not name Oslo
    assert not settled(" New York", ["New York", "New York City"])  # the longer alias may still come
    assert not settled(" New York C", ["New York", "New York City"])  # "New York City" may be coming
    assert settled(" New York is", ["New York", "New York City"])
    assert not settled("Os", ["Os"])
    assert not settled(" the city of", ["Oslo"])
    assert settled(" the\nOslo", ["Oslo"])  # the judged part ended at the line break


def _lm(model, tok, weights: str = "w1") -> SimpleNamespace:
    return SimpleNamespace(model=model, tokenizer=tok, weights_hash=weights, dtype="float32", device="cpu")


def test_the_base_cache_serves_shorter_requests_from_a_longer_run_and_keeps_rows_on_disk(tmp_path, monkeypatch) -> None:
    from pytest_factedit.model import probe_cache

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    ids = encode_prompt(tok, PROMPTS[0], False)
    calls = []
    real = probe_cache.decode
    monkeypatch.setattr(probe_cache, "decode", lambda m, t, rows: calls.append(len(rows)) or real(m, t, rows))
    cache = probe_cache.BaseAnswerCache(tmp_path)
    long = cache.decoded(_lm(model, tok), [DecodeRow(ids, 6, False)])[0]
    short = cache.decoded(_lm(model, tok), [DecodeRow(ids, 3, False)])[0]
    assert short.tokens == long.tokens[:3] and calls == [1]
    again = probe_cache.BaseAnswerCache(tmp_path).decoded(_lm(model, tok), [DecodeRow(ids, 6, False)])[0]
    assert again == long and calls == [1]  # a new run reads the stored row
    probe_cache.BaseAnswerCache(tmp_path).decoded(_lm(model, tok, "w2"), [DecodeRow(ids, 6, False)])
    assert calls == [1, 1] and len(list(tmp_path.glob("*.json"))) == 2  # other weights: their own file


def test_a_damaged_probe_store_is_reported_and_written_anew(tmp_path, capsys) -> None:
    from pytest_factedit.model.probe_cache import BaseAnswerCache

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    row = DecodeRow(encode_prompt(tok, PROMPTS[1], False), 4, False)
    BaseAnswerCache(tmp_path).decoded(_lm(model, tok), [row])
    (stored,) = tmp_path.glob("*.json")
    data = json.loads(stored.read_text())
    data["rows"][0][1] = ["not", "ids"]
    stored.write_text(json.dumps(data))
    found = BaseAnswerCache(tmp_path).decoded(_lm(model, tok), [row])[0]
    assert "not using the probe cache" in capsys.readouterr().err
    assert found.tokens == decode(model, tok, [row])[0].tokens
    assert json.loads(stored.read_text())["rows"][0][1] == list(found.tokens)


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_fast_products_agree_with_linear_layers_and_are_undone(rows: int) -> None:
    import torch

    from pytest_factedit.model.lmhead import fast_linears, head_product

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(2, rows, 64)
    expected = layer(x)
    assert torch.allclose(
        head_product(x.reshape(-1, 64), layer.weight) + layer.bias, expected.reshape(-1, 48), atol=1e-5
    )
    with pytest.raises(RuntimeError), fast_linears(layer):
        assert torch.allclose(layer(x), expected, atol=1e-5)
        raise RuntimeError("the block fails")
    assert "forward" not in layer.__dict__


@pytest.mark.parametrize(
    ("rows", "left_to_linear", "through_linear"),
    [
        (3, range(2, 9), True),
        (8, range(2, 9), True),
        (1, range(1, 9), True),
        (1, range(2, 9), False),
        (12, range(2, 9), False),
        (3, range(0), False),
    ],
)
def test_fast_linears_leave_the_rows_f_linear_is_faster_for_to_the_layer_itself(
    monkeypatch, rows: int, left_to_linear: range, through_linear: bool
) -> None:
    import torch

    from pytest_factedit.model import lmhead

    products = []
    real = lmhead.linear_product
    monkeypatch.setattr(lmhead, "linear_product", lambda x, w, b: products.append(x.shape) or real(x, w, b))
    monkeypatch.setattr(lmhead, "linear_rows", lambda: left_to_linear)
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(rows, 1, 64)  # a greedy step's input: one position per row
    with lmhead.fast_linears(layer):
        out = layer(x)
    assert (products == []) == through_linear
    weight, bias = layer.weight, layer.bias
    expected = torch.nn.functional.linear(x, weight, bias) if through_linear else real(x, weight, bias)
    assert torch.equal(out, expected)


def test_the_cpu_vendor_is_read_from_cpuinfo_else_from_the_platform(tmp_path, monkeypatch) -> None:
    import platform

    from pytest_factedit.model.lmhead import cpu_vendor

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme\n")
    assert cpu_vendor(str(info)) == "AuthenticAMD"
    monkeypatch.setattr(platform, "processor", lambda: "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel")
    assert cpu_vendor(str(tmp_path / "absent")) == "GenuineIntel"
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert cpu_vendor(str(tmp_path / "also-absent")) == ""


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD", ""])
@pytest.mark.parametrize("mkl", [True, False])
def test_only_torch_on_mkl_on_an_intel_cpu_leaves_few_rows_to_f_linear(monkeypatch, vendor: str, mkl: bool) -> None:
    import torch

    from pytest_factedit.model import lmhead

    monkeypatch.setattr(lmhead, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    intel = vendor == "GenuineIntel" and mkl
    onednn = vendor == "AuthenticAMD" and mkl and onednn_available()
    assert lmhead.linear_rows() == (lmhead.LINEAR_ROWS_ON_INTEL if intel else range(0))
    assert lmhead.products_through_onednn() == onednn
    expected = "x Wᵀ for 1-8 rows, else W xᵀ" if intel else "oneDNN from 10 rows, W xᵀ below" if onednn else "W xᵀ"
    assert lmhead.few_row_products() == expected


def test_a_stored_probe_decoded_with_other_products_or_heads_is_decoded_again(tmp_path, monkeypatch) -> None:
    from pytest_factedit.model import lmhead, probe_cache

    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: False)  # the MKL forms, on any CPU
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    row = DecodeRow(encode_prompt(tok, PROMPTS[0], False), 4, False)
    calls = []
    real = probe_cache.decode
    monkeypatch.setattr(probe_cache, "decode", lambda m, t, rows: calls.append(len(rows)) or real(m, t, rows))
    for left_to_linear in (range(0), range(2, 9), range(0)):
        monkeypatch.setattr(lmhead, "linear_rows", lambda rows=left_to_linear: rows)
        probe_cache.BaseAnswerCache(tmp_path).decoded(_lm(model, tok), [row])
    assert calls == [1, 1] and len(list(tmp_path.glob("*.json"))) == 2  # the first store serves the third run
    monkeypatch.setattr(probe_cache, "greedy_head_form", lambda: "another head")
    probe_cache.BaseAnswerCache(tmp_path).decoded(_lm(model, tok), [row])
    assert calls == [1, 1, 1] and len(list(tmp_path.glob("*.json"))) == 3
    monkeypatch.setattr(probe_cache, "head_product_form", lambda: "another head product")
    probe_cache.BaseAnswerCache(tmp_path).decoded(_lm(model, tok), [row])
    assert calls == [1, 1, 1, 1] and len(list(tmp_path.glob("*.json"))) == 4


@pytest.mark.parametrize("rows", [16, 40])
@pytest.mark.parametrize("layout", ["rows", "last-position", "transposed"])
def test_the_head_product_over_slices_gives_the_single_products_bits_and_gradients(
    monkeypatch, rows: int, layout: str
) -> None:
    """A head of more than two slices with enough rows is computed slice by slice (where no rows go to
    `F.linear`): the same bits as one `torch.mm`, forward and backward, whatever the layout of the hidden
    states (`layout`: rows one after another; the last position of a [rows, 3, d] batch; a transposed
    [d, rows] tensor's rows)."""
    import torch

    from pytest_factedit.model import lmhead

    monkeypatch.setattr(lmhead, "head_linear_from", lambda: None)
    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: False)  # the MKL forms, on any CPU
    torch.manual_seed(0)
    d = 64
    weight = torch.randn(2 * lmhead.VOCAB_SLICE + 333, d)
    source = {
        "rows": lambda: torch.randn(rows, d),
        "last-position": lambda: torch.randn(rows, 3, d)[:, -1],
        "transposed": lambda: torch.randn(d, rows).t(),
    }[layout]()
    assert lmhead.in_slices(source, weight)

    def product(sliced: bool) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = source.clone(memory_format=torch.preserve_format).requires_grad_()
        with torch.no_grad():
            probe = lmhead.head_product(hidden, weight) if sliced else torch.mm(weight, hidden.t()).t()
        logits = lmhead.head_product(hidden, weight) if sliced else torch.mm(weight, hidden.contiguous().t()).t()
        assert torch.equal(logits.detach(), probe)
        torch.log_softmax(logits, -1)[:, 5].sum().backward()
        assert hidden.grad is not None
        return logits.detach(), hidden.grad

    (sliced, sliced_grad), (single, single_grad) = product(True), product(False)
    assert torch.equal(sliced, single)
    assert torch.equal(sliced_grad, single_grad)


def test_the_head_product_takes_one_product_where_slices_would_not_help(monkeypatch) -> None:
    """Few rows, a small weight, a weight that trains, or autocast: one `torch.mm`, as before."""
    import torch

    from pytest_factedit.model import lmhead

    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: False)  # the MKL forms, on any CPU

    weight = torch.randn(3 * lmhead.VOCAB_SLICE, 8)
    many, few = torch.randn(lmhead.SLICED_FROM_ROWS, 8), torch.randn(lmhead.SLICED_FROM_ROWS - 1, 8)
    assert lmhead.in_slices(many, weight)
    assert lmhead.head_product(many, weight).is_contiguous()  # laid out in rows by the slices
    assert not lmhead.in_slices(few, weight)
    assert not lmhead.head_product(few, weight).is_contiguous()  # one product's transposed result
    assert not lmhead.in_slices(many, weight[: lmhead.VOCAB_SLICE])
    assert not lmhead.in_slices(many, weight.clone().requires_grad_())
    assert not lmhead.in_slices(many.double(), weight.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lmhead.in_slices(many, weight)


@pytest.mark.parametrize(("rows", "through_linear"), [(15, False), (16, True), (40, True)])
@pytest.mark.parametrize("layout", ["rows", "transposed"])
def test_many_rows_of_a_frozen_head_go_through_f_linear_from_the_rows_named(
    monkeypatch, rows: int, through_linear: bool, layout: str
) -> None:
    """From `head_linear_from()` rows on, the head's product and its gradient are `F.linear`'s, bit for
    bit, whatever the layout of the hidden states; below it the sliced product's."""
    import torch

    from pytest_factedit.model import lmhead

    monkeypatch.setattr(lmhead, "head_linear_from", lambda: 16)
    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: False)  # the MKL forms, on any CPU
    torch.manual_seed(0)
    d = 64
    weight = torch.randn(2 * lmhead.VOCAB_SLICE + 333, d)
    source = torch.randn(rows, d) if layout == "rows" else torch.randn(d, rows).t()
    assert lmhead.in_slices(source, weight)
    sliced = lmhead.sliced_rows(weight, source.contiguous())
    expected = torch.nn.functional.linear(source.contiguous(), weight) if through_linear else sliced

    def product(compute) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = source.clone(memory_format=torch.preserve_format).requires_grad_()
        logits = compute(hidden)
        torch.log_softmax(logits, -1)[:, 5].sum().backward()
        assert hidden.grad is not None
        return logits.detach(), hidden.grad

    real, sliced_calls = lmhead.sliced_product, []
    monkeypatch.setattr(lmhead, "sliced_product", lambda w, h: sliced_calls.append(h.shape) or real(w, h))
    logits, grad = product(lambda hidden: lmhead.head_product(hidden, weight))
    assert (sliced_calls == []) == through_linear  # the bits alone may agree (AVX-512 kernels: from 16 rows)
    reference = (lambda h: torch.nn.functional.linear(h.contiguous(), weight)) if through_linear else None
    _, expected_grad = product(reference or (lambda h: real(weight, h.contiguous())))
    assert torch.equal(logits, expected)
    assert torch.equal(grad, expected_grad)
    assert torch.equal(lmhead.head_product(source, weight), expected)  # without a gradient too


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
@pytest.mark.parametrize("mkl", [True, False])
def test_only_torch_on_mkl_on_an_intel_cpu_gives_many_head_rows_to_f_linear(
    monkeypatch, vendor: str, mkl: bool
) -> None:
    import torch

    from pytest_factedit.model import lmhead

    monkeypatch.setattr(lmhead, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    intel = vendor == "GenuineIntel" and mkl
    onednn = vendor == "AuthenticAMD" and mkl and onednn_available()
    assert lmhead.head_linear_from() == (lmhead.HEAD_LINEAR_FROM_ROWS_ON_INTEL if intel else None)
    sliced = "W xᵀ in slices from 12 rows"
    expected = (
        f"x Wᵀ from 16 rows, {sliced} below" if intel else "oneDNN from 10 rows, W xᵀ below" if onednn else sliced
    )
    assert lmhead.head_product_form() == expected


def test_a_part_of_the_head_is_multiplied_in_the_form_the_whole_head_takes(monkeypatch) -> None:
    """`head_part_product` (localization's slices of the head): `F.linear` where `as_linear` holds (fp32, a
    frozen weight, outside autocast, enough rows), else one product."""
    import torch

    from pytest_factedit.model import lmhead

    monkeypatch.setattr(lmhead, "head_linear_from", lambda: 16)
    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: False)  # the MKL forms, on any CPU
    torch.manual_seed(0)
    part, many, few = torch.randn(300, 32), torch.randn(16, 32), torch.randn(15, 32)
    linear = torch.nn.functional.linear
    real, products = lmhead.one_product, []
    monkeypatch.setattr(lmhead, "one_product", lambda h, w: products.append(h.shape[0]) or real(h, w))
    assert torch.equal(lmhead.head_part_product(many, part), linear(many, part)) and products == []
    assert torch.equal(lmhead.head_part_product(few, part), real(few, part)) and products == [15]
    lmhead.head_part_product(many, part.clone().requires_grad_())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lmhead.head_part_product(many, part)
    lmhead.head_part_product(many.double(), part.double())
    assert products == [15, 16, 16, 16]
