"""Model families by introspection: each architecture a user may bring, as a tiny random model built from its
config, is read, localized, edited by every editor and restored bit for bit."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import get_editor, resolve_settings
from pytest_factedit.errors import MethodError, UnsupportedArchitecture
from pytest_factedit.localize import FactPrompts, LocalizeSettings, localize
from pytest_factedit.model.arch import ARCHITECTURES, arch_modules
from pytest_factedit.model.introspect import read_layout
from pytest_factedit.model.targets import layer_targets
from pytest_factedit.model.weights import weights_fingerprint

from .test_editors import EXPECTED_STAGES, FAST, fast_settings, targets_for
from .tiny import FAMILIES, REQUEST, assert_identical, family_model, snapshot, word_tokenizer

# What introspection reads in each family: the layer list, the attention modules, the MLP modules and the
# MLP writer (whose input IA³ scales). docs/models.md shows the same table.
EXPECTED = {
    "llama": ("model.layers", ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj")),
    "mistral": ("model.layers", ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj")),
    "qwen2": ("model.layers", ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj")),
    "qwen3": ("model.layers", ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj")),
    "gemma2": ("model.layers", ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj")),
    "gemma3_text": ("model.layers", ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj")),
    "phi3": ("model.layers", ("self_attn.qkv_proj", "self_attn.o_proj"), ("mlp.gate_up_proj", "mlp.down_proj")),
    "phi": ("model.layers", ("self_attn.v_proj", "self_attn.dense"), ("mlp.fc1", "mlp.fc2")),
    "gpt2": ("transformer.h", ("attn.c_attn", "attn.c_proj"), ("mlp.c_fc", "mlp.c_proj")),
    "gpt_neox": (
        "gpt_neox.layers",
        ("attention.query_key_value", "attention.dense"),
        ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    ),
    "falcon": (
        "transformer.h",
        ("self_attention.query_key_value", "self_attention.dense"),
        ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    ),
    "qwen2_moe": (
        "model.layers",
        ("self_attn.v_proj", "self_attn.o_proj"),
        ("mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"),
    ),
}
PROMPT = REQUEST.prompts[0]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTEDIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_introspection_reads_the_layers_and_projections_of_each_family(model_type: str) -> None:
    model = family_model(model_type, len(word_tokenizer()))
    layout = read_layout(model)
    layers, attention, mlp = EXPECTED[model_type]
    assert (layout.layers, layout.attention, layout.mlp, layout.feedforward) == (layers, attention, mlp, mlp[-1:])
    names = {name for name, _ in model.named_modules()}
    assert all(f"{layers}.1.{m}" in names for m in attention + mlp)
    assert ("shared expert" in layout.note) == (model_type == "qwen2_moe")


@pytest.mark.parametrize("model_type", sorted(set(FAMILIES) & set(ARCHITECTURES)))
def test_introspection_agrees_with_every_entry_of_the_override_table(model_type: str) -> None:
    model = family_model(model_type, len(word_tokenizer()))
    layout, pinned = read_layout(model), ARCHITECTURES[model_type]
    assert (layout.layers, layout.mlp, layout.attention, layout.feedforward) == (
        pinned.layers,
        pinned.mlp,
        pinned.attention,
        pinned.feedforward,
    )
    assert (layout.mlp_block, layout.attention_block) == (pinned.mlp_block, pinned.attention_block)


def test_a_family_outside_the_table_is_read_and_says_so() -> None:
    model = family_model("gpt_neox", len(word_tokenizer()))
    arch = arch_modules(model)
    assert arch.source == "introspection" and "gpt_neox.layers.N (introspection)" in arch.describe()


def _base_answer(model, tok) -> tuple[str, int]:
    with torch.no_grad():
        answer = int(model(**tok([PROMPT], return_tensors="pt")).logits[0, -1].argmax())
    return tok.decode([answer]).strip(), answer


@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_family_is_localized_edited_in_two_stages_and_restored(model_type: str) -> None:
    tok = word_tokenizer()
    model = family_model(model_type, len(tok))
    before, fingerprint = snapshot(model), weights_fingerprint(model)
    old, answer = _base_answer(model, tok)
    found = localize(
        model,
        tok,
        FactPrompts((PROMPT,), "Eiffel Tower", old, answer),
        LocalizeSettings(mlp_layers=1, attention_layers=1),
    )
    assert len(found.mlp_effects) == 2 and found.mlp_layers and found.attention_layers
    assert found.as_record()["architecture"] == arch_modules(model).describe()
    targets = layer_targets(model, found.mlp_layers, found.attention_layers, "localized")
    request = dataclasses.replace(REQUEST, old=(old,), new=("Rome" if old != "Rome" else "London",))
    settings = resolve_settings({"lr": 0.3, **FAST})
    with get_editor("ia3-two-stage").apply(model, tok, request, targets, settings) as applied:
        assert [s.name for s in applied.stages] == ["unlearn", "learn"]
        assert applied.stages[-1].losses[-1] < applied.stages[-1].losses[0]
    assert_identical(model, before)
    assert weights_fingerprint(model) == fingerprint


@pytest.mark.parametrize("name", sorted(EXPECTED_STAGES))
@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_editor_edits_each_family_and_restores_it_bit_identical(model_type: str, name: str) -> None:
    tok = word_tokenizer()
    model = family_model(model_type, len(tok))
    before = snapshot(model)
    request = dataclasses.replace(REQUEST, subject="city of") if name in ("rome", "alphaedit") else REQUEST
    editor = get_editor(name)
    settings = resolve_settings(fast_settings(name))
    with editor.apply(model, tok, request, targets_for(editor, model, attention=(0,)), settings) as applied:
        assert [s.name for s in applied.stages] == EXPECTED_STAGES[name]
        assert applied.trainable_parameters > 0
    assert_identical(model, before)


def test_fused_experts_are_traced_and_their_layers_attention_edited_instead() -> None:
    model = family_model("mixtral", len(word_tokenizer()))
    arch = arch_modules(model)
    assert arch.mlp == () and "fused" in arch.note and "traced, not edited" in arch.describe()
    targets = layer_targets(model, [1], [0], "localized")
    assert targets.modules == ("model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj") + (
        "model.layers.1.self_attn.v_proj",
        "model.layers.1.self_attn.o_proj",
    )
    assert "attention of the MLP layers instead" in targets.rule
    with pytest.raises(MethodError, match="MLP output projection.*fused"):
        get_editor("rome").apply(model, word_tokenizer(), REQUEST, targets, resolve_settings({"name": "rome"}))


def test_a_model_introspection_cannot_read_names_its_class_and_its_own_modules() -> None:
    transformers = pytest.importorskip("transformers")
    model = transformers.MambaForCausalLM(
        transformers.MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4)
    )
    with pytest.raises(UnsupportedArchitecture) as caught:
        arch_modules(model)
    message = str(caught.value)
    assert "MambaForCausalLM" in message and "'mamba'" in message and "no attention block" in message
    assert "target_modules: [backbone.layers.1.mixer." in message and "model.layers.4" not in message


def test_the_subject_gate_scales_a_module_that_sees_the_batch_as_one_token_list() -> None:
    from pytest_factedit.edit.gate import SubjectGate

    gate = SubjectGate([[5]])
    gate.mask = gate.positions(torch.tensor([[1, 5, 7], [5, 2, 3]]))[..., None]
    scaled = gate.scale(torch.ones(6, 4), torch.full((4,), 2.0))  # a shared expert's input: [2 rows x 3 tokens, d]
    assert scaled[:, 0].tolist() == [1.0, 2.0, 1.0, 2.0, 1.0, 1.0]


def test_the_heatmap_header_shows_what_introspection_chose() -> None:
    from pytest_factedit.report.heatmap import heatmap_svg, render_heatmap

    tok = word_tokenizer()
    model = family_model("gpt_neox", len(tok))
    old, answer = _base_answer(model, tok)
    record = localize(model, tok, FactPrompts((PROMPT,), "Eiffel Tower", old, answer)).as_record()
    header = "layers: gpt_neox.layers.N (introspection): MLP mlp.dense_h_to_4h, mlp.dense_4h_to_h"
    assert header in render_heatmap(record, width=400)
    assert header in heatmap_svg(record)


def test_the_cli_answers_an_unreadable_architecture_with_its_modules_not_a_traceback(tmp_path, capsys) -> None:
    transformers = pytest.importorskip("transformers")
    from pytest_factedit.cli import main

    tok = word_tokenizer()
    folder = tmp_path / "mamba"
    config = transformers.MambaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, state_size=4)
    transformers.MambaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    capsys.readouterr()
    case = tmp_path / "eiffel.yaml"
    case.write_text(
        f"subject: Eiffel Tower\nprompts: ['{PROMPT}']\nold: Paris\nnew: Rome\n"
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n"
    )
    assert main(["localize", str(case), "--model", str(folder), "--device", "cpu", "--png", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "MambaForCausalLM" in err and "backbone.layers.1.mixer." in err
    assert "Traceback" not in err
