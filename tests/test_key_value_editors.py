"""The field's editors (rome, alphaedit, ft-m) and the subject-gated IA³ gains on tiny random-weight models:
the math of each update, the subject gate, the generated-text cache, and the base restored bit for bit."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import get_editor, resolve_settings
from pytest_factedit.edit.alphaedit import alphaedit_change, null_space_projector
from pytest_factedit.edit.base import EditRequest, kept_edits_released
from pytest_factedit.edit.gate import SubjectGate
from pytest_factedit.edit.keys import key_second_moment, keys_and_values
from pytest_factedit.edit.rank_one import context_spans, fact_key_value
from pytest_factedit.edit.rome import rome_change
from pytest_factedit.edit.subject import subject_patterns, subject_span
from pytest_factedit.edit.subject_gains import load_subject_gains
from pytest_factedit.errors import MethodError
from pytest_factedit.model.generated import generated_prefixes, sampled_rows
from pytest_factedit.model.probe import greedy_continuations
from pytest_factedit.model.targets import layer_targets

from .tiny import REQUEST, assert_identical, snapshot, tiny_model, word_tokenizer

# On a tiny random model a change at an early token barely reaches the last one; a subject that ends the
# prompt puts the edited position where the answer is read, so the value optimisation has a grip.
AT_THE_END = dataclasses.replace(REQUEST, subject="city of")
LOOSE = {"clamp_norm": 1000.0, "value_decay": 0.0, "value_lr": 0.05, "generated_prefixes": 2}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTEDIT_CACHE", str(tmp_path / "cache"))


def p_first(model, tok, prompt: str, answer: str) -> float:
    ids = torch.tensor([tok(prompt).input_ids])
    with torch.no_grad():
        logp = model(ids).logits[0, -1].log_softmax(-1)
    return float(logp[tok(" " + answer, add_special_tokens=False).input_ids[0]].exp())


def test_the_subject_is_found_by_characters_and_as_a_token_pattern() -> None:
    tok = word_tokenizer()
    span = subject_span(tok, "Here is a fact . The Eiffel Tower is located in", "eiffel tower")
    assert tok.convert_ids_to_tokens(list(span.tokens)) == ["Eiffel", "Tower"]
    assert span.last == span.positions[-1] == len(tok("Here is a fact . The Eiffel Tower").input_ids) - 1
    with pytest.raises(MethodError, match="does not appear in the prompt"):
        subject_span(tok, "The Louvre is located in", "Eiffel Tower")
    gate = SubjectGate(subject_patterns(tok, "Eiffel Tower", [span]))
    ids = torch.tensor([tok("The Eiffel Tower and the Eiffel river").input_ids])
    marked = gate.positions(ids)[0].tolist()
    assert [t for t, m in zip(tok.convert_ids_to_tokens(ids[0].tolist()), marked) if m] == ["Eiffel", "Tower"]


def test_generated_text_is_sampled_once_per_model_and_read_back(tmp_path) -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    state = torch.random.get_rng_state()
    first = sampled_rows(model, tok, 3, 5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is kept
    assert len(first) == 3 and all(len(r) == 5 for r in first)
    stored = list((tmp_path / "cache" / "generated").glob("*-L5-seed0.json"))
    assert len(stored) == 1
    assert sampled_rows(model, tok, 70, 5)[:3] == first  # more rows: the first ones stay, a chunk is added
    stored[0].write_text(stored[0].read_text().replace("[[", "[[999999, "))  # a damaged file is sampled again
    assert sampled_rows(model, tok, 3, 5) == first
    prefixes = generated_prefixes(model, tok, 4)
    assert len(prefixes) == 4 and all(p == "" or p.endswith(". ") for p in prefixes)


def test_the_key_moment_is_the_mean_outer_product_and_is_cached(tmp_path) -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    name = "model.layers.1.mlp.down_proj"
    moment = key_second_moment(model, tok, name, 2)
    assert moment.shape == (64, 64)
    assert torch.allclose(moment, moment.T, atol=1e-6)
    assert float(torch.linalg.eigvalsh(moment.double()).min()) >= -1e-8  # E[k kᵀ] is positive semi-definite
    rows = sampled_rows(model, tok, 2, 64)  # 2 x 64 = 128 positions = 2 x d_k
    keys, _ = keys_and_values(model, model.get_submodule(name), rows, [63, 63], 0)
    assert keys.shape == (2, 64)
    assert len(list((tmp_path / "cache" / "generated" / "stats").glob("*.pt"))) == 1


def test_the_rome_change_maps_the_key_to_the_new_value_and_has_rank_one() -> None:
    torch.manual_seed(0)
    keys = torch.randn(200, 16)
    moment = keys.T @ keys / 200
    key, delta = torch.randn(16), torch.randn(8)
    change = rome_change(moment, type("KV", (), {"key": key, "delta": delta})())
    assert torch.allclose(change @ key.double(), delta.double(), atol=1e-8)
    assert torch.linalg.matrix_rank(change) == 1


def test_the_alphaedit_change_leaves_the_preserved_keys_alone() -> None:
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16))[0]
    spread = torch.cat([torch.full((10,), 5.0), torch.full((6,), 1e-4)])
    moment = basis @ torch.diag(spread) @ basis.T
    projector = null_space_projector(moment, 0.01, ("test",))
    assert torch.allclose(projector @ projector, projector, atol=1e-8)
    key = basis[:, 12] + 0.5 * basis[:, 2]  # partly in the null space
    delta = torch.randn(8)
    change = alphaedit_change(projector, key[:, None], delta[:, None], None, 1e-3)
    preserved = basis[:, :10].double()  # the directions other knowledge uses
    assert float((change @ preserved).abs().max()) < 1e-6 * float(change.abs().max())
    assert float((change @ key.double() - delta.double()).norm()) < 0.05 * float(delta.norm())


@pytest.mark.parametrize("kind", ["llama", "gpt2", "phi3"])
@pytest.mark.parametrize("name", ["rome", "alphaedit"])
def test_key_value_editors_learn_the_value_and_restore_the_base_bit_identical(kind: str, name: str) -> None:
    tok = word_tokenizer()
    model = tiny_model(kind, len(tok), layers=4)
    before = snapshot(model)
    prompt = AT_THE_END.prompts[0]
    own = {"nullspace_threshold": 0.5} if name == "alphaedit" else {}
    settings = resolve_settings({"name": name, **own, **LOOSE})
    targets = layer_targets(model, [2], [], "test")
    p_before = p_first(model, tok, prompt, "Rome")
    with get_editor(name).apply(model, tok, AT_THE_END, targets, settings) as applied:
        value = applied.stages[0]
        assert value.name == "value" and value.losses[-1] < value.losses[0]
        assert p_first(model, tok, prompt, "Rome") > p_before
        changed = [k for k, v in before.items() if not torch.equal(model.state_dict()[k], v)]
        assert changed == [targets.feedforward[0] + ".weight"]
        with applied.disabled():
            assert_identical(model, before)
    assert_identical(model, before)


def test_the_value_is_found_behind_every_prefix_at_the_subject_s_last_token() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=4)
    settings = resolve_settings({"name": "rome", **LOOSE, "value_steps": 3})
    prefixes = ("", "Here is a fact . ")
    spans = context_spans(tok, AT_THE_END, prefixes)
    assert [tok.convert_ids_to_tokens(s.ids[s.last]) for s in spans] == ["of", "of"]
    found = fact_key_value(model, tok, "model.layers.2.mlp.down_proj", AT_THE_END, settings, prefixes)
    keys, _ = keys_and_values(
        model, model.get_submodule("model.layers.2.mlp.down_proj"), [s.ids for s in spans], [s.last for s in spans], 0
    )
    assert torch.allclose(found.key, keys.mean(0))
    assert found.stage.steps <= 3


def test_alphaedit_in_sequence_keeps_earlier_keys_only_while_the_module_holds_them() -> None:
    from pytest_factedit.edit.alphaedit import kept_keys

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=4)
    settings = resolve_settings({"name": "alphaedit", "nullspace_threshold": 0.5, **LOOSE, "value_steps": 3})
    targets = layer_targets(model, [2], [], "test")
    name = targets.feedforward[0]
    first = get_editor("alphaedit").apply(model, tok, AT_THE_END, targets, settings)
    first.merge()
    assert kept_keys(model, name).shape[1] == 1
    second = get_editor("alphaedit").apply(model, tok, AT_THE_END, targets, settings)
    second.merge()
    assert kept_keys(model, name).shape[1] == 2
    with torch.no_grad():
        model.get_submodule(name).weight.add_(1.0)  # the weights moved on: the kept keys no longer apply
    assert kept_keys(model, name) is None


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_ft_m_trains_one_mlp_output_projection_with_eos_and_restores(kind: str) -> None:
    tok = word_tokenizer()
    model = tiny_model(kind, len(tok), layers=4)
    before = snapshot(model)
    targets = layer_targets(model, [2], [], "test")
    settings = resolve_settings({"name": "ft-m", "lr": 0.05})
    assert settings.append_eos and settings.kl_weight == 0
    with get_editor("ft-m").apply(model, tok, REQUEST, targets, settings) as applied:
        assert greedy_continuations(model, tok, REQUEST.prompts, [2]) == ["Rome"]  # then end-of-sequence
        changed = [k for k, v in before.items() if not torch.equal(model.state_dict()[k], v)]
        assert changed == [targets.feedforward[0] + ".weight"]
        assert applied.trainable_parameters == model.get_submodule(targets.feedforward[0]).weight.numel()
    assert_identical(model, before)


def test_key_value_editors_need_an_mlp_layer() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    for name in ("rome", "alphaedit", "ft-m"):
        with pytest.raises(MethodError, match="mlp_layers >= 1"):
            get_editor(name).apply(
                model, tok, REQUEST, layer_targets(model, [], [1], "t"), resolve_settings({"name": name})
            )


@pytest.mark.parametrize("kind", ["llama", "gpt2", "phi3"])
def test_subject_gated_gains_learn_leave_other_prompts_exact_and_restore(kind: str, tmp_path) -> None:
    tok = word_tokenizer()
    model = tiny_model(kind, len(tok), layers=4)
    before = snapshot(model)
    other = ["The Louvre is located in the city of", "Big Ben is a clock tower in the city of"]
    with torch.no_grad():
        base_other = model(torch.tensor([tok(other[0]).input_ids])).logits
    settings = resolve_settings(
        {"gain_positions": "subject", "lr": 0.3, "learn_max_steps": 30, "unlearn_max_steps": 5, "guard_tokens": 1}
    )
    targets = layer_targets(model, [1, 2], [3], "test")
    p_before = p_first(model, tok, REQUEST.prompts[0], "Rome")
    with get_editor("ia3-two-stage").apply(model, tok, REQUEST, targets, settings) as applied:
        assert [s.name for s in applied.stages] == ["unlearn", "learn"]
        assert p_first(model, tok, REQUEST.prompts[0], "Rome") > p_before
        with torch.no_grad():  # a prompt without the subject runs the base model exactly
            assert torch.equal(model(torch.tensor([tok(other[0]).input_ids])).logits, base_other)
        assert applied.save(tmp_path) == ["subject-gains"]
        with torch.no_grad():
            edited_logits = model(torch.tensor([tok(REQUEST.prompts[0]).input_ids])).logits
    assert_identical(model, before)
    with load_subject_gains(model, tmp_path / "subject-gains"), torch.no_grad():  # the shipped edit, put back
        assert torch.equal(model(torch.tensor([tok(REQUEST.prompts[0]).input_ids])).logits, edited_logits)
    assert not model.get_input_embeddings()._forward_pre_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_kept_gated_edit_stays_until_the_sequence_releases_it() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=4)
    settings = resolve_settings({"gain_positions": "subject", "learn_max_steps": 2, "unlearn_max_steps": 2})
    with kept_edits_released(model):
        get_editor("ia3-two-stage").apply(model, tok, REQUEST, layer_targets(model, [1], [], "t"), settings).merge()
        assert any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_gain_positions_is_refused_where_there_are_no_gains() -> None:
    with pytest.raises(MethodError, match="gain_positions is read by ia3-two-stage, ia3, ia3-all-layers; lora does"):
        resolve_settings({"name": "lora", "gain_positions": "subject"})


def test_a_subject_missing_from_every_prompt_is_a_clear_error() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    request = EditRequest(subject="Colosseum", prompts=REQUEST.prompts, old=("Paris",), new=("Rome",))
    with pytest.raises(MethodError, match="Colosseum.*does not appear"):
        get_editor("rome").apply(
            model, tok, request, layer_targets(model, [1], [], "t"), resolve_settings({"name": "rome"})
        )


def test_the_preservation_term_is_the_relative_mean_square_output_change(monkeypatch) -> None:
    from pytest_factedit.edit import preservation
    from pytest_factedit.model.targets import TargetModules

    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"scaled_out": torch.nn.Linear(4, 3, bias=False), "scaled_in": torch.nn.Linear(4, 3, bias=False)}
    )
    x = torch.randn(500, 4)
    monkeypatch.setattr(
        preservation, "key_second_moments", lambda _m, _t, names, _p: {n: x.T @ x / len(x) for n in names}
    )
    forms = preservation.preserved_outputs(
        model, None, TargetModules(("scaled_out", "scaled_in"), ("scaled_in",), "t"), 1
    )
    g_out, g_in = torch.tensor([1.5, 1.0, 0.8]), torch.tensor([1.0, 2.0, 1.0, 0.5])
    w_out, w_in = model["scaled_out"].weight.detach(), model["scaled_in"].weight.detach()
    moved_out = ((x @ w_out.T) * (g_out - 1)).pow(2).sum(1).mean() / (x @ w_out.T).pow(2).sum(1).mean()
    moved_in = ((x * (g_in - 1)) @ w_in.T).pow(2).sum(1).mean() / (x @ w_in.T).pow(2).sum(1).mean()
    found = forms.penalty({"scaled_out": g_out[:, None], "scaled_in": g_in[None, :]})
    assert torch.allclose(found, (moved_out + moved_in) / 2, rtol=1e-4)
    assert float(forms.penalty({"scaled_out": torch.ones(3, 1), "scaled_in": torch.ones(1, 4)})) == 0.0


def test_the_preservation_weight_holds_the_gains_near_one() -> None:
    tok = word_tokenizer()
    shifts = []
    for weight in (0.0, 1000.0):
        model = tiny_model("llama", len(tok), layers=4)
        settings = resolve_settings(
            {
                "gain_positions": "every",
                "preservation_weight": weight,
                "key_positions_per_dim": 1,
                "lr": 0.3,
                "learn_max_steps": 8,
                "unlearn_max_steps": 1,
            }
        )
        with get_editor("ia3-two-stage").apply(
            model, tok, REQUEST, layer_targets(model, [1], [2], "t"), settings
        ) as applied:
            learned = [p for n, p in applied.peft_model.named_parameters() if ".ia3_l.learn" in n]
            shifts.append(sum(float((p - 1).abs().sum()) for p in learned))
    assert shifts[1] < 0.5 * shifts[0]
    with pytest.raises(MethodError, match="preservation_weight is read by ia3-two-stage, ia3, ia3-all-layers; lora"):
        resolve_settings({"name": "lora", "preservation_weight": 1.0})
