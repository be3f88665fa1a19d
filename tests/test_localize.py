"""Localization on tiny models: finds a planted fact, restores exactly, leaves no hook, drives IA³ targets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import get_editor, resolve_settings
from pytest_factedit.edit.base import EditRequest
from pytest_factedit.errors import (
    MethodError,
)
from pytest_factedit.localize import (
    FactPrompts,
    LocalizeSettings,
    SubjectNotFound,
    forward_hooks,
    localize,
    top_layers,
)
from pytest_factedit.localize.patching import (
    embedding_std,
    noise_for,
    prepare,
    restored_probs,
    subject_positions,
)
from pytest_factedit.model.arch import arch_modules
from pytest_factedit.model.skip import hooks_allow_first_rows
from pytest_factedit.model.targets import all_layer_targets, explicit_targets, layer_targets, random_layer_targets

from .tiny import tiny_model, word_tokenizer

PLANTED_LAYER = 2
FACTS = {"The Eiffel Tower": "Rome", "The Big Ben": "London", "The Louvre": "Berlin", "The Colosseum": "Paris"}


def answer_id(tok, answer: str) -> int:
    return tok(" " + answer, add_special_tokens=False).input_ids[0]


@pytest.fixture(scope="module")
def planted():
    """A 4-layer llama whose only trained weights are the MLP of layer 2: the facts live there."""
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=4)
    with torch.no_grad():  # a head with unit-scale weights, so that one MLP can make an answer certain
        model.lm_head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    mlp = model.model.layers[PLANTED_LAYER].mlp
    for p in mlp.parameters():
        p.requires_grad_(True)
    batch = tok(list(FACTS), return_tensors="pt", padding=True)
    targets = torch.tensor([answer_id(tok, a) for a in FACTS.values()])
    optimizer = torch.optim.Adam(mlp.parameters(), lr=3e-2)
    torch.manual_seed(0)
    for _ in range(60):
        logits = model(**batch).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for p in mlp.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model, tok


@pytest.mark.parametrize("method", ["trace", "attribution"])
def test_planted_fact_is_found_in_its_layer(planted, method: str) -> None:
    model, tok = planted
    found = localize(
        model,
        tok,
        FactPrompts(("The Eiffel Tower",), "Eiffel Tower", "Rome", answer_id(tok, "Rome")),
        LocalizeSettings(
            method=method, positions="all", precision="float32", noise_samples=5, mlp_layers=1, attention_layers=1
        ),
    )
    assert found.grids[0].clean_prob > 0.9
    assert found.grids[0].corrupted_prob < 0.5 * found.grids[0].clean_prob
    assert found.mlp_layers == (PLANTED_LAYER,)
    measured = [e for e in found.mlp_effects if e is not None]
    assert found.mlp_effects[PLANTED_LAYER] == max(measured) > 0.3


def test_restoring_every_position_of_a_layer_gives_back_the_clean_probability(planted) -> None:
    model, tok = planted
    arch = arch_modules(model)
    prep = prepare(model, arch, tok, "The Eiffel Tower", "Eiffel Tower", answer_id(tok, "Rome"), True)
    noise = noise_for(prep, 3, 3 * embedding_std(model), seed=1)
    everything = tuple(range(prep.last + 1))
    cells = [("hidden", layer, everything) for layer in range(4)]
    probs = restored_probs(model, arch, prep, noise, cells, batch_rows=5)  # several chunks
    assert float(probs[:, 0].mean()) < prep.clean_prob - 0.1  # the corruption mattered
    torch.testing.assert_close(probs[:, 1:], torch.full((3, 4), prep.clean_prob), rtol=0, atol=1e-5)


@pytest.mark.parametrize("intel", [True, False])
def test_the_clean_run_takes_one_rows_head_product_through_f_linear_on_an_intel_cpu_in_fp32(
    planted, monkeypatch, intel: bool
) -> None:
    """The clean probability of a prompt is one row's product with the whole head: MKL's matrix-vector
    product (`F.linear`) in fp32 on an Intel CPU, where it is 3x faster than the two rows `head_product`
    takes; the same probability either way."""
    from pytest_factedit.model import lmhead

    model, tok = planted
    arch = arch_modules(model)
    monkeypatch.setattr(lmhead, "mkl_on_intel", lambda: intel)
    linear, one_rows = torch.nn.functional.linear, []

    def counted(hidden, weight, *bias):
        one_rows.append(hidden.shape[0] == 1 and weight.shape[0] == model.lm_head.weight.shape[0])
        return linear(hidden, weight, *bias)

    monkeypatch.setattr(torch.nn.functional, "linear", counted)
    prep = prepare(model, arch, tok, "The Eiffel Tower", "Eiffel Tower", answer_id(tok, "Rome"), True)
    assert any(one_rows) is intel
    with torch.no_grad():
        hidden = model.model(prep.ids).last_hidden_state[:, -1]
        expected = torch.softmax(linear(hidden, model.lm_head.weight), -1)[0, answer_id(tok, "Rome")]
    assert prep.clean_prob == pytest.approx(float(expected), abs=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lmhead.single_row_as_linear(hidden, model.lm_head.weight)
    assert not lmhead.single_row_as_linear(hidden.repeat(2, 1), model.lm_head.weight)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("method,precision", [("trace", "float32"), ("attribution", "float32"), ("trace", "bfloat16")])
def test_tracing_leaves_the_model_exactly_as_it_was(planted, method: str, precision: str) -> None:
    model, tok = planted
    ids = tok(["The Eiffel Tower is located in the city of"], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(input_ids=ids).logits
    params = {name: (p, p.clone()) for name, p in model.named_parameters()}
    hooks = _hooks(model)
    localize(
        model,
        tok,
        FactPrompts(("The Eiffel Tower is located in the city of",), "Eiffel Tower", "Rome", answer_id(tok, "Rome")),
        LocalizeSettings(method=method, precision=precision, positions="all"),
    )
    assert _hooks(model) == hooks == 0
    for name, p in model.named_parameters():
        assert p is params[name][0] and torch.equal(p, params[name][1]), name
        assert p.grad is None
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_hooks_are_removed_when_the_traced_pass_fails(planted) -> None:
    model, _ = planted

    def failing(_module, _inputs, _output):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        with forward_hooks(model, {"model.layers.1.mlp": failing}):
            model(input_ids=torch.tensor([[1, 5, 6]]))
    assert _hooks(model) == 0


def test_subject_positions_cover_the_subject_tokens() -> None:
    tok = word_tokenizer()
    ids, positions = subject_positions(tok, "The Eiffel Tower is located in", "Eiffel Tower", True)
    assert tok.convert_ids_to_tokens([ids[p] for p in positions]) == ["Eiffel", "Tower"]
    with pytest.raises(SubjectNotFound, match="Louvre"):
        subject_positions(tok, "The Eiffel Tower is located in", "Louvre", True)


def test_top_layers_ignores_unmeasured_and_breaks_ties_low() -> None:
    assert top_layers([0.1, None, 0.5, 0.5, -0.2], 3) == (2, 3, 0)
    assert top_layers([None, 0.2], 5) == (1,)


def test_localized_phi3_edit_uses_the_fused_modules_and_restores_the_base() -> None:
    tok = word_tokenizer()
    model = tiny_model("phi3", len(tok), layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = "The Eiffel Tower is located in the city of"
    base_id = int(model(**tok([prompt], return_tensors="pt")).logits[0, -1].argmax())
    old = tok.decode([base_id]).strip()
    found = localize(
        model,
        tok,
        FactPrompts((prompt,), "Eiffel Tower", old, base_id),
        LocalizeSettings(mlp_layers=3, attention_layers=2),
    )
    assert sorted(found.mlp_layers) == [0, 1] and sorted(found.attention_layers) == [0, 1]  # k clamps to 2 layers
    targets = layer_targets(model, found.mlp_layers[:1], found.attention_layers[:1], "test")
    assert {m.rsplit(".", 1)[-1] for m in targets.modules} == {"gate_up_proj", "down_proj", "qkv_proj", "o_proj"}
    request = EditRequest(
        subject="Eiffel Tower",
        prompts=(prompt,),
        old=(old,),
        new=("Rome",),
        held_out=("Big Ben is a clock tower in the city of",),
    )
    settings = resolve_settings({"lr": 0.3, "unlearn_max_steps": 3, "learn_max_steps": 3, "guard_tokens": 1})
    applied = get_editor("ia3-two-stage").apply(model, tok, request, targets, settings)
    try:
        assert set(applied.gains["learn"]) == set(applied.gains["unlearn"]) == set(targets.modules)
        assert any(m.endswith("qkv_proj") for m in applied.gains["learn"])
        assert [s.name for s in applied.stages] == ["unlearn", "learn"]
    finally:
        applied.remove()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_a_type_outside_the_table_is_read_by_introspection_and_yaml_names_modules_too() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    model.config.model_type = "mystery"
    found = localize(
        model, tok, FactPrompts(("The Eiffel Tower is",), "Eiffel Tower", "Paris", answer_id(tok, "Paris"))
    )
    assert arch_modules(model).source == "introspection" and len(found.mlp_effects) == 2
    targets = explicit_targets(model, ["model.layers.1.mlp.down_proj"], ["model.layers.1.mlp.down_proj"])
    request = EditRequest(
        subject="Eiffel Tower", prompts=("The Eiffel Tower is located in the city of",), old=("Paris",), new=("Rome",)
    )
    applied = get_editor("ia3-two-stage").apply(
        model, tok, request, targets, resolve_settings({"unlearn_max_steps": 1, "learn_max_steps": 1})
    )
    applied.remove()


def test_random_layers_match_the_localized_count_and_are_seeded() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=6)
    first = random_layer_targets(model, 3, 2, seed=4)
    assert first == random_layer_targets(model, 3, 2, seed=4)
    mlp = [m for m in first.modules if m.endswith("up_proj")]
    attn = [m for m in first.modules if m.endswith("v_proj")]
    assert len(mlp) == 3 and len(attn) == 2


def test_localize_settings_are_validated() -> None:
    assert resolve_settings({"localize": "attribution", "mlp_layers": 1}).localize == "attribution"
    with pytest.raises(MethodError, match="did you mean 'trace'"):
        resolve_settings({"localize": "trcae"})
    with pytest.raises(MethodError, match="nothing left to edit"):
        resolve_settings({"mlp_layers": 0, "attention_layers": 0})


@pytest.mark.parametrize("kind,gated", [("llama", False), ("phi3", False), ("gpt2", False), ("llama", True)])
def test_batched_restorations_equal_one_full_pass_per_restoration(kind: str, gated: bool) -> None:
    """Restorations batched several to a pass (in chunks) against one plain patched forward each; also
    under a kept edit whose gate opens on the subject and stays open to the end of its sentence (a pass
    from a later position must know the sentence is open)."""
    tok = word_tokenizer()
    model = tiny_model(kind, len(tok), layers=3)
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    with _kept_gated_edit(model, tok, "Eiffel Tower") if gated else nullcontext():
        # the edit's large gains leave P(answer) near 1e-10 on this tiny model: compare relatively there
        _check_batched_restorations(model, tok, {"rel": 1e-4, "abs": 0.0} if gated else {"rel": 0.0, "abs": 1e-5})


def _check_batched_restorations(model, tok, tolerance: dict[str, float]) -> None:
    from pytest_factedit.localize.hooks import embedding_noise, restore_hook, site_module_name
    from pytest_factedit.localize.patching import answer_probs

    arch = arch_modules(model)
    prep = prepare(
        model, arch, tok, "The Eiffel Tower is located in the city of", "Eiffel Tower", answer_id(tok, "Paris"), True
    )
    noise = noise_for(prep, 2, 3 * embedding_std(model), seed=2)
    cells = [
        (site, layer, (pos,))
        for site in ("hidden", "mlp", "attn")
        for layer in range(3)
        for pos in (prep.subject[-1], prep.last)
    ] + [("mlp", 1, (2, 3))]
    fast = restored_probs(model, arch, prep, noise, cells, batch_rows=9)
    for s in range(2):
        with torch.no_grad(), embedding_noise(model, prep.subject, noise[s : s + 1]):
            unpatched = float(answer_probs(model, prep.ids, prep.answer_id)[0])
            assert unpatched == pytest.approx(float(fast[s, 0]), **tolerance)
        for c, (site, layer, positions) in enumerate(cells):
            hook = restore_hook(
                torch.zeros(len(positions), dtype=torch.long), torch.tensor(positions), prep.clean[(site, layer)]
            )
            with (
                torch.no_grad(),
                embedding_noise(model, prep.subject, noise[s : s + 1]),
                forward_hooks(model, {site_module_name(arch, site, layer): hook}),
            ):
                slow = float(answer_probs(model, prep.ids, prep.answer_id)[0])
            assert slow == pytest.approx(float(fast[s, c + 1]), **tolerance), (site, layer, positions)


@pytest.mark.parametrize("kind,gated", [("llama", False), ("gpt2", False), ("llama", True)])
def test_restored_rows_skip_the_layers_below_their_own_and_a_hooked_model_runs_them_all(kind: str, gated: bool) -> None:
    """Each decoder layer computes only the rows restored at or below it (cells at the first token too);
    a model with a hook of its own (one that may keep per-pass state) runs every row at every layer.
    Both give the same probabilities. The kept edits' shared subject gate (a sequential run) lets rows
    skip layers too: it scales only the rows a layer computes, as in the whole pass."""
    tok = word_tokenizer()
    model = tiny_model(kind, len(tok), layers=3)
    arch = arch_modules(model)
    text, subject = "Eiffel Tower is located in the city of", "Eiffel Tower"
    prep = prepare(model, arch, tok, text, subject, answer_id(tok, "Paris"), add_special_tokens=False)
    noise = noise_for(prep, 2, 3 * embedding_std(model), seed=3)
    cells = [(site, layer, (pos,)) for site in ("mlp", "attn") for layer in range(3) for pos in (0, prep.last)]
    bare = restored_probs(model, arch, prep, noise, cells, batch_rows=64)
    rows_seen: dict[int, int] = {}
    for layer in range(3):  # an instance forward, not a hook: counts the rows each layer's MLP computes
        mlp = model.get_submodule(f"{arch.layers}.{layer}.{arch.mlp_block}")

        def counting(x, _forward=mlp.forward, _layer=layer):
            rows_seen[_layer] = rows_seen.get(_layer, 0) + x.shape[0]
            return _forward(x)

        mlp.forward = counting
    with ExitStack() as kept:
        if gated:
            kept.enter_context(_kept_gated_edit(model, tok, subject))
            assert hooks_allow_first_rows(model)
        skipping = restored_probs(model, arch, prep, noise, cells, batch_rows=64)
        counted = dict(rows_seen)
        with forward_hooks(model, {f"{arch.layers}.0": lambda _m, _i, _o: None}):
            assert not hooks_allow_first_rows(model)
            rows_seen.clear()
            every = restored_probs(model, arch, prep, noise, cells, batch_rows=64)
    # corrupted pass (2 rows) + a pass from each restored position (2 samples x 6 cells each); with the
    # gate, which keeps state with the cache, the prefix before the last token has a pass of its own, for
    # the gate's state alone: no layer computes in it
    assert rows_seen == {0: 2 + 12 + 12, 1: 26, 2: 26}
    assert counted == {0: 2 + 4 + 4, 1: 2 + 8 + 8, 2: 26}
    torch.testing.assert_close(skipping, every, rtol=0, atol=1e-6)
    assert gated != torch.allclose(skipping, bare, rtol=0, atol=1e-4)  # the gate acts on the traced rows


def test_a_pass_with_every_layer_bypassed_keeps_the_gate_state_a_whole_pass_keeps() -> None:
    """The state the kept edits' gate keeps with a cache depends on the ids alone, so localization reads a
    prefix's state from a pass in which no decoder layer computes: for every prefix of a text (cut inside
    the name, after a sentence it opened and closed, or not), that pass keeps the same tensors as a whole
    pass, and the layers are restored after it."""
    from pytest_factedit.model.kv import returned_cache, row_state
    from pytest_factedit.model.lmhead import decoder
    from pytest_factedit.model.skip import decoder_layers, layers_bypassed

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=3)
    ids = tok("Here is Eiffel Tower . The Eiffel Tower is located in the city of", return_tensors="pt").input_ids

    def kept_state(end: int) -> dict:
        with torch.no_grad():
            out = decoder(model)(input_ids=ids[:, :end].expand(2, -1), use_cache=True)
        return row_state(returned_cache(out))

    calls = []
    mlp = model.get_submodule("model.layers.0.mlp")
    mlp.register_forward_hook(lambda *_: calls.append(1))
    with _kept_gated_edit(model, tok, "Eiffel Tower"):
        for end in range(1, ids.shape[1] + 1):
            whole = kept_state(end)
            with layers_bypassed(model):
                calls.clear()
                bypassed = kept_state(end)
                assert not calls  # no layer computed
            assert whole and whole.keys() == bypassed.keys()
            for name, tensors in whole.items():
                assert all(torch.equal(a, b) for a, b in zip(tensors, bypassed[name], strict=True)), end
    assert not any("forward" in layer.__dict__ for layer in decoder_layers(model))


def test_layers_stood_in_for_get_back_a_forward_set_on_them_before() -> None:
    """A forward set on a decoder layer itself (accelerate's device hooks wrap a dispatched model's layers
    so) is the one it computes with again after `layers_bypassed` and `entering_at`; inside those blocks
    the stand-ins compute instead, and entering a layer with its stored input gives the whole pass."""
    from pytest_factedit.model.lmhead import decoder
    from pytest_factedit.model.skip import capture_entering, decoder_layers, entering_at, layers_bypassed

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=3)
    layers = decoder_layers(model)
    called: list[int] = []

    def wrapped(index: int, forward):
        return lambda *args, **kwargs: (called.append(index), forward(*args, **kwargs))[1]

    for index, layer in enumerate(layers):
        layer.forward = wrapped(index, layer.forward)
    own = [layer.__dict__["forward"] for layer in layers]
    ids = tok("The Eiffel Tower is located in", return_tensors="pt").input_ids
    store: dict = {}
    with torch.no_grad():
        with capture_entering(model, 2, store):
            whole = decoder(model)(input_ids=ids).last_hidden_state
        called.clear()
        with layers_bypassed(model):
            decoder(model)(input_ids=ids)
        assert called == []
        with entering_at(model, 2, store["hidden"], store["extras"]):
            entered = decoder(model)(input_ids=ids).last_hidden_state
        assert called == [2]
        called.clear()
        again = decoder(model)(input_ids=ids).last_hidden_state
    assert called == [0, 1, 2] and [layer.__dict__["forward"] for layer in layers] == own
    torch.testing.assert_close(entered, whole, rtol=0, atol=0)
    torch.testing.assert_close(again, whole, rtol=0, atol=0)


@contextmanager
def _kept_gated_edit(model, tok, subject: str) -> Iterator[None]:
    """A sealed edit on every layer's modules behind the shared gate on `subject`, as a sequence keeps one.
    Its one pattern is the whole name ("Lionel Messi" has no "Lionel" alone): a restoration that cuts the
    name needs the keys and values of its first part as the whole prompt's pass gated them."""
    from pytest_factedit.edit.gate import SubjectGate
    from pytest_factedit.edit.subject_gains import subject_gate_for

    from .stacked_gates import gated_edit, registered

    request = EditRequest(subject, (f"{subject} is located in",), ("Rome",), ("Paris",))
    flags = subject_gate_for(tok, [request]).word_flags
    whole = tuple(tok(" " + subject, add_special_tokens=False).input_ids)
    gate = SubjectGate([whole], "subject-sentence", flags)  # the default editor's reach
    targets = all_layer_targets(model)
    with registered([gated_edit(model, gate, targets.modules, targets.feedforward, 2, 5)]):
        yield
