"""The shared subject gate (edit/gate_registry.py) against its reference, one gate and hook set per edit
stacked in order (tests/stacked_gates.py): the same positions on every pass, continued or not, the same
outputs bit for bit, the same training; and a cost per pass that does not grow with the number of edits."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_factedit.edit.base import EditRequest  # noqa: E402
from pytest_factedit.edit.gate import SubjectGate  # noqa: E402
from pytest_factedit.edit.gate_registry import GateRegistry  # noqa: E402
from pytest_factedit.edit.subject_gains import SubjectGainEdit, _hooked, subject_gate_for  # noqa: E402
from pytest_factedit.model.kv import cache_keyword, cache_prefix, cache_rows, returned_cache, select_rows  # noqa: E402
from pytest_factedit.model.targets import all_layer_targets  # noqa: E402

from .stacked_gates import REACHES, gated_edit, registered, stacked, synthetic_edits, twin  # noqa: E402
from .tiny import piece_tokenizer, tiny_model  # noqa: E402


def hooked(model: Any) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# -- the matcher: per edit, the positions its own gate marks, over passes that continue a cache


FLAG_CHOICE = random.Random(7)
FLAGS = bytes(FLAG_CHOICE.choice((0, 1, 2, 3, 3, 6, 6, 8, 10, 11)) for _ in range(24))  # ids >= 24: unknown
PATTERNS = st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple)
EDIT = st.tuples(st.lists(PATTERNS, min_size=1, max_size=3), st.sampled_from(REACHES), st.booleans())
TEXT_ID = st.one_of(st.integers(0, 9), st.integers(0, 31))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("fresh"), st.integers(1, 3), st.lists(TEXT_ID, min_size=1, max_size=12)),
        st.tuples(st.just("continue"), st.integers(0, 0), st.lists(TEXT_ID, min_size=1, max_size=5)),
        st.tuples(st.sampled_from(["select", "copy", "crop", "add", "remove"]), st.integers(0, 7), st.just([])),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module")
def small_model() -> Any:
    return tiny_model("llama", 32, layers=1)


def marks_of(edit: SubjectGainEdit, rows: int, tokens: int) -> list[list[bool]]:
    assert edit.registry is not None and edit.registry.current is not None
    serial = edit.registry.serial_of[id(edit)]
    flat = set(edit.registry.current.marks.get(serial, ()))
    return [[r * tokens + t in flat for t in range(tokens)] for r in range(rows)]


class Stream:
    """Passes over one cache, run under the shared gate and the stacked gates at once (masks only)."""

    def __init__(self, model: Any, specs: list[tuple[list[tuple[int, ...]], str, bool]], flags: bytes = FLAGS) -> None:
        self.model, self.specs, self.cache, self.flags = model, specs, None, flags
        self.batch: list[list[int]] = []
        self.live: list[tuple[SubjectGainEdit, SubjectGate, ExitStack]] = []
        self.added = 0

    def add(self) -> None:
        patterns, reach, flagged = self.specs[self.added % len(self.specs)]
        self.added += 1
        gate = SubjectGate(patterns, reach, self.flags if flagged else b"")
        edit = gated_edit(self.model, gate, [], [], 0, 0)
        _hooked(edit)
        own = SubjectGate(patterns, reach, self.flags if flagged else b"")
        own_hooks = ExitStack()
        own_hooks.enter_context(own.reading(self.model))
        self.live.append((edit, own, own_hooks))

    def remove(self, index: int) -> None:
        if self.live:
            edit, _own, own_hooks = self.live.pop(index % len(self.live))
            edit.remove()
            own_hooks.close()

    def run(self, ids: list[list[int]]) -> None:
        tensor = torch.tensor(ids)
        with torch.no_grad():
            out = self.model(input_ids=tensor, use_cache=True, **{cache_keyword(self.model): self.cache})
        self.cache = returned_cache(out)
        for edit, own, _ in self.live:
            assert own.mask is not None
            assert marks_of(edit, *tensor.shape) == own.mask[..., 0].tolist(), (edit.gate.patterns, ids)

    def apply(self, op: str, number: int, text: list[int]) -> None:
        rows = 0 if self.cache is None else len(self.batch)
        if op == "fresh":
            self.cache, self.batch = None, [text] * number
            self.run([[(t + r) % 32 if k == r else t for k, t in enumerate(text)] for r in range(number)])
        elif op == "continue" and rows:
            self.run([[(t + r) % 32 for t in text] for r in range(rows)])
        elif op in ("select", "copy") and rows:
            chosen = torch.tensor([(number + k) % rows for k in range(max(1, (number % rows) + 1))])
            if op == "select":
                select_rows(self.cache, chosen)
            else:
                self.cache = cache_rows(self.cache, chosen)
            self.batch = [self.batch[int(k)] for k in chosen]
        elif op == "crop" and rows and self.cache.get_seq_length() > 1:
            self.cache = cache_prefix(self.cache, self.cache.get_seq_length() - 1)
        elif op == "add":
            self.add()
        elif op == "remove":
            self.remove(number)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(EDIT, min_size=1, max_size=12), ops=OPS, steps=st.lists(TEXT_ID, max_size=6))
def test_the_shared_gate_marks_what_each_edits_own_gate_marks(small_model, specs, ops, steps) -> None:
    """Shared and prefix patterns, both reaches, with and without word flags, differing look-backs; texts
    split into a first pass, continued passes, one-token steps and row subsets, edits added and removed
    between passes: every edit's positions equal its own gate's (`SubjectGate.continued` with its state)."""
    stream = Stream(small_model, specs)
    try:
        for _ in specs:
            stream.add()
        stream.apply("fresh", 2, [3, 1, 4, 1, 5, 9, 2, 6])
        for op, number, text in ops:
            stream.apply(op, number, text)
        for token in steps:
            stream.apply("continue", 0, [token])
    finally:
        while stream.live:
            stream.remove(0)
    assert not hooked(small_model)


JOINED_FLAGS = bytes([0] * 20 + [3, 6, 2, 0])  # 20: joins and ends a word; 21: a capitalized name; 22: a word
SUBJECT, LONGER = ([(22,)], "subject", True), ([(5, 6, 7, 8)], "subject", True)  # look-backs of 9 and 12 tokens


def subject_marked(model: Any, steps: list[Any]) -> bool:
    """After `steps` ("add" an edit: SUBJECT first, then LONGER; or a pass's ids, the first one fresh), is
    the last token (the subject) marked for SUBJECT's edit? (Compared with its own gate on every pass.)"""
    stream = Stream(model, [SUBJECT, LONGER], JOINED_FLAGS)
    try:
        for step in steps:
            if step == "add":
                stream.add()
            else:
                stream.apply("continue" if stream.cache is not None else "fresh", 1, step)
        subject = next(edit for edit, own, _ in stream.live if own.patterns == ((22,),))
        return marks_of(subject, 1, 1) == [[True]]
    finally:
        while stream.live:
            stream.remove(0)


def test_a_continued_pass_reads_only_what_each_edits_own_gate_kept(small_model) -> None:
    """A name is judged whole from the word before it, which a chain of joined pieces carries far back
    ("Name" + pieces + subject: the end of a longer name for whoever still sees "Name"). The shared gate
    keeps the longest look-back of its edits but judges each edit on what its own gate kept: the last 9
    tokens, or fewer when the edit went on in the middle of the text, or all of them when it was on
    before another edit went on."""
    assert subject_marked(small_model, ["add", "add", [21] + [20] * 10, [22]])
    assert subject_marked(small_model, ["add", [21, 20, 20, 20], "add", [20, 20, 20], [22]]) is False
    assert subject_marked(small_model, ["add", "add", [5, 20, 20, 20], [22]])  # no name word: whole
    # SUBJECT alone first (LONGER added mid-text), and the other way round
    assert subject_marked(small_model, ["add", [21, 20, 20], "add", [20, 20], [22]]) is False
    stream = Stream(small_model, [LONGER, SUBJECT], JOINED_FLAGS)
    try:
        stream.add()
        stream.apply("fresh", 1, [21, 20, 20, 20])
        stream.add()  # SUBJECT goes on mid-text: its own gate sees the text from the next pass only
        stream.apply("continue", 0, [20, 20, 20])
        stream.apply("continue", 0, [22])
        assert marks_of(stream.live[1][0], 1, 1) == [[True]]
    finally:
        while stream.live:
            stream.remove(0)


# -- outputs: logits, decoding, candidate scores, bit for bit


SUBJECTS = (
    ("Japan", ()),
    ("Japan", ()),
    ("Japan", ("Nippon",)),
    ("York", ()),
    ("New York", ()),
    ("U.S.", ()),
    ("the United States", ()),
    ("Seoul", ()),
    ("Tokyo", ()),
    ("Korea", ()),
)
TEXTS = (
    "The capital of Japan is Tokyo . Nippon is another name of Japan .",
    "I love New York . York is a city in England . In York , we met",
    "The United States and the U.S. and America ; Seoul , Korea , Korean",
    "Speaking of Japan , here is another question . The capital of France is",
    "the Japanese language",
)


def thirty_edits(model: Any, tok: Any) -> list[SubjectGainEdit]:
    """About thirty edits over the subjects above, on random subsets of every layer's modules, one or two
    stages, both reaches; the last one without word flags."""
    targets = all_layer_targets(model)
    rng = random.Random(1)
    edits = []
    for index in range(30):
        subject, aliases = SUBJECTS[index % len(SUBJECTS)]
        request = EditRequest(subject, (f"The capital of {subject} is",), ("Tokyo",), ("Seoul",), aliases=aliases)
        gate = subject_gate_for(tok, [request], REACHES[index % len(REACHES)])
        if index == 29:
            gate = SubjectGate(gate.patterns, gate.reach, b"")
        modules = rng.sample(list(targets.modules), rng.randint(1, len(targets.modules)))
        edits.append(gated_edit(model, gate, modules, targets.feedforward, 1 + index % 2, index))
    return edits


def outputs(model: Any, tok: Any) -> dict[str, Any]:
    """Logits of a left-padded batch, greedy tokens (rows leave early) and candidate scores."""
    from pytest_factedit.model.decoding import DecodeRow, decode, left_padded
    from pytest_factedit.model.text import encode_prompt

    prompts = [encode_prompt(tok, text, False) for text in TEXTS]
    ids, mask, positions = left_padded(prompts, tok.pad_token_id, "cpu")
    rows = [
        DecodeRow(p, n, False, candidates=(tuple(tok(" Seoul Tokyo", add_special_tokens=False).input_ids),))
        for p, n in zip(prompts, (6, 2, 5, 1, 4))
    ]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        decoded = decode(model, tok, rows)
    return {
        "logits": logits,
        "tokens": [d.tokens for d in decoded],
        "scores": [{c: (s.logprob, s.first_rank) for c, s in d.scores.items()} for d in decoded],
    }


def assert_same(mine: dict[str, Any], reference: dict[str, Any]) -> None:
    assert torch.equal(mine["logits"], reference["logits"])
    assert mine["tokens"] == reference["tokens"] and mine["scores"] == reference["scores"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_outputs_equal_the_stacked_hooks_bit_for_bit(dtype: str) -> None:
    tok = piece_tokenizer()
    model = tiny_model("llama", len(tok)).to(getattr(torch, dtype))
    base = outputs(model, tok)
    edits = thirty_edits(model, tok)
    with registered(edits):
        mine = outputs(model, tok)
        with edits[7].disabled(), edits[12].disabled():
            mine_off = outputs(model, tok)
    with registered(edits, training=(0, 13, 14, 29)):  # unsealed edits between sealed ones: still in order
        mine_mixed = outputs(model, tok)
    with stacked([twin(e) for e in edits]):
        reference = outputs(model, tok)
    assert_same(mine, reference)
    assert_same(mine_mixed, reference)
    references = [twin(e) for e in edits]
    for index in (7, 12):
        references[index].gate.enabled = False
    with stacked(references):
        assert_same(mine_off, outputs(model, tok))
    assert not torch.equal(mine["logits"], base["logits"])  # the edits act: the comparison can fail
    assert not hooked(model)


def test_a_layer_computing_the_first_rows_of_a_pass_is_scaled_as_those_rows_of_the_whole() -> None:
    """Localization lets a decoder layer compute only a pass's first rows (localize/hooks.py); the gate then
    scales those rows exactly as it scales them in the whole pass, sealed edits and one still training."""
    from pytest_factedit.model.decoding import left_padded
    from pytest_factedit.model.skip import hooks_allow_first_rows
    from pytest_factedit.model.text import encode_prompt

    tok = piece_tokenizer()
    model = tiny_model("llama", len(tok))
    ids, mask, positions = left_padded([encode_prompt(tok, t, False) for t in TEXTS], tok.pad_token_id, "cpu")
    edits = thirty_edits(model, tok)
    with registered(edits, training=(0, 13)), torch.no_grad():
        assert hooks_allow_first_rows(model)
        model(input_ids=ids, attention_mask=mask, position_ids=positions)  # the pass the gate now holds
        registry = edits[0].registry
        assert registry is not None
        acted = []
        for key in registry.modules:
            linear = model.get_submodule(key[0])
            width = linear.in_features if key[1] else linear.out_features  # scaled at its input, or output
            x = torch.randn(ids.shape[0], ids.shape[1], width, generator=torch.Generator().manual_seed(0))
            whole = registry._scaled(key, x)
            for rows in range(ids.shape[0] + 1):
                assert torch.equal(registry._scaled(key, x[:rows]), whole[:rows]), (key, rows)
            assert torch.equal(registry._scaled(key, x[:, :-1]), x[:, :-1])  # another pass's shape: as it is
            acted.append(not torch.equal(whole, x))
        assert any(acted)  # the gates act: the comparison can fail
    assert not hooked(model)


def test_removing_an_edit_in_the_middle_leaves_the_others_as_stacked() -> None:
    tok = piece_tokenizer()
    model = tiny_model("llama", len(tok))
    edits = thirty_edits(model, tok)
    with registered(edits):
        edits[2].remove()
        edits[15].remove()
        mine = outputs(model, tok)
    kept = [twin(e) for k, e in enumerate(edits) if k not in (2, 15)]
    with stacked(kept):
        assert_same(mine, outputs(model, tok))


def test_one_hook_per_module_and_on_the_decoder_whatever_the_number_of_edits() -> None:
    tok = piece_tokenizer()
    model = tiny_model("llama", len(tok))
    targets = all_layer_targets(model)
    edits = thirty_edits(model, tok)
    base = outputs(model, tok)["logits"]
    with registered(edits):
        counts = {name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()}
        assert {n for n, c in counts.items() if c} <= set(targets.modules) | {"model"}
        assert max(counts.values()) == 2 and counts["model"] == 2  # the decoder: one pre-hook, one hook
        assert all(counts[n] == 1 for n in targets.modules)
        assert len(GateRegistry.of(model).groups) == 2  # one trie per tokenizer's flags (and the flagless edit)
        assert len({id(e.gate.word_flags) for e in edits[:29]}) == 1  # one copy of the flags
        with GateRegistry.of(model).disabled():  # every edit off at once: the base model's outputs
            assert torch.equal(outputs(model, tok)["logits"], base)
    assert not hooked(model)


def test_training_under_sealed_edits_equals_training_under_stacked_ones(monkeypatch) -> None:
    """A new edit trained while ten earlier ones stay active: the same gains and losses as with the
    earlier ones stacked (and the new one on its own hooks)."""
    from pytest_factedit.edit import get_editor, resolve_settings, subject_gains
    from pytest_factedit.edit.retention import FACT_TEXTS, NEUTRAL_TEXTS, SUBJECT_TEMPLATES

    from .stacked_gates import stack_sealed

    tok = piece_tokenizer(NEUTRAL_TEXTS + FACT_TEXTS + SUBJECT_TEMPLATES)
    model = tiny_model("llama", len(tok))
    earlier = thirty_edits(model, tok)[:10]
    settings = resolve_settings(
        {"gain_positions": "subject-sentence", "subject_rows": 4, "unlearn_max_steps": 2, "learn_max_steps": 3}
    )
    request = EditRequest("Japan", ("The capital of Japan is",), ("Tokyo",), ("Seoul",), held_out=("Seoul is",))
    targets = all_layer_targets(model)

    def trained() -> tuple[dict[str, dict[str, Any]], list[Any]]:
        with get_editor("ia3-two-stage").apply(model, tok, request, targets, settings) as edit:
            return {s: {m: g.detach().clone() for m, g in gains.items()} for s, gains in edit.gains.items()}, [
                (s.name, s.losses) for s in edit.stages
            ]

    with registered(earlier):
        mine, mine_losses = trained()
    monkeypatch.setattr(subject_gains, "_hooked", stack_sealed)
    with stacked([twin(e) for e in earlier]):
        reference, reference_losses = trained()
    assert mine.keys() == reference.keys()
    for stage, gains in mine.items():
        assert all(torch.equal(g, reference[stage][m]) for m, g in gains.items()), stage
    assert mine_losses == reference_losses
    assert not hooked(model)


# -- the cost of a pass does not grow with the number of edits


class OpCounter:
    """Every aten operation dispatched in the block, by name."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()

    @contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = self.ops

        class Counting(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                ops[str(func.overloadpacket)] += 1
                return func(*args, **(kwargs or {}))

        with Counting():
            yield ops


def counted_pass(model: Any, ids: Any) -> tuple[Counter[str], Counter[str]]:
    """The aten operations of one forward pass over `ids` and of one greedy step after it (after a warm-up)."""
    counter = OpCounter()
    with torch.no_grad():
        for warm in (True, False):
            counter.ops.clear()
            with counter.counting() as ops:
                out = model(input_ids=ids, use_cache=True)
            prefill = Counter(ops)
            ops.clear()
            step = out.logits[:, -1].argmax(-1)[:, None]
            with counter.counting() as ops:
                model(input_ids=step, past_key_values=returned_cache(out), use_cache=True)
            if not warm:
                return prefill, Counter(ops)
    raise AssertionError("unreachable")


def test_the_operations_of_a_pass_do_not_grow_with_the_number_of_edits() -> None:
    """One forward and one decode step of the tiny model, with 1, 10, 100 and 1,000 kept edits of which one
    names a subject in the prompts: the same aten operations, the same number of times, for every count,
    and a trie walk bounded by rows x (tokens + look-back) x longest pattern. The stacked gates grow by
    at least a few operations per edit."""
    tok = piece_tokenizer()
    model = tiny_model("llama", len(tok))
    texts = ["The capital of Japan is", "Speaking of Japan, here is another question"]
    rows = [tok(t).input_ids for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    seen = {int(i) for i in ids.flatten()}
    counts, stacked_counts = {}, {}
    for count in (1, 10, 100, 1000):
        edits = synthetic_edits(model, tok, count, seen)
        with registered(edits):
            registry = GateRegistry.of(model)
            before = registry.lookups
            counts[count] = counted_pass(model, ids)
            walked = registry.lookups - before
        longest = max(len(p) for e in edits for p in e.gate.patterns)
        look_back = max(e.gate.kept_tokens for e in edits)
        assert walked <= 2 * ids.shape[0] * (ids.shape[1] + 1 + look_back) * longest  # two passes of each
        if count <= 10:
            with stacked([twin(e) for e in edits]):
                stacked_counts[count] = counted_pass(model, ids)
    assert counts[1] == counts[10] == counts[100] == counts[1000]
    assert sum(counts[1][0].values()) > 0 and sum(counts[1][1].values()) > 0
    for phase in (0, 1):
        growth = sum(stacked_counts[10][phase].values()) - sum(stacked_counts[1][phase].values())
        assert growth >= 9 * 5, phase
    assert not hooked(model)


def test_an_edit_with_no_gain_yet_opens_no_text_and_one_with_gains_does_sealed_or_not() -> None:
    """`may_open` (what a sequence's kept edits can reach): an edit added whose editor has not begun its first
    stage multiplies every text by 1, so its subject alone does not count; from its first gains on it does."""
    tok = piece_tokenizer()
    model = tiny_model("llama", len(tok))
    targets = all_layer_targets(model)
    japan = subject_gate_for(tok, [EditRequest("Japan", ("The capital of Japan is",), ("a",), ("b",))])
    york = subject_gate_for(tok, [EditRequest("York", ("York is in",), ("a",), ("b",))])
    kept = gated_edit(model, york, list(targets.modules), targets.feedforward, 1, 0)
    training = gated_edit(model, japan, list(targets.modules), targets.feedforward, 0, 1)
    japan_ids, york_ids = (tuple(tok(t).input_ids) for t in ("The capital of Japan is", "In York , we met"))
    with registered([kept, training], training=[1]):
        registry = GateRegistry.of(model)
        assert registry.may_open(york_ids) and not registry.may_open(japan_ids)
        training.gains["learn"] = {m: torch.nn.Parameter(torch.ones(1)) for m in targets.modules}
        assert registry.may_open(japan_ids)  # a stage began: its gains may change the text
        del training.gains["learn"]
        registry.seal(training)
        assert registry.may_open(japan_ids) and registry.lookups == 0
