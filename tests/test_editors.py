"""Every registered editor on a tiny random-weight model: trains, can be switched off, restores the base."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import get_editor, method_names, resolve_settings
from pytest_factedit.edit.base import EditRequest
from pytest_factedit.errors import MethodError
from pytest_factedit.model.targets import all_layer_targets, all_weight_targets, layer_targets

from .tiny import REQUEST, tiny_model, word_tokenizer

EXPECTED_STAGES = {
    "ia3-two-stage": ["unlearn", "learn"],
    "ia3": ["learn"],
    "ia3-all-layers": ["unlearn", "learn"],
    "lora": ["learn"],
    "full-ft": ["learn"],
    "rome": ["value"],
    "alphaedit": ["value"],
    "ft-m": ["learn"],
}
# A tiny random model's values are small and its early tokens barely reach the last: the key-value editors
# get a loose clamp and a subject that ends the prompt (tests/test_key_value_editors.py says why).
KEY_VALUE = {"clamp_norm": 1000.0, "value_decay": 0.0, "value_lr": 0.05, "generated_prefixes": 1}
FAST = {"unlearn_max_steps": 3, "learn_max_steps": 4, "guard_tokens": 1}
LEARN_ONLY = {"learn_max_steps": 4, "guard_tokens": 1}


def fast_settings(name: str) -> dict:
    """Few steps, in the keys `name` reads: the key-value editors have no training loop, and an editor
    without an unlearn stage no unlearn settings; a learning rate big enough to move a tiny model."""
    if name in ("rome", "alphaedit"):
        return {"name": name, **KEY_VALUE}
    lr = {"full-ft": 1e-2, "lora": 5e-2, "ft-m": 5e-2}.get(name, 0.3)
    return {"name": name, "lr": lr, **(FAST if "unlearn" in EXPECTED_STAGES[name] else LEARN_ONLY)}


def targets_for(editor, model, mlp=(1,), attention=(2,)):
    """Where `editor` edits on a test model: every weight, every layer, or these layers."""
    if editor.scope == "all-weights":
        return all_weight_targets(model)
    if editor.scope == "all-layers":
        return all_layer_targets(model)
    return layer_targets(model, list(mlp), list(attention), "test")


def logits(model, tok):
    with torch.no_grad():
        return model(**tok(list(REQUEST.prompts), return_tensors="pt")).logits


def test_the_registry_lists_every_method() -> None:
    assert set(method_names()) == set(EXPECTED_STAGES)


@pytest.mark.parametrize("name", sorted(EXPECTED_STAGES))
def test_editor_changes_the_model_and_restores_it_bit_identical(name: str) -> None:
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base_logits = logits(model, tok)
    editor = get_editor(name)
    request = dataclasses.replace(REQUEST, subject="city of") if name in ("rome", "alphaedit") else REQUEST
    settings = resolve_settings(fast_settings(name))
    applied = editor.apply(model, tok, request, targets_for(editor, model), settings)
    try:
        assert [s.name for s in applied.stages] == EXPECTED_STAGES[name]
        assert applied.trainable_parameters > 0
        learn = applied.stages[-1]
        assert learn.steps > 0 and learn.losses[-1] < learn.losses[0]
        assert not torch.equal(logits(model, tok), base_logits)  # the edit is live
        with applied.disabled():
            torch.testing.assert_close(logits(model, tok), base_logits, rtol=0, atol=0)
        assert not torch.equal(logits(model, tok), base_logits)  # and back on afterwards
        assert all(not p.requires_grad for p in model.parameters())
    finally:
        applied.remove()
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_full_fine_tuning_defaults_to_the_foil_settings_unless_overridden() -> None:
    settings = resolve_settings({"name": "full-ft"})
    assert (settings.lr, settings.kl_weight, settings.guard_weight) == (2e-5, 0.0, 0.0)
    assert resolve_settings({"name": "full-ft", "lr": 1e-4}).lr == 1e-4
    assert resolve_settings({}, {"name": "full-ft"}).lr == 2e-5  # --factedit-method picks the defaults too
    assert resolve_settings({"name": "lora"}).lr == 2e-3
    assert resolve_settings({}).lr == 3e-2


def test_unknown_method_suggests_the_closest() -> None:
    with pytest.raises(MethodError, match="did you mean 'full-ft'"):
        resolve_settings({"name": "full_ft"})


def _two_cases(model, tok, method=None):
    from pytest_factedit.cases import Control, FactCase
    from pytest_factedit.model.probe import greedy_continuations

    prompts = ["The Eiffel Tower is located in the city of", "The Colosseum is located in the city of"]
    olds = [a.split()[0] for a in greedy_continuations(model, tok, prompts, [1, 1])]
    news = ["Rome" if o != "Rome" else "London" for o in olds]
    return [
        FactCase(
            id=f"c{i}",
            subject=subject,
            prompts=(prompt,),
            old=(old,),
            new=(new,),
            paraphrases=(f"Where is the {subject}? In the city of",),
            controls=(Control("Big Ben is a clock tower in the city of", ("London",)),),
            method=method or {},
        )
        for i, (subject, prompt, old, new) in enumerate(zip(["Eiffel Tower", "Colosseum"], prompts, olds, news))
    ]


def test_sequential_edits_merge_one_after_another_and_the_base_comes_back() -> None:
    from types import SimpleNamespace

    from pytest_factedit.run.many import run_sequence

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lm = SimpleNamespace(model=model, tokenizer=tok, dtype="float32")
    cases = _two_cases(model, tok)
    settings = resolve_settings({"lr": 0.3, **FAST, "localize": "none"})
    result = run_sequence(lm, cases, lambda case: settings)
    ran = [o.case.id for o in result.outcomes if o.status == "ran"]
    assert ran[0] == "c0"  # the second fact may already have moved under the first edit: then it is skipped
    assert all(o.status in ("ran", "skipped") for o in result.outcomes)
    assert result.metrics["edits_retained"].samples == len(ran) and 0.0 <= result.metrics["edits_retained"].value <= 1.0
    assert set(result.retained_by_case) == set(ran)
    assert result.outcomes[0].base_restored is None  # merged, not removed: restoring is the sequence's job
    assert result.base_restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not any("ia3" in n for n, _ in model.named_modules())


def test_joint_objectives_train_every_fact_and_never_retain_another_facts_texts() -> None:
    from pytest_factedit.edit.objectives import build_objectives

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    other = EditRequest(
        subject="Colosseum",
        prompts=("The Colosseum is located in the city of",),
        old=("Rome",),
        new=("Paris",),
        held_out=REQUEST.prompts,
    )
    first = EditRequest(**{**REQUEST.__dict__, "held_out": REQUEST.held_out + other.prompts})
    settings = resolve_settings({**FAST})
    one = build_objectives(model, tok, first, settings)
    both = build_objectives(model, tok, [first, other], settings)
    assert len(both.learn_rows) == 2 * len(one.learn_rows) and len(both.unlearn_rows) == 2 * len(one.unlearn_rows)
    assert len(set(both.kl_rows)) == len(both.kl_rows)  # shared retention rows are kept once
    kl_texts = {tok.decode(list(r.ids)) for r in both.kl_rows}
    assert not any("Colosseum is located" in t or "Eiffel Tower is located" in t for t in kl_texts)
    with torch.no_grad():
        from pytest_factedit.edit.batching import tail_logprobs

        logps = tail_logprobs(model, both.unlearn_rows, both.pad_id)
        half = len(one.unlearn_rows)
        joint_loss, _ = both.unlearn_goal(logps, None)
        first_loss, _ = one.unlearn_goal(logps[:half], None)
        second_only, _ = both.unlearn_goal(logps[half:], [1])  # rows of fact 1 alone, as a rotating step gives
        second_loss, _ = build_objectives(model, tok, other, settings).unlearn_goal(logps[half:], None)
    assert joint_loss != first_loss  # the second fact's rows count too
    assert both.fact_sizes == (half, half) and torch.allclose(second_only, second_loss)


def test_batch_mode_trains_one_adapter_on_every_case_and_restores_the_base() -> None:
    from types import SimpleNamespace

    from pytest_factedit.run.many import run_batch

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lm = SimpleNamespace(model=model, tokenizer=tok, dtype="float32")
    cases = _two_cases(model, tok)
    settings = resolve_settings(
        {"lr": 0.3, **FAST, "localize": "random", "mlp_layers": 1, "attention_layers": 1, "batch_facts_per_step": 1}
    )
    result = run_batch(lm, cases, lambda case: settings)
    assert [o.status for o in result.outcomes] == ["ran", "ran"]
    assert result.batch["cases"] == ["c0", "c1"] and result.batch["stages"][0]["name"] == "unlearn"
    assert result.batch["stages"][1]["steps"] <= 2 * FAST["learn_max_steps"]  # the cap per turn, two turns
    union = set(result.batch["target_modules"])
    assert all(set(o.targets.modules) == union for o in result.outcomes)  # one adapter over every case's layers
    assert result.metrics["edits_retained"].samples == 2 and set(result.retained_by_case) == {"c0", "c1"}
    assert result.retained_by_case["c0"] == result.outcomes[0].metrics["new_fact_accuracy"].value
    assert result.metrics["controls_retained"].samples in (0, 1)
    assert all(
        o.timings["batch_train_seconds"] == result.outcomes[0].timings["batch_train_seconds"] for o in result.outcomes
    )
    assert result.base_restored and all(o.base_restored for o in result.outcomes)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not any("ia3" in n for n, _ in model.named_modules())


def test_batch_mode_reports_a_case_asking_for_another_method_and_runs_the_rest() -> None:
    from types import SimpleNamespace

    from pytest_factedit.run.many import run_batch

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    lm = SimpleNamespace(model=model, tokenizer=tok, dtype="float32")
    cases = _two_cases(model, tok)
    chosen = {
        "c0": resolve_settings({**FAST, "localize": "none"}),
        "c1": resolve_settings({**LEARN_ONLY, "localize": "none", "name": "lora"}),
    }
    result = run_batch(lm, cases, lambda case: chosen[case.id])
    assert [o.status for o in result.outcomes] == ["ran", "error"]
    assert "one method" in result.outcomes[1].reason and "'lora'" in result.outcomes[1].reason
    assert result.batch["cases"] == ["c0"] and result.base_restored


@pytest.mark.parametrize("reach", [False, True])
def test_a_batch_stage_rotates_through_the_facts_and_caps_steps_per_turn(reach) -> None:
    from pytest_factedit.edit.batching import Row
    from pytest_factedit.edit.objectives import Objectives
    from pytest_factedit.edit.training import train_stage

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    rows = [Row(tuple(tok(p).input_ids), 1) for p in ("the city of", "a tower in", "the river flows")]
    param = next(model.parameters()).requires_grad_(True)
    seen: list[list[int]] = []

    def goal(logps, facts):
        seen.append(list(facts))
        assert len(logps) == len(facts)  # only the rows of the facts in this step
        return sum(lp.sum() for lp in logps) * 0.0, reach

    settings = resolve_settings({"batch_facts_per_step": 1, "kl_weight": 0, "learn_max_steps": 2})
    goals = Objectives(rows, rows, [], [], goal, goal, tok.pad_token_id, fact_sizes=(1, 1, 1))
    report = train_stage("learn", model, [param], goals, settings)
    if reach:  # every fact must have its turn before the stage may stop
        assert seen == [[0], [1], [2]] and report.reached_goal
    else:  # the cap is 2 steps per fact's turn: 6 steps, then the final check
        assert seen == [[0], [1], [2]] * 2 + [[0]] and report.steps == 6 and not report.reached_goal


def test_unlearn_pushes_each_old_alias_down_where_it_departs_from_new() -> None:
    """Old "Paris London" and new "Paris Rome" begin alike: the unlearn stage must not push down "Paris",
    which the learn stage then has to teach back (google-founder: "Larry Page" -> "Larry Ellison")."""
    from pytest_factedit.edit.objectives import build_objectives, unlearn_targets
    from pytest_factedit.model.text import answer_token_ids

    tok = word_tokenizer()
    word = {w: answer_token_ids(tok, w)[0] for w in ("Paris", "London", "Rome")}
    shared = EditRequest(**{**REQUEST.__dict__, "old": ("Paris London", "London", "Paris"), "new": ("Paris Rome",)})
    new_ids = answer_token_ids(tok, "Paris Rome")
    assert unlearn_targets(tok, shared, new_ids) == (1, {0: [word["London"]], 1: [word["London"]]})
    assert unlearn_targets(tok, REQUEST, answer_token_ids(tok, "Rome")) == (0, {0: [word["Paris"]]})
    prefix_only = EditRequest(**{**shared.__dict__, "old": ("Paris",)})  # old is where new begins: nothing to push
    assert unlearn_targets(tok, prefix_only, new_ids) == (0, {})

    model = tiny_model("llama", len(tok), layers=2)
    objectives = build_objectives(model, tok, shared, resolve_settings({**FAST}))
    assert all(r.ids[-1] == word["Paris"] and r.tail == 2 for r in objectives.unlearn_rows)
    plain = build_objectives(model, tok, REQUEST, resolve_settings({**FAST}))
    assert all(r.ids[-1] != word["Paris"] and r.tail == 1 for r in plain.unlearn_rows)

    def rows(p_london_after_paris: float) -> list[torch.Tensor]:
        probs = torch.full((2, len(tok)), 1e-4)
        probs[0, word["Paris"]] = 0.9  # "Paris" first is the new answer's own start: free to stay likely
        probs[1, word["Rome"]] = 0.9
        probs[1, word["London"]] = p_london_after_paris
        return [(probs / probs.sum(-1, keepdim=True)).log() for _ in objectives.unlearn_rows]

    high_loss, reached = objectives.unlearn_goal(rows(0.9), None)
    assert not reached
    low_loss, reached = objectives.unlearn_goal(rows(0.001), None)
    assert reached and low_loss < high_loss
    nothing = build_objectives(model, tok, prefix_only, resolve_settings({**FAST}))
    assert nothing.unlearn_goal(rows(0.9)[:1] * len(nothing.unlearn_rows), None)[1]
