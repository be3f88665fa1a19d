"""Values that YAML accepts but a fact case cannot use: each is refused at load with the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_factedit.cases import load_case
from pytest_factedit.edit import resolve_settings
from pytest_factedit.errors import CaseError, MethodError

GOOD = (
    "subject: Eiffel Tower\nprompts: [The Eiffel Tower is located in the city of]\nold: Paris\nnew: Rome\n"
    "controls: [{prompt: Big Ben is in the city of, answer: London}]\n"
)


def load(tmp_path: Path, text: str):
    path = tmp_path / "case.yaml"
    path.write_text(text)
    return load_case(path)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1.0e+400"])
def test_non_finite_settings_are_refused(tmp_path: Path, value: str) -> None:
    case = load(tmp_path, GOOD + f"method: {{lr: {value}}}\n")
    with pytest.raises(MethodError, match=r"key 'method.lr': expected a finite"):
        resolve_settings(case.method)


@pytest.mark.parametrize("value", [".nan", ".inf", "1.0e+400"])
def test_non_finite_thresholds_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(CaseError, match=r"key 'thresholds.latency_overhead': expected a finite number"):
        load(tmp_path, GOOD + f"thresholds: {{latency_overhead: {value}}}\n")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match=r"key 'new': duplicate key \(lines 4 and 6\)"):
        load(tmp_path, GOOD + "new: Berlin\n")
    with pytest.raises(CaseError, match=r"key 'answer': duplicate key"):
        load(tmp_path, GOOD.replace("answer: London}", "answer: London, answer: Paris}"))


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    controls = (
        "controls:\n- &c {prompt: Big Ben is in the city of, answer: London}\n"
        "- {<<: *c, prompt: The Tower of London is in the city of}\n"
    )
    case = load(tmp_path, GOOD.split("controls:")[0] + controls + "anchors: &a [The Louvre is in]\n")
    assert [c.prompt for c in case.controls] == ["Big Ben is in the city of", "The Tower of London is in the city of"]
    assert case.controls[1].answer == ("London",)


def test_a_new_answer_that_contains_the_old_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match=r"key 'new'.*forget_rate can never pass"):
        load(tmp_path, GOOD.replace("new: Rome", "new: Paris Saint-Germain"))
    assert load(tmp_path, GOOD.replace("new: Rome", "new: Parisian")).new == ("Parisian",)  # not at a word boundary


def test_a_huge_value_in_a_setting_gets_a_short_message(tmp_path: Path) -> None:
    with pytest.raises(MethodError) as info:
        resolve_settings({"lr": list(range(1_000_000))})
    assert len(str(info.value)) < 200 and "list of 1000000 items" in str(info.value)
