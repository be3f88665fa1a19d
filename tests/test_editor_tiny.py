"""The two-stage IA³ editor on tiny random-weight models: attaches where told, learns, restores the base."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import get_editor, resolve_settings
from pytest_factedit.model.probe import greedy_continuations
from pytest_factedit.model.targets import all_layer_targets, all_weight_targets, explicit_targets, layer_targets

from .tiny import REQUEST, assert_identical, snapshot, tiny_model, word_tokenizer


@pytest.mark.parametrize("kind", ["phi3", "llama", "gpt2"])
def test_two_stage_edit_trains_and_restores_base_bit_identical(kind: str) -> None:
    tok = word_tokenizer()
    model = tiny_model(kind, len(tok), layers=4)
    before = snapshot(model)
    base_answer = greedy_continuations(model, tok, REQUEST.prompts, [2])
    settings = resolve_settings(
        {"lr": 0.3, "learn_max_steps": 8, "unlearn_max_steps": 8, "guard_tokens": 1, "gain_positions": "every"}
    )
    applied = get_editor("ia3-two-stage").apply(
        model, tok, REQUEST, layer_targets(model, [1, 2], [3], "test"), settings
    )
    try:
        assert [s.name for s in applied.stages] == ["unlearn", "learn"]
        learn = applied.stages[1]
        assert learn.steps > 0 and learn.losses[-1] < learn.losses[0]  # gradients reach the IA³ vectors
        assert applied.trainable_parameters > 0
        assert any(".ia3_l." in name for name, _ in model.named_parameters())
    finally:
        applied.remove()
    assert_identical(model, before)
    assert not any("ia3" in name for name, _ in model.named_modules())
    assert greedy_continuations(model, tok, REQUEST.prompts, [2]) == base_answer


def test_phi3_fused_modules_get_ia3_vectors() -> None:
    tok = word_tokenizer()
    model = tiny_model("phi3", len(tok), layers=2)
    before = snapshot(model)
    names = [
        "model.layers.1.self_attn.qkv_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.0.mlp.gate_up_proj",
        "model.layers.0.mlp.down_proj",
    ]
    targets = explicit_targets(model, names, ["model.layers.0.mlp.down_proj"])
    settings = resolve_settings({"unlearn_max_steps": 2, "learn_max_steps": 2, "gain_positions": "every"})
    applied = get_editor("ia3-two-stage").apply(model, tok, REQUEST, targets, settings)
    try:
        vectors = {n: p.shape for n, p in model.named_parameters() if "ia3_l" in n}
        qkv = [s for n, s in vectors.items() if "qkv_proj.ia3_l.learn" in n]
        gate_up = [s for n, s in vectors.items() if "gate_up_proj.ia3_l.learn" in n]
        down = [s for n, s in vectors.items() if "down_proj.ia3_l.unlearn" in n]
        # fused qkv: output scaling over q, k and v together; gate_up: 2 x intermediate; down: input scaling
        assert qkv == [torch.Size([3 * 32, 1])]
        assert gate_up == [torch.Size([2 * 64, 1])]
        assert down == [torch.Size([1, 64])]
        assert sum(s.numel() for s in vectors.values()) == applied.trainable_parameters
    finally:
        applied.remove()
    assert_identical(model, before)


def test_edit_is_removed_even_when_training_fails(monkeypatch) -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    before = snapshot(model)
    from pytest_factedit.edit import peft_staged

    def boom(*args, **kwargs):
        raise RuntimeError("stage failed")

    from pytest_factedit.edit import subject_gains

    monkeypatch.setattr(peft_staged, "train_stage", boom)
    monkeypatch.setattr(subject_gains, "train_stage", boom)
    for gains in ("every", "subject"):
        with pytest.raises(RuntimeError, match="stage failed"):
            settings = resolve_settings({"gain_positions": gains})
            get_editor("ia3-two-stage").apply(model, tok, REQUEST, all_layer_targets(model), settings)
        assert not any("ia3" in name for name, _ in model.named_modules())
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        assert_identical(model, before)


def test_layer_targets_map_layers_to_each_family_s_modules() -> None:
    tok = word_tokenizer()
    gpt2 = tiny_model("gpt2", len(tok), layers=3)
    targets = layer_targets(gpt2, [2, 0], [1], "test")
    assert targets.modules == (
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
        "transformer.h.2.mlp.c_fc",
        "transformer.h.2.mlp.c_proj",
        "transformer.h.1.attn.c_attn",
        "transformer.h.1.attn.c_proj",
    )
    assert targets.feedforward == ("transformer.h.0.mlp.c_proj", "transformer.h.2.mlp.c_proj")
    assert targets.layers == (0, 1, 2)
    llama = tiny_model("llama", len(tok), layers=2)
    assert len(all_layer_targets(llama).modules) == 2 * 4


def test_explicit_targets_must_exist() -> None:
    from pytest_factedit.errors import UnsupportedArchitecture

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    with pytest.raises(UnsupportedArchitecture, match="does not have"):
        explicit_targets(model, ["model.layers.9.mlp.down_proj"], [])


@pytest.mark.parametrize("kind", ["phi3", "llama", "gpt2"])
def test_steps_entering_above_the_lowest_adapter_match_a_full_pass_values_and_gradients(kind: str) -> None:
    from peft import IA3Config, get_peft_model

    from pytest_factedit.edit.batching import Row, base_tails, tail_logprobs
    from pytest_factedit.model.targets import lowest_layer

    tok = word_tokenizer()
    model = tiny_model(kind, len(tok), layers=4)
    rows = [
        Row(tuple(tok(t)["input_ids"]), 2) for t in ("The Eiffel Tower is located in", "Big Ben is a clock", "Rome")
    ]
    targets = layer_targets(model, [2, 3], [2], "test")
    assert lowest_layer(model, targets) == 2
    with torch.no_grad():
        reference, _, frozen = base_tails(model, rows, 0, 2)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(reference, tail_logprobs(model, rows, 0)))
    assert frozen is not None and frozen.layer == 2
    peft = get_peft_model(
        model, IA3Config(target_modules=list(targets.modules), feedforward_modules=list(targets.feedforward))
    )
    inner = peft.get_base_model()
    vectors = [p for n, p in inner.named_parameters() if "ia3_l" in n]
    with torch.no_grad():
        for v in vectors:
            v.mul_(torch.rand_like(v) + 0.5)  # an adapter that changes the outputs

    def run(with_frozen: bool) -> tuple[list, list]:
        for v in vectors:
            v.grad = None
        out = tail_logprobs(inner, rows, 0, frozen if with_frozen else None)
        sum(o[:, :5].sum() for o in out).backward()
        return [o.detach() for o in out], [v.grad.clone() for v in vectors]

    full, full_grads = run(False)
    skipped, skipped_grads = run(True)
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(full, reference))  # the adapter acts
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(full, skipped))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(full_grads, skipped_grads))
    # the stored states are what the step starts from: change them and the step's output follows
    frozen.states = {k: v * 2 for k, v in frozen.states.items()}
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(full, run(True)[0]))
    # the layers below compute again once the block is left
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, run(False)[0]))


def test_the_lowest_layer_is_unknown_for_every_weight_or_modules_outside_the_layers() -> None:
    from pytest_factedit.model.targets import all_weight_targets, lowest_layer

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=3)
    assert lowest_layer(model, layer_targets(model, [2], [1], "test")) == 1
    assert lowest_layer(model, all_weight_targets(model)) == 0
    assert lowest_layer(model, explicit_targets(model, ["lm_head", "model.layers.2.mlp.down_proj"], [])) == 0


@pytest.mark.parametrize("lengths", [[3, 3, 3], [1, 9, 2, 8, 30], [5], list(range(1, 40, 3))])
def test_length_groups_cover_every_row_once_and_cost_no_more_than_one_pass_or_one_per_row(lengths) -> None:
    from pytest_factedit.edit.batching import Row, length_groups

    rows = [Row(tuple(range(n)), 1) for n in lengths]
    groups = length_groups(rows, call_tokens=8)
    assert sorted(i for g in groups for i in g) == list(range(len(rows)))

    def cost(split):
        return sum(max(lengths[i] for i in g) * len(g) + 8 for g in split)

    assert cost(groups) <= min(cost([list(range(len(rows)))]), cost([[i] for i in range(len(rows))]))


def test_an_edit_may_change_the_lm_head_only_where_its_targets_name_it() -> None:
    """The latency timing's rule (run/probing.py: head_may_change) on real IA³ edits: MLP targets leave the head
    module alone, so the head is timed once per pair; the head among the targets (peft wraps it) does not."""
    from pytest_factedit.run.probing import head_may_change

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    settings = resolve_settings({"unlearn_max_steps": 1, "learn_max_steps": 1, "gain_positions": "every"})
    editor = get_editor("ia3-two-stage")
    with editor.apply(model, tok, REQUEST, layer_targets(model, [1], [], "test"), settings) as applied:
        assert not head_may_change(model, applied)
    head_too = explicit_targets(model, ["model.layers.1.mlp.down_proj", "lm_head"], ["model.layers.1.mlp.down_proj"])
    with editor.apply(model, tok, REQUEST, head_too, settings) as applied:
        assert type(model.get_output_embeddings()) is not torch.nn.Linear  # peft's wrapper around the head
        assert head_may_change(model, applied)
    every = resolve_settings({"name": "full-ft", "learn_max_steps": 1})
    with get_editor("full-ft").apply(model, tok, REQUEST, all_weight_targets(model), every) as applied:
        assert head_may_change(model, applied)  # every weight: the head's module among them
