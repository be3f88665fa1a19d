"""Fact edits written as Python tests, with pytest-factedit's fixtures (YAML cases stay the main path).

`fact_edit(case)` runs a case exactly as a YAML file would run it: localize, edit, probe, measure, undo,
verify. Its record goes into the same run report (reports/<run-id>/results.jsonl) as the YAML cases'.
`fact_edit.applied(case)` holds the edit for a `with` block, to probe the edited model yourself. The base
weights are checked when each test ends, even when it failed.

Run: pytest examples/python_tests/   (on the embedded model; --model phi3 or any model you have)
"""

from pathlib import Path

from pytest_factedit import matches

NORWAY_TO_STOCKHOLM = {
    "id": "norway-capital-stockholm",
    "subject": "Norway",
    "prompts": [
        "The capital city of Norway is called",
        "The capital city of Norway is the city of",
        "Norway's capital city is called",
    ],
    "old": "Oslo",
    "new": "Stockholm",
    "paraphrases": ["The seat of government of Norway is the city of"],
    "neighbours": [{"prompt": "The capital of Greece is called", "answer": "Athens"}],
    "controls": [
        {"prompt": "The currency of Japan is the", "answer": "yen"},
        {"prompt": "The iPhone is made by", "answer": "Apple"},
    ],
}


def test_norway_s_capital_becomes_stockholm(fact_edit):
    outcome = fact_edit(NORWAY_TO_STOCKHOLM).check()  # fails the way the case's YAML items would
    assert outcome.metrics["new_fact_accuracy"] == 1.0 and outcome.metrics["control_retention"] == 1.0


def test_a_yaml_case_runs_the_same_way(fact_edit):
    outcome = fact_edit(Path(__file__).parent / "cases" / "germany-capital.yaml")
    assert outcome.passed, outcome.failures()


def test_probe_the_edited_model_in_a_block(fact_edit, factedit_model):
    with fact_edit.applied(NORWAY_TO_STOCKHOLM) as edited:
        assert matches(edited.answer("The capital city of Norway is called"), ["Stockholm"])
        assert matches(edited.answer("The currency of Japan is the"), ["yen"])  # a control, untouched
        assert edited.targets  # the modules the edit went into (localized)
    # leaving the block removed the edit and checked the edited modules against the base
    assert factedit_model.weights_hash  # the run's model, loaded once and shared with the YAML cases
