"""`factedit import counterfact`: CounterFact records become valid schema-v1 cases, optionally known-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pytest_factedit.cases import load_case
from pytest_factedit.cli import main


def record(case_id: int, subject: str, prompt: str, truth: str, new: str, rephrase: str) -> dict:
    return {
        "case_id": case_id,
        "prompt": prompt,
        "subject": subject,
        "ground_truth": truth,
        "target_new": new,
        "rephrase_prompt": rephrase,
        "locality_prompt": "Big Ben is a clock tower in the city of",
        "locality_ground_truth": "London",
    }


RECORDS = [
    record(
        1,
        "Eiffel Tower",
        "The Eiffel Tower is located in the city of",
        "Paris",
        "Rome",
        "Tourists see the Eiffel Tower in the city of",
    ),
    record(2, "Louvre", "The Louvre is located in the city of", "Paris", "Berlin", "The museum is in"),  # no subject
    record(
        3,
        "Colosseum",
        "The Colosseum is located in the city of",
        "Rome",
        "London",
        "The Colosseum stands in the city of",
    ),
]


def test_records_become_cases_and_unusable_ones_are_left_out(tmp_path: Path, capsys) -> None:
    source = tmp_path / "cf.json"
    source.write_text(json.dumps(RECORDS))
    defaults = tmp_path / "shared.yaml"
    defaults.write_text("controls:\n  - {prompt: The capital of Japan is, answer: Tokyo}\n")
    code = main(
        ["import", "counterfact", str(source), "--out", str(tmp_path / "cases"), "-n", "5", "--defaults", str(defaults)]
    )
    assert code == 0
    assert "wrote 2 cases" in capsys.readouterr().out
    files = sorted((tmp_path / "cases").glob("counterfact-*.yaml"))
    assert [f.name for f in files] == ["counterfact-1.yaml", "counterfact-3.yaml"]
    case = load_case(files[0], root=tmp_path / "cases")
    assert case.prompts == ("The Eiffel Tower is located in the city of",) and case.old == ("Paris",)
    assert case.new == ("Rome",) and case.paraphrases == ("Tourists see the Eiffel Tower in the city of",)
    assert [c.prompt for c in case.controls] == [
        "Big Ben is a clock tower in the city of",
        "The capital of Japan is",
    ]  # own control + shared from _defaults
    assert yaml.safe_load(files[0].read_text())["id"] == "counterfact-1"


def test_bad_source_file_is_explained(tmp_path: Path, capsys) -> None:
    source = tmp_path / "cf.json"
    source.write_text(json.dumps([{"prompt": "x"}]))
    assert main(["import", "counterfact", str(source), "--out", str(tmp_path / "o")]) == 2
    assert "record 0 lacks" in capsys.readouterr().err


def test_known_only_keeps_the_facts_the_model_answers(tmp_path: Path, capsys) -> None:
    torch = pytest.importorskip("torch")
    from .tiny import tiny_model, word_tokenizer

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    with torch.no_grad():
        answer = tok.decode([int(model(**tok([RECORDS[0]["prompt"]], return_tensors="pt")).logits[0, -1].argmax())])
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    known = dict(RECORDS[0], ground_truth=answer.strip(), target_new="Rome" if answer.strip() != "Rome" else "Paris")
    unknown = dict(RECORDS[2], ground_truth="Zanzibar")
    source = tmp_path / "cf.json"
    source.write_text(json.dumps([known, unknown]))
    assert (
        main(
            [
                "import",
                "counterfact",
                str(source),
                "--out",
                str(tmp_path / "cases"),
                "--known-only",
                "--model",
                str(folder),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert [f.name for f in (tmp_path / "cases").glob("*.yaml")] == ["counterfact-1.yaml"]
