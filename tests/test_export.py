"""Shipping an edit: `factedit edit --save` writes peft adapters + manifest; peft alone loads them back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from .tiny import tiny_model, word_tokenizer

PROMPT = "The Eiffel Tower is located in the city of"
SECOND_PROMPT = "The Colosseum is located in the city of"


@pytest.fixture
def tiny_dir(tmp_path: Path) -> tuple[Path, str]:
    """A tiny llama saved as a local model folder, and the word it answers PROMPT with."""
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=3)
    with torch.no_grad():
        answer_id = int(model(**tok([PROMPT], return_tensors="pt")).logits[0, -1].argmax())
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, tok.decode([answer_id]).strip()


def write_case(tmp_path: Path, old: str, method: str = "ia3-two-stage", gains: str = "every") -> Path:
    new = "Rome" if old != "Rome" else "London"
    case = tmp_path / "cases" / "tower.yaml"
    case.parent.mkdir()
    case.write_text(
        f"subject: Eiffel Tower\nprompts: ['{PROMPT}']\nold: '{old}'\nnew: {new}\n"
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n"
        f"method: {{name: {method}, lr: 0.3, learn_max_steps: 8, guard_tokens: 1"
        + (f", unlearn_max_steps: 4, gain_positions: {gains}}}\n" if method == "ia3-two-stage" else "}\n")
    )
    return case


def edit_and_save(case: Path, model_dir: Path, out: Path, root: Path) -> int:
    """`factedit edit CASE --save OUT` on the tiny model, on the CPU; its exit code."""
    from pytest_factedit.cli import main

    return main(
        ["edit", str(case), "--model", str(model_dir), "--device", "cpu", "--save", str(out), "--root", str(root)]
    )


def test_saved_adapters_load_with_peft_alone_and_give_the_edited_answers(tmp_path, tiny_dir, capsys) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_factedit.model.probe import greedy_continuations

    folder, old = tiny_dir
    case = write_case(tmp_path, old)
    code = edit_and_save(case, folder, tmp_path / "shipped", tmp_path)
    out = tmp_path / "shipped" / "tower"  # DIR/<case-id>, as with --factedit-save-adapters
    printed = capsys.readouterr().out
    assert code in (0, 1), printed  # 1 = some metric missed its threshold on a random model; files still written
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["manifest_version"] == 1 and manifest["case_id"] == "tower"
    assert [a["name"] for a in manifest["adapters"]] == ["unlearn", "learn"]
    assert manifest["model"]["weights_hash"] and manifest["target_modules"]
    assert set(manifest["metrics"]) >= {"new_fact_accuracy", "forget_rate", "control_retention"}
    assert "PeftModel.from_pretrained" in manifest["load"]
    assert (out / "learn" / "adapter_config.json").is_file() and (out / "unlearn" / "adapter_config.json").is_file()

    # peft alone, as the manifest says: base weights from the folder, every stage active
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder)
    edited = PeftModel.from_pretrained(base, str(out / "unlearn"), adapter_name="unlearn")
    edited.load_adapter(str(out / "learn"), adapter_name="learn")
    edited.base_model.set_adapter(["unlearn", "learn"])
    edited.eval()
    from pytest_factedit.model.text import answer_token_budget

    budget = answer_token_budget(tok, [old, manifest["new"][0]])
    recorded = [a for a in manifest["answers"] if a["group"] == "prompts"]
    assert greedy_continuations(edited, tok, [a["prompt"] for a in recorded], [budget]) == [
        a["edited"] for a in recorded
    ]
    with edited.disable_adapter():
        assert greedy_continuations(edited, tok, [PROMPT], [budget]) == [recorded[0]["base"]]
    assert recorded[0]["edited"] != recorded[0]["base"]


@pytest.mark.parametrize("reach", ["subject-sentence", "after-subject"])
def test_subject_gated_gains_ship_with_a_manifest_and_load_back(tmp_path, tiny_dir, capsys, reach) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_factedit.model.probe import greedy_continuations
    from pytest_factedit.model.text import answer_token_budget
    from pytest_factedit.report.manifest import load_edit

    folder, old = tiny_dir
    case = write_case(tmp_path, old, gains=reach)
    code = edit_and_save(case, folder, tmp_path / "shipped", tmp_path)
    assert code in (0, 1), capsys.readouterr().out
    out = tmp_path / "shipped" / "tower"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["name"] for a in manifest["adapters"]] == ["subject-gains"]
    assert "load_subject_gains(base, DIR + '/subject-gains')" in manifest["load"]
    assert (out / "subject-gains" / "gains.safetensors").is_file() and (out / "subject-gains" / "gate.json").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder)
    recorded = [a for a in manifest["answers"] if a["group"] == "prompts"]
    budget = answer_token_budget(tok, [old, manifest["new"][0]])
    with load_edit(base, out) as edit:
        assert edit.gate.reach == reach and len(edit.gate.word_flags) == len(tok)  # the gate as trained
        assert greedy_continuations(edit.model, tok, [a["prompt"] for a in recorded], [budget]) == [
            a["edited"] for a in recorded
        ]
    assert greedy_continuations(base, tok, [PROMPT], [budget]) == [recorded[0]["base"]]


def test_full_fine_tuning_has_nothing_to_save(tmp_path, tiny_dir, capsys) -> None:
    folder, old = tiny_dir
    case = write_case(tmp_path, old, method="full-ft")
    edit_and_save(case, folder, tmp_path / "out", tmp_path)
    assert "not saved: method full-ft changes the weights in place" in capsys.readouterr().out
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_sequential_mode_runs_the_cases_in_order_and_checks_them_at_the_end(pytester, tiny_dir) -> None:
    folder, old = tiny_dir
    cases = pytester.mkdir("fact_cases")
    # every-token gains: a tiny random model learns through them in a few steps (tests/test_editors.py runs
    # the subject-gated default in sequence; its edits stay as hooks until the sequence ends)
    method = (
        "method: {lr: 0.3, unlearn_max_steps: 3, learn_max_steps: 6, guard_tokens: 1, localize: none, "
        "gain_positions: every}\n"
    )
    new = "Rome" if old != "Rome" else "London"
    for name in ("first", "second"):
        (cases / f"{name}.yaml").write_text(
            f"subject: Eiffel Tower\nprompts: ['{PROMPT}']\nold: '{old}'\nnew: {new}\n"
            "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n" + method
        )
    result = pytester.runpytest(
        "fact_cases",
        "--model",
        str(folder),
        "--factedit-device",
        "cpu",
        "--factedit-mode",
        "sequential",
        "--factedit-run-id",
        "seq",
        "-p",
        "no:cacheprovider",
        "--factedit-reports",
        str(pytester.path / "reports"),
        "-rA",
    )
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["PASSED *sequence::edits_retained"])
    assert "sequence of 2 edits" in out and "base restored: True" in out
    summary = json.loads((pytester.path / "reports" / "seq" / "summary.json").read_text())
    assert summary["mode"] == "sequential" and summary["sequence"]["base_restored"] is True
    assert 0 < summary["base_pass_seconds"] < summary["wall_seconds"]  # the base rows, decoded before any edit
    assert 0 < summary["load_seconds"] < summary["wall_seconds"] and summary["conversion_seconds"] is None  # a folder
    assert summary["memory_estimate"].startswith("estimated memory (")  # as the terminal's header gives it
    assert summary["load_notes"][0].startswith("loaded from ")  # then any product library the load chose
    records = [
        json.loads(line) for line in (pytester.path / "reports" / "seq" / "results.jsonl").read_text().splitlines()
    ]
    assert [r["sequence"]["position"] for r in records] == [0, 1]
    # the second case asks for the same change: after the first edit its old answer is gone, so it is skipped
    assert records[1]["status"] == "skipped" or records[1]["sequence"]["retained_at_end"] is not None


def write_batch_cases(cases: Path, old: str, second_old: str) -> None:
    """Two cases the batch edits together, and a third that asks for another method (an error record)."""
    method = (
        "method: {lr: 0.3, unlearn_max_steps: 3, learn_max_steps: 8, guard_tokens: 1, localize: none, "
        "gain_positions: every}\n"
    )
    for name, subject, prompt, answer in (
        ("first", "Eiffel Tower", PROMPT, old),
        ("second", "Colosseum", SECOND_PROMPT, second_old),
    ):
        new = "Rome" if answer != "Rome" else "London"
        (cases / f"{name}.yaml").write_text(
            f"subject: {subject}\nprompts: ['{prompt}']\nold: '{answer}'\nnew: {new}\n"
            "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n" + method
        )
    (cases / "third.yaml").write_text(
        f"subject: Eiffel Tower\nprompts: ['{PROMPT}']\nold: '{old}'\nnew: Berlin\n"
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n"
        "method: {name: lora, lr: 0.3, learn_max_steps: 8, guard_tokens: 1, localize: none}\n"
    )


def assert_the_shipped_batch_gives_the_recorded_answers(base, tok, shipped: Path) -> None:
    from pytest_factedit.model.probe import greedy_continuations
    from pytest_factedit.model.text import answer_token_budget
    from pytest_factedit.report.manifest import load_edit

    manifest = json.loads((shipped / "batch" / "manifest.json").read_text())
    assert manifest["mode"] == "batch" and [c["case_id"] for c in manifest["cases"]] == ["first", "second"]
    loaded = load_edit(base, shipped / "batch")  # every stage active: a PeftModel, or the gated gains' hooks
    edited = loaded if isinstance(loaded, torch.nn.Module) else loaded.model
    for case in manifest["cases"]:
        answers = [a for a in case["answers"] if a["group"] == "prompts"]
        budget = answer_token_budget(tok, case["old"] + case["new"])
        got = greedy_continuations(edited, tok, [a["prompt"] for a in answers], [budget] * len(answers))
        assert got == [a["edited"] for a in answers]


def test_batch_mode_trains_one_adapter_for_every_case_and_ships_it(pytester, tiny_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_factedit.model.probe import greedy_continuations

    folder, old = tiny_dir
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder)
    second_old = greedy_continuations(base, tok, [SECOND_PROMPT], [1])[0].split()[0]
    write_batch_cases(pytester.mkdir("fact_cases"), old, second_old)
    shipped = pytester.path / "shipped"
    reports = pytester.path / "reports"
    result = pytester.runpytest(
        *("fact_cases", "--model", str(folder), "--factedit-device", "cpu", "--factedit-mode", "batch"),
        *("--factedit-run-id", "b", "-p", "no:cacheprovider", "--factedit-reports", str(reports)),
        *("--factedit-save-adapters", str(shipped), "-rA"),
    )
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["PASSED *batch::edits_retained"])
    assert "controls_retained: not measured" in out  # the tiny model knows no control: skipped, not passed
    assert "FAILED fact_cases/third.yaml::third::new_fact_accuracy" in out and "one method" in out
    assert "batch of 3 edits" in out and "base restored: True" in out
    summary = json.loads((reports / "b" / "summary.json").read_text())
    assert summary["mode"] == "batch" and summary["batch"]["adapter"]["cases"] == ["first", "second"]
    assert summary["batch"]["metrics"]["edits_retained"]["samples"] == 2
    lines = (reports / "b" / "results.jsonl").read_text().splitlines()
    records = {json.loads(line)["case_id"]: json.loads(line) for line in lines}
    assert records["third"]["status"] == "error" and "one method" in records["third"]["reason"]
    assert records["first"]["target_modules"] == records["second"]["target_modules"]  # one adapter for both
    assert [records[c]["batch"]["position"] for c in ("first", "second", "third")] == [0, 1, 2]
    assert_the_shipped_batch_gives_the_recorded_answers(base, tok, shipped)
