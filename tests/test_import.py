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
    assert [n.prompt for n in case.neighbours] == ["Big Ben is a clock tower in the city of"]  # locality prompt
    assert [c.prompt for c in case.controls] == ["The capital of Japan is"]  # shared, from _defaults
    assert yaml.safe_load(files[0].read_text())["id"] == "counterfact-1"
    # the Colosseum's locality answer is its new answer (London): such a neighbour could never show a leak
    assert load_case(files[1], root=tmp_path / "cases").neighbours == ()


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


TEMPLATE = "The {} is located in the city of"
SUBJECTS = ["Eiffel Tower", "Colosseum", "Louvre", "Big Ben"]


def template_records(folder: Path) -> tuple[dict, list[dict], dict[str, str]]:
    """A tiny model saved in `folder`; an edited record and three others with its prompt template (the Big Ben
    one with an answer the model does not give); and the model's answer for each subject."""
    import torch

    from .tiny import tiny_model, word_tokenizer

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    with torch.no_grad():
        truths = {
            s: tok.decode([int(model(**tok([TEMPLATE.format(s)], return_tensors="pt")).logits[0, -1].argmax())]).strip()
            for s in SUBJECTS
        }
    wrong = next(w for w in ("Paris", "London", "Berlin") if w != truths["Big Ben"])
    old = truths["Eiffel Tower"]
    edited = record(
        1,
        "Eiffel Tower",
        TEMPLATE.format("Eiffel Tower"),
        old,
        "Rome" if old != "Rome" else "Berlin",
        "Tourists see the Eiffel Tower in the city of",
    )
    others = [
        record(
            10 + i,
            s,
            TEMPLATE.format(s),
            truths[s] if s != "Big Ben" else wrong,
            "Rome",
            f"People visit the {s} in the city of",
        )
        for i, s in enumerate(SUBJECTS[1:])
    ]
    return edited, others, truths


def test_neighbours_come_from_records_with_the_same_template_that_the_model_knows(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    edited, others, truths = template_records(tmp_path / "tiny")
    source = tmp_path / "cf.json"
    source.write_text(json.dumps([edited, *others]))
    assert (
        main(
            [
                "import",
                "counterfact",
                str(source),
                "--out",
                str(tmp_path / "cases"),
                "-n",
                "1",
                "--seed",
                "0",
                "--model",
                str(tmp_path / "tiny"),
                "--device",
                "cpu",
                "--neighbours",
                "2",
            ]
        )
        == 0
    )
    case = load_case(next((tmp_path / "cases").glob("*.yaml")), root=tmp_path / "cases")
    if case.id != "counterfact-1":
        pytest.skip("the seeded order picked another record first")
    prompts = [n.prompt for n in case.neighbours]
    assert prompts[0] == edited["locality_prompt"]  # CounterFact's own locality prompt comes first
    found = prompts[1:]
    assert 1 <= len(found) <= 2 and TEMPLATE.format("Big Ben") not in found  # Big Ben's record has a wrong answer
    subject_of = {TEMPLATE.format(s): s for s in SUBJECTS}
    assert all(n.answer == (truths[subject_of[p]],) for n, p in zip(case.neighbours[1:], found))


def records_sharing_one_new(tmp_path: Path) -> tuple[dict, list[dict], Path]:
    """template_records, every record's `new` a city no record answers (so any other known record can be held
    out: a held fact answered `new` is refused), written to tmp_path/cf.json: (edited, others, that file)."""
    edited, others, truths = template_records(tmp_path / "tiny")
    new = next(w for w in ("Madrid", "Oslo", "Vienna", "Cairo") if w not in truths.values())
    for one in (edited, *others):
        one["target_new"] = new
    source = tmp_path / "cf.json"
    source.write_text(json.dumps([edited, *others]))
    return edited, others, source


def first_seed_choosing(wanted: dict, records: list[dict]) -> str:
    """A seed whose order imports `wanted` first (`-n 1`)."""
    from pytest_factedit.cases.counterfact import sampled_records

    return str(next(seed for seed in range(100) if sampled_records(records, 1, seed)[0] is wanted))


def test_anchors_are_more_known_records_of_the_relation_never_a_neighbour(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    edited, others, source = records_sharing_one_new(tmp_path)
    seed = first_seed_choosing(edited, [edited, *others])  # the others stay out: an imported fact is neither
    arguments = ["import", "counterfact", str(source), "--out", str(tmp_path / "cases"), "-n", "1", "--seed", seed]
    arguments += ["--model", str(tmp_path / "tiny"), "--device", "cpu", "--neighbours", "1", "--anchors", "3"]
    assert main(arguments) == 0
    case = load_case(tmp_path / "cases" / "counterfact-1.yaml", root=tmp_path / "cases")
    neighbours = {n.prompt for n in case.neighbours}
    known = {TEMPLATE.format(s) for s in ("Colosseum", "Louvre")}  # Big Ben's record has a wrong answer
    assert len(case.neighbours) == 2  # the locality prompt and one found
    assert set(case.anchors) == known - neighbours and len(case.anchors) == 1


def test_no_imported_fact_is_another_imported_facts_neighbour_or_anchor(tmp_path: Path) -> None:
    """In one sequential run, an imported fact's own edit would change it: it is never held out for another."""
    pytest.importorskip("torch")
    _, _, source = records_sharing_one_new(tmp_path)
    arguments = ["import", "counterfact", str(source), "--out", str(tmp_path / "cases"), "-n", "2", "--seed", "0"]
    arguments += ["--model", str(tmp_path / "tiny"), "--device", "cpu", "--neighbours", "3", "--anchors", "3"]
    assert main(arguments) == 0
    cases = [load_case(path, root=tmp_path / "cases") for path in sorted((tmp_path / "cases").glob("*.yaml"))]
    assert len(cases) == 2
    imported = {TEMPLATE.format(c.subject) for c in cases}
    for case in cases:
        found = [n.prompt for n in case.neighbours[1:]] + list(case.anchors)  # [0]: CounterFact's locality prompt
        assert found and not imported & set(found), (case.id, found)


def test_neighbour_candidates_put_the_old_answer_first_and_leave_out_edited_subjects() -> None:
    """The model-free half of the neighbour search (bench/facts.py filters it by a saved known set)."""
    from pytest_factedit.cases.counterfact import neighbour_candidates

    def about(case_id: int, subject: str, truth: str, prompt: str = TEMPLATE) -> dict:
        return record(case_id, subject, prompt.format(subject), truth, "Rome", f"People visit the {subject} in")

    edited, chosen_too, same_old = (
        about(1, "Eiffel Tower", "Paris"),
        about(2, "Colosseum", "X"),
        about(3, "Louvre", "Paris"),
    )
    other_old = [about(10, "Big Ben", "London"), about(11, "Shard", "London")]
    taken, mentions = about(20, "Gherkin", "London"), about(21, "Eiffel Tower replica", "Las Vegas")
    other_template = about(22, "Sagrada Familia", "Barcelona", "The {} was designed by")
    every = [edited, chosen_too, *other_old, taken, mentions, other_template, same_old]
    for seed in range(5):
        found = neighbour_candidates([edited, chosen_too], every, seed, taken={1: [taken]})[1]
        assert found[0] is same_old  # the hardest neighbour: the edited fact's old answer
        assert {r["case_id"] for r in found} == {3, 10, 11}
    assert len(neighbour_candidates([edited], every, 0, tries=2)[1]) == 2
