"""Fault injection: an edit that leaves the model changed must never let a later case be measured on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import PROMPT, case_text

ARGS = ("-p", "no:cacheprovider", "--factedit-device", "cpu")
SECOND = "The Colosseum is located in the city of"


@pytest.fixture
def two_cases(pytester: pytest.Pytester, tiny_model_dir) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_factedit.model.probe import greedy_continuations

    folder, old = tiny_model_dir
    cases = pytester.mkdir("fact_cases")
    (cases / "a-first.yaml").write_text(case_text(old))
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    second_old = greedy_continuations(model, tok, [SECOND], [1])[0].split()[0]
    (cases / "b-second.yaml").write_text(
        case_text(second_old).replace("Eiffel Tower", "Colosseum").replace(PROMPT, SECOND)
    )
    return folder


def records(pytester: pytest.Pytester, folder: Path, run_id: str) -> dict[str, dict]:
    reports = pytester.path / "reports"
    pytester.runpytest(
        "fact_cases", "--model", str(folder), *ARGS, "--factedit-reports", str(reports), "--factedit-run-id", run_id
    )
    lines = (reports / run_id / "results.jsonl").read_text().splitlines()
    return {json.loads(line)["case_id"]: json.loads(line) for line in lines}


def flip_the_head(model) -> None:
    """A change outside every edited module: the LM head's sign (so every later answer would differ)."""
    head = model.get_output_embeddings().weight
    head.data.mul_(-1)


def test_a_change_outside_the_edited_modules_is_caught_and_the_base_reloaded(pytester, two_cases, monkeypatch):
    clean = records(pytester, two_cases, "clean")
    from pytest_factedit.edit import base, subject_gains

    faults = [1]  # the first case's edit leaves a change behind; later ones are removed cleanly

    def leaving_a_change(handle_class, model_of):  # peft adapters (every-token gains) and subject-gated gains
        remove = handle_class.remove

        def remove_but_leave_a_change(self):
            if faults and not self.removed:
                faults.pop()
                flip_the_head(model_of(self))
            return remove(self)

        monkeypatch.setattr(handle_class, "remove", remove_but_leave_a_change)

    leaving_a_change(base.AppliedEdit, lambda handle: handle.peft_model.get_base_model())
    leaving_a_change(subject_gains.SubjectGainEdit, lambda handle: handle.model)
    faulty = records(pytester, two_cases, "faulty")
    assert faulty["a-first"]["base_restored"] is False
    second = faulty["b-second"]
    assert second["base_restored"] is True  # measured on the reloaded base, and says so truthfully
    assert [a["base"] for a in second["answers"]] == [a["base"] for a in clean["b-second"]["answers"]]


def test_an_edit_that_raised_after_changing_the_model_is_caught_too(pytester, two_cases, monkeypatch):
    clean = records(pytester, two_cases, "clean")
    from pytest_factedit.edit import peft_staged, subject_gains

    train = peft_staged.train_stage
    faults = [1]

    def train_badly(stage, model, *args, **kwargs):
        if not faults:
            return train(stage, model, *args, **kwargs)
        faults.pop()
        flip_the_head(model)
        raise RuntimeError("training blew up")

    monkeypatch.setattr(peft_staged, "train_stage", train_badly)
    monkeypatch.setattr(subject_gains, "train_stage", train_badly)
    faulty = records(pytester, two_cases, "faulty")
    first = faulty["a-first"]
    assert first["status"] == "error" and "training blew up" in first["reason"]
    assert first["base_restored"] is False and "reloaded" in first["reason"]
    assert [a["base"] for a in faulty["b-second"]["answers"]] == [a["base"] for a in clean["b-second"]["answers"]]
