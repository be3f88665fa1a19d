"""Training in bf16 (`train_precision: bfloat16`): weights cast once and put back, the LM head's bf16 copy,
and the base model's decodes in the precision it was loaded in."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import get_editor, resolve_settings
from pytest_factedit.edit.objectives import objective_base_decodes
from pytest_factedit.model.decoding import DecodeRow
from pytest_factedit.model.precision import (
    autocast_head_weight,
    bf16_autocast,
    bf16_head_weight,
    loaded_precision,
    training_precision,
)
from pytest_factedit.model.probe_cache import base_decode
from pytest_factedit.model.targets import layer_targets

from .tiny import REQUEST, assert_identical, snapshot, tiny_model, word_tokenizer


def _linear_weights(model) -> dict[str, object]:
    return {name: module.weight for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def test_loaded_precision_puts_the_loaded_weights_back_for_its_block_and_the_copies_after() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    loaded = _linear_weights(model)
    with bf16_autocast(model, "cpu"):
        cast = _linear_weights(model)
        decoder_weights = [name for name in cast if name != "lm_head"]
        assert all(cast[name].dtype == torch.bfloat16 for name in decoder_weights)
        assert torch.is_autocast_enabled("cpu")
        with loaded_precision(model):
            assert _linear_weights(model) == loaded  # the same Parameter objects
            assert not torch.is_autocast_enabled("cpu")
        assert all(_linear_weights(model)[name] is cast[name] for name in cast)
        assert torch.is_autocast_enabled("cpu")
    assert all(_linear_weights(model)[name] is loaded[name] for name in loaded)
    with loaded_precision(model):  # outside any training precision: nothing to change
        assert _linear_weights(model) == loaded


def test_the_base_model_decodes_the_same_tokens_inside_a_bf16_training_precision() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=4)
    rows = [DecodeRow(tuple(tok(p)["input_ids"]), 4, False) for p in (*REQUEST.prompts, *REQUEST.held_out)]
    outside = base_decode(model, tok, rows)
    with training_precision(model, "bfloat16"):
        inside = base_decode(model, tok, rows)
    assert [d.tokens for d in inside] == [d.tokens for d in outside]


def test_the_head_copy_is_made_once_per_weight_version_and_only_under_autocast() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    assert autocast_head_weight(model) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = autocast_head_weight(model)
        assert first is not None and first.dtype == torch.bfloat16
        assert torch.equal(first, model.lm_head.weight.detach().to(torch.bfloat16))
        assert autocast_head_weight(model) is first
    with torch.no_grad():
        model.lm_head.weight.mul_(2)  # a new version of the weight: a new copy
    changed = bf16_head_weight(model)
    assert changed is not first
    assert torch.equal(changed, model.lm_head.weight.detach().to(torch.bfloat16))


def test_the_subject_gated_editor_trains_in_bf16_and_leaves_the_model_as_loaded() -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=4)
    before, weights = snapshot(model), _linear_weights(model)
    fast = {"lr": 0.3, "learn_max_steps": 8, "unlearn_max_steps": 8, "guard_tokens": 1}
    settings, bf16 = resolve_settings(fast), resolve_settings({**fast, "train_precision": "bfloat16"})
    editor = get_editor("ia3-two-stage")
    own, own_bf16 = editor.settings_class.of(settings), editor.settings_class.of(bf16)
    assert objective_base_decodes(tok, REQUEST, own_bf16) == objective_base_decodes(tok, REQUEST, own)
    applied = editor.apply(model, tok, REQUEST, layer_targets(model, [1, 2], [3], "test"), bf16)
    try:
        learn = applied.stages[-1]
        assert learn.steps > 0 and learn.losses[-1] < learn.losses[0]
        assert all(module.weight is weights[name] for name, module in model.named_modules() if name in weights)
        assert all(module.weight.dtype == torch.float32 for module in model.modules() if hasattr(module, "weight"))
    finally:
        applied.remove()
    assert_identical(model, before)


def test_a_sequence_of_edits_trained_in_bf16_runs_and_leaves_the_loaded_weights() -> None:
    from pytest_factedit.run.many import run_sequence

    from .test_sequence_checkpoint import FAST, PLACED, two_case_run

    lm, cases, _ = two_case_run()
    weights = _linear_weights(lm.model)
    settings = resolve_settings({**FAST, **PLACED, "train_precision": "bfloat16"})
    result = run_sequence(lm, cases, lambda _case: settings)
    assert [o.status for o in result.outcomes] == ["ran", "ran"]
    assert all(o.answers for o in result.outcomes)
    assert all(module.weight is weights[name] for name, module in lm.model.named_modules() if name in weights)


def test_auto_trains_in_bf16_only_where_the_cpu_has_bf16_units(monkeypatch) -> None:
    from pytest_factedit.model import precision

    model = tiny_model("llama", len(word_tokenizer()))
    assert not precision.trains_in_bf16(model, "model") and precision.trains_in_bf16(model, "bfloat16")
    for units in (True, False):
        monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda units=units: units)
        assert precision.trains_in_bf16(model, "auto") is units
        context = precision.training_precision(model, "auto")
        with context:
            assert torch.is_autocast_enabled("cpu") is units


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "kernels", "onednn_cap", "expected"),
    [
        (True, False, "AVX2", None, True),  # AMX (ATen's kernels do not run the products oneDNN runs)
        (True, True, "AVX512", "AVX2", False),  # AMX held to AVX2 in oneDNN: its bf16 products run on slow code
        (True, True, "AVX512", "avx512_core_amx", True),  # a cap at or above AMX, in any case
        (True, False, "AVX512", "AVX512_CORE_BF16", False),  # the cap below AMX, no AVX-512 BF16
        (True, True, "AVX512", "AVX512_CORE_BF16", True),  # the cap below AMX, AVX-512 BF16 left
        (False, True, "AVX512", None, True),  # AVX-512 BF16, e.g. AMD Zen 4
        (False, True, "AVX512", "ALL", True),
        (False, True, "AVX512", "AVX512_CORE", False),  # AVX-512 without its bf16 instructions
        (False, True, "AVX2", None, False),  # the same CPU held to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)
        (False, False, "AVX2", None, False),  # an AVX2-only CPU
    ],
)
def test_bf16_units_are_amx_or_avx512_bf16_that_the_kernels_may_use(
    monkeypatch, amx, avx512_bf16, kernels, onednn_cap, expected
):
    from pytest_factedit.model.precision import cpu_has_bf16_units

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn_cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_cap)
    assert cpu_has_bf16_units() is expected


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_localization_on_amx_held_to_avx2_in_onednn_stays_in_the_model_dtype(monkeypatch, variable):
    from pytest_factedit.model.precision import precision_context

    model = tiny_model("llama", len(word_tokenizer()))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert precision_context(model, "auto")[1] == "bfloat16 (autocast, CPU AMX)"
    monkeypatch.setenv(variable, "AVX2")
    assert precision_context(model, "auto")[1] == "float32"
