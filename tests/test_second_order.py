"""`kl_form: second-order`: a retention row's KL to the base model as a quadratic form in its final hidden
state, so that a training step runs the LM head only on the rows of its goal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_factedit.cases import load_case
from pytest_factedit.edit import second_order
from pytest_factedit.edit.second_order import second_order_references
from tests.test_same_subject import CASE, write


def exact_kl(weight: torch.Tensor, hidden: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    base = torch.log_softmax(hidden @ weight.T, -1)
    now = torch.log_softmax(changed @ weight.T, -1)
    return (base.exp() * (base - now)).sum(-1).mean()


def full_quadratic(weight: torch.Tensor, hidden: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """½ Δᵀ F Δ with F the covariance of the head's rows under each position's whole distribution."""
    probs = torch.softmax(hidden @ weight.T, -1)
    projected = delta @ weight.T  # [positions, vocab]
    mean = (probs * projected).sum(-1, keepdim=True)
    return 0.5 * (probs * (projected - mean) ** 2).sum(-1).mean()


def test_the_form_is_the_kl_to_second_order() -> None:
    torch.manual_seed(0)
    weight, hidden = torch.randn(50, 16), torch.randn(3, 16)
    logp = torch.log_softmax(hidden @ weight.T, -1)
    (reference,) = second_order_references(weight, [logp], [hidden])
    assert float(reference.kl(hidden)) == 0.0
    direction = torch.randn(3, 16)
    errors = []
    for scale in (0.3, 0.1, 0.03):
        changed = hidden + scale * direction
        exact = float(exact_kl(weight.double(), hidden.double(), changed.double()))
        errors.append(abs(float(reference.kl(changed)) - exact) / exact)
    assert errors[2] < 0.01 and errors[2] < errors[1] / 3 < errors[0] / 9  # third order: shrinks with the change


def test_fewer_held_tokens_never_exceed_the_whole_distributions_form(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    weight, hidden = torch.randn(200, 16), torch.randn(4, 16) * 0.3  # flat distributions: much mass left over
    logp = torch.log_softmax(hidden @ weight.T, -1)
    monkeypatch.setattr(second_order, "HELD_TOKENS", 8)
    (reference,) = second_order_references(weight, [logp], [hidden])
    assert reference.factor.shape == (4, 9, 16)  # 8 tokens and the rest
    for seed in range(5):
        delta = torch.randn(4, 16, generator=torch.Generator().manual_seed(seed))
        held, whole = float(reference.kl(hidden + delta)), float(full_quadratic(weight, hidden, delta))
        assert 0 < held <= whole * (1 + 1e-5)
        assert held > 0.05 * whole  # the rest of the vocabulary, at its mean row, still counts


def test_several_rows_are_split_back_in_order() -> None:
    torch.manual_seed(2)
    weight = torch.randn(30, 8)
    hiddens = [torch.randn(n, 8) for n in (1, 3, 2)]
    logps = [torch.log_softmax(h @ weight.T, -1) for h in hiddens]
    together = second_order_references(weight, logps, hiddens)
    alone = [second_order_references(weight, [lp], [h])[0] for lp, h in zip(logps, hiddens)]
    assert [r.factor.shape[0] for r in together] == [1, 3, 2]
    for a, b in zip(together, alone):
        assert torch.allclose(a.factor, b.factor, atol=1e-5) and torch.equal(a.hidden, b.hidden)


def _edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> tuple[list[int], list[tuple[str, int]]]:
    """(rows of each LM head product during training, stage steps) of a gated edit on the tiny model."""
    from pytest_factedit.edit import batching, get_editor, resolve_settings, training
    from pytest_factedit.edit.retention import FACT_TEXTS, NEUTRAL_TEXTS, SUBJECT_TEMPLATES
    from pytest_factedit.model.targets import all_layer_targets
    from pytest_factedit.run.case import edit_request, held_out_texts
    from tests.tiny import frozen, piece_tokenizer, tiny_model

    case = load_case(write(tmp_path, CASE))
    tok = piece_tokenizer(NEUTRAL_TEXTS + FACT_TEXTS + SUBJECT_TEMPLATES + tuple(held_out_texts(case)))
    settings = resolve_settings(
        {"subject_rows": 4, "unlearn_max_steps": 3, "learn_max_steps": 4, "lr": 0.1, "kl_form": form}
    )
    model = frozen(tiny_model("llama", len(tok)))
    head_rows: list[int] = []
    original = batching.logits_from_hidden
    training_now = [False]

    def recording(model, hidden, *args, **kwargs):
        if training_now[0]:
            head_rows.append(hidden.shape[0])
        return original(model, hidden, *args, **kwargs)

    stage = training.train_stage

    def in_training(*args, **kwargs):
        training_now[0] = True
        try:
            return stage(*args, **kwargs)
        finally:
            training_now[0] = False

    from pytest_factedit.edit import subject_gains

    with monkeypatch.context() as patch:
        patch.setattr(batching, "logits_from_hidden", recording)
        patch.setattr(subject_gains, "train_stage", in_training)
        handle = get_editor("ia3-two-stage").apply(model, tok, edit_request(case), all_layer_targets(model), settings)
    with handle:
        steps = [(s.name, s.steps) for s in handle.stages]
    return head_rows, steps


def test_a_step_runs_the_head_only_on_its_goal_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full_rows, full_steps = _edit(tmp_path, monkeypatch, "full")
    held_rows, held_steps = _edit(tmp_path, monkeypatch, "second-order")
    assert full_rows and held_rows
    assert sum(s for _, s in held_steps) > 0
    # the goal's rows alone: at most the learn rows' positions, fewer than with the retention rows beside them
    assert max(held_rows) < min(full_rows)


def test_a_head_that_is_not_one_fixed_linear_map_keeps_the_full_kl() -> None:
    from pytest_factedit.edit.second_order import head_is_linear_and_fixed
    from tests.tiny import tiny_model

    model = tiny_model("llama", 40)
    assert head_is_linear_and_fixed(model)
    model.get_output_embeddings().weight.requires_grad_(True)  # a stage that trains the head
    assert not head_is_linear_and_fixed(model)
    model.get_output_embeddings().weight.requires_grad_(False)
    model.config.final_logit_softcapping = 30.0
    assert not head_is_linear_and_fixed(model)


def test_a_stage_that_trains_the_head_refuses_second_order_references() -> None:
    from pytest_factedit.edit.objectives import Objectives
    from pytest_factedit.edit.training import check_head_fixed
    from tests.tiny import tiny_model

    model = tiny_model("llama", 40)
    weight = model.get_output_embeddings().weight
    (reference,) = second_order_references(weight, [torch.log_softmax(torch.randn(1, 40), -1)], [torch.randn(1, 32)])
    goals = Objectives(
        [], [], [], [reference], lambda lp, f: (torch.zeros(()), True), lambda lp, f: (torch.zeros(()), True), 0
    )
    check_head_fixed(model, [p for n, p in model.named_parameters() if "mlp" in n], goals)
    with pytest.raises(ValueError, match="trains it"):
        check_head_fixed(model, [weight], goals)
