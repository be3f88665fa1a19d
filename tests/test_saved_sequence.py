"""A saved sequence (`--factedit-mode sequential --factedit-save-adapters DIR`): DIR/sequence/ holds every
edit in order, and `load_edit` puts them all back on a fresh base model, giving the answers the run
recorded with every edit in place; removing them restores the base bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from .stacked_gates import stacked, twin  # noqa: E402
from .tiny import tiny_model, word_tokenizer  # noqa: E402

TEMPLATE = "The {} is located in the city of"
SUBJECTS = tuple(f"Place{i:03d}" for i in range(120))  # one token each: no subject's gate fires on another's prompt
MODULE = "model.layers.1.mlp.down_proj"  # one module, named: no localization, few hooks per edit
FAST = "lr: 1.0, unlearn_max_steps: 1, learn_max_steps: 4, guard_tokens: 1, subject_rows: 0"
PLACED = f"target_modules: [{MODULE}], feedforward_modules: [{MODULE}]"
GATED = f"{{{FAST}, {PLACED}}}"  # the default editor: gains gated on the subject's sentence
EVERY = f"{{{FAST}, {PLACED}, gain_positions: every}}"  # peft IA3 adapters, merged into the weights


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama saved as a local model folder."""
    tok = word_tokenizer(extra_words=subject_words())
    model = tiny_model("llama", len(tok), layers=2)
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def subject_words() -> tuple[str, ...]:
    """Every spelling a gate looks for (edit/subject.py), each its own word: none falls back to [UNK]."""
    from pytest_factedit.edit.subject import spellings

    return tuple(form for subject in SUBJECTS for form in spellings(subject))


def base_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def write_cases(folder: Path, cases: Path, count: int, methods: list[str]) -> None:
    """`count` cases, each on its own subject, with the base model's own answer (a word of tests/tiny.py)
    as `old`; case i gets the method settings methods[i % len(methods)]."""
    from transformers import AutoTokenizer

    from pytest_factedit.model.probe import greedy_continuations

    tok, model = AutoTokenizer.from_pretrained(folder), base_model(folder)
    prompts = [TEMPLATE.format(s) for s in SUBJECTS]
    firsts = [(a.split() or [""])[0] for a in greedy_continuations(model, tok, prompts, [1] * len(prompts))]
    known = [(s, p, a) for s, p, a in zip(SUBJECTS, prompts, firsts) if a.isalpha() and a not in subject_words()]
    assert len(known) >= count, "the tiny model answers too few prompts with a word"
    cases.mkdir()
    (cases / "_defaults.yaml").write_text(
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n"
    )
    for index, (subject, prompt, old) in enumerate(known[:count]):
        new = "Rome" if old != "Rome" else "London"
        method = methods[index % len(methods)]
        (cases / f"c{index:03d}.yaml").write_text(
            f"subject: {subject}\nprompts: ['{prompt}']\nold: '{old}'\nnew: {new}\nmethod: {method}\n"
        )


def run_sequence_saving(pytester: pytest.Pytester, folder: Path, run_id: str) -> tuple[Path, list[dict[str, Any]]]:
    """The plugin in sequential mode over fact_cases/, saving to shipped/: the saved sequence and the records."""
    reports, shipped = pytester.path / "reports", pytester.path / "shipped"
    pytester.runpytest(
        *("fact_cases", "--model", str(folder), "--factedit-device", "cpu", "--factedit-mode", "sequential"),
        *("--factedit-run-id", run_id, "-p", "no:cacheprovider", "--factedit-reports", str(reports)),
        *("--factedit-save-adapters", str(shipped)),
    )
    lines = (reports / run_id / "results.jsonl").read_text().splitlines()
    return shipped / "sequence", [json.loads(line) for line in lines]


def answers_now(model: Any, tok: Any, record: dict[str, Any]) -> list[str]:
    """The record's prompts answered by `model`, as the sequence answered them after its last edit."""
    from pytest_factedit.model.probe import greedy_continuations
    from pytest_factedit.model.text import answer_token_budget

    budget = answer_token_budget(tok, record["old"] + record["new"])
    prompts = [a["prompt"] for a in record["answers"] if a["group"] == "prompts"]
    return greedy_continuations(model, tok, prompts, [budget] * len(prompts))


def hooked(model: Any) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_saved_sequence_of_100_edits_loads_back_with_every_edit_active(pytester, tiny_dir) -> None:
    from transformers import AutoTokenizer

    from pytest_factedit.report.manifest import load_edit

    write_cases(tiny_dir, pytester.path / "fact_cases", 100, [GATED])
    saved, records = run_sequence_saving(pytester, tiny_dir, "seq100")
    ran = [r for r in records if r["status"] == "ran"]
    assert len(ran) == 100, [r["reason"] for r in records if r["status"] != "ran"][:3]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["mode"] == "sequence" and "load_edit(base, DIR)" in manifest["load"]
    assert [e["folder"] for e in manifest["edits"]] == [f"{i:04d}-c{i:03d}" for i in range(100)]
    assert all(
        e["saved"] and (saved / e["folder"] / "subject-gains" / "gate.json").is_file() for e in manifest["edits"]
    )
    tok, base = AutoTokenizer.from_pretrained(tiny_dir), base_model(tiny_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with load_edit(base, saved) as sequence:
        assert len(sequence.gated) == 100
        sample = ran[::10]  # 10 cases, spread over the sequence
        for record in sample:
            assert answers_now(base, tok, record) == record["sequence"]["answers_at_end"], record["case_id"]
    bases = [[a["base"] for a in r["answers"] if a["group"] == "prompts"] for r in sample]
    assert any(r["sequence"]["answers_at_end"] != b for r, b in zip(sample, bases))  # the edits changed answers
    assert not hooked(base) and all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
    with stacked([twin(e) for e in sequence.gated]):  # the reference: one gate and hook set per edit
        for record in sample:
            assert answers_now(base, tok, record) == record["sequence"]["answers_at_end"], record["case_id"]
    assert not hooked(base)


def test_gated_and_merged_edits_load_back_in_order_and_a_bad_one_takes_them_all_off(
    pytester, tiny_dir, tmp_path
) -> None:
    from transformers import AutoTokenizer

    from pytest_factedit.errors import SavedEditError
    from pytest_factedit.report.manifest import load_edit

    # gated gains (hooks) and peft IA3 adapters (merged into the weights), alternating
    write_cases(tiny_dir, pytester.path / "fact_cases", 6, [GATED, EVERY])
    saved, records = run_sequence_saving(pytester, tiny_dir, "mixed")
    ran = [r for r in records if r["status"] == "ran"]
    assert {r["case_id"] for r in ran} >= {"c000", "c001"}
    manifest = json.loads((saved / "manifest.json").read_text())
    assert [e["case_id"] for e in manifest["edits"]] == [r["case_id"] for r in ran]
    tok, base = AutoTokenizer.from_pretrained(tiny_dir), base_model(tiny_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with load_edit(base, saved) as sequence:
        assert sequence.base_weights and sequence.gated  # both kinds went on
        assert not any("ia3" in name for name, _ in base.named_modules())  # merged, not wrapped
        for record in ran:
            assert answers_now(base, tok, record) == record["sequence"]["answers_at_end"], record["case_id"]
    assert not hooked(base) and all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
    assert not hasattr(base, "peft_config")

    tampered = tmp_path / "sequence"
    shutil.copytree(saved, tampered)
    gated = [e["folder"] for e in manifest["edits"] if (saved / e["folder"] / "subject-gains").is_dir()]
    gate = tampered / gated[-1] / "subject-gains" / "gate.json"  # the last gated edit: others went on before it
    gate.write_text(gate.read_text().replace('"format": 1', '"format": 2'))
    with pytest.raises(SavedEditError) as caught:
        load_edit(base, tampered)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{gate}: key 'format'")
    assert not hooked(base) and all(torch.equal(base.state_dict()[k], v) for k, v in before.items())


def test_a_sequence_whose_editor_cannot_save_says_so_and_does_not_load(pytester, tiny_dir) -> None:
    from pytest_factedit.errors import SavedEditError
    from pytest_factedit.report.manifest import load_edit

    write_cases(tiny_dir, pytester.path / "fact_cases", 1, ["{name: full-ft, learn_max_steps: 2}"])
    saved, records = run_sequence_saving(pytester, tiny_dir, "ft")
    assert records[0]["status"] == "ran" and "in place" in records[0]["adapters"]["error"]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["edits"][0]["saved"] is False and "in place" in manifest["edits"][0]["error"]
    assert manifest["load"].startswith("not loadable")
    base = base_model(tiny_dir)
    with pytest.raises(SavedEditError, match=r"key 'edits\[0\]'.*\(case c000\) its editor could not save") as caught:
        load_edit(base, saved)
    assert "\n" not in str(caught.value) and not hooked(base)
