"""Schema v1: valid cases load; every kind of bad input is a CaseError naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pytest_factedit.cases import load_case
from pytest_factedit.errors import CaseError

VALID = {
    "id": "eiffel",
    "subject": "Eiffel Tower",
    "prompts": ["The Eiffel Tower is located in the city of"],
    "old": "Paris",
    "new": ["Rome", "Roma"],
    "paraphrases": ["Tourists who want to see the Eiffel Tower travel to the city of"],
    "controls": [{"prompt": "Big Ben is in the city of", "answer": "London"}],
}


def write(folder: Path, name: str, data: object) -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def test_valid_case_loads_with_aliases(tmp_path: Path) -> None:
    case = load_case(write(tmp_path, "eiffel.yaml", VALID))
    assert case.id == "eiffel"
    assert case.old == ("Paris",) and case.new == ("Rome", "Roma")
    assert case.controls[0].answer == ("London",)
    assert case.chat is False and dict(case.thresholds) == {}


def test_id_defaults_to_file_name(tmp_path: Path) -> None:
    data = {k: v for k, v in VALID.items() if k != "id"}
    assert load_case(write(tmp_path, "my-fact.yaml", data)).id == "my-fact"


def test_defaults_merge_lists_and_mappings(tmp_path: Path) -> None:
    write(
        tmp_path,
        "_defaults.yaml",
        {
            "controls": [{"prompt": "The capital of Japan is", "answer": "Tokyo"}],
            "thresholds": {"paraphrase_accuracy": 0.3, "forget_rate": 0.9},
            "anchors": ["The Louvre is in"],
            "method": {"lr": 0.01},
        },
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, "_defaults.yaml", {"thresholds": {"forget_rate": 0.8}})
    case_path = write(sub, "c.yaml", {**VALID, "thresholds": {"paraphrase_accuracy": 0.5}})
    case = load_case(case_path, root=tmp_path)
    assert [c.prompt for c in case.controls] == ["Big Ben is in the city of", "The capital of Japan is"]
    assert dict(case.thresholds) == {"paraphrase_accuracy": 0.5, "forget_rate": 0.8}
    assert case.anchors == ("The Louvre is in",)
    assert dict(case.method) == {"lr": 0.01}


def test_controls_may_come_only_from_defaults(tmp_path: Path) -> None:
    write(tmp_path, "_defaults.yaml", {"controls": [{"prompt": "The capital of Japan is", "answer": "Tokyo"}]})
    data = {k: v for k, v in VALID.items() if k != "controls"}
    assert len(load_case(write(tmp_path, "c.yaml", data), root=tmp_path).controls) == 1


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"paraphrasess": ["x Eiffel Tower"]}, "paraphrasess", "did you mean 'paraphrases'"),
        ({"prompts": []}, "prompts", "at least one prompt"),
        ({"prompts": "The Eiffel Tower is in"}, "prompts", "expected a list of strings, found str"),
        ({"prompts": ["Big Ben is in the city of"]}, "prompts[0]", "expected the subject 'Eiffel Tower'"),
        ({"paraphrases": ["Where is it?"]}, "paraphrases[0]", "expected the subject"),
        ({"new": "paris"}, "new", "different from 'old'"),
        ({"old": None}, "old", "expected a non-empty string, found null"),
        ({"controls": []}, "controls", "at least one control"),
        ({"controls": [{"prompt": "x", "answr": "y"}]}, "controls[0].answr", "did you mean 'answer'"),
        ({"controls": [{"prompt": "x"}]}, "controls[0].answer", "missing required key"),
        ({"thresholds": {"forget": 0.5}}, "thresholds.forget", "did you mean 'forget_rate'"),
        ({"thresholds": {"forget_rate": "high"}}, "thresholds.forget_rate", "expected a number, found str"),
        ({"thresholds": {"forget_rate": 1.5}}, "thresholds.forget_rate", "between 0 and 1"),
        ({"chat": "yes"}, "chat", "expected true or false"),
        ({"method": "ia3"}, "method", "expected a mapping"),
    ],
)
def test_bad_input_names_file_and_key(tmp_path: Path, change: dict, key: str, fragment: str) -> None:
    path = write(tmp_path, "bad.yaml", {**VALID, **change})
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert info.value.key == key
    assert str(path) in str(info.value)
    assert f"key '{key}'" in str(info.value)
    assert fragment in str(info.value)


def test_missing_required_key(tmp_path: Path) -> None:
    data = {k: v for k, v in VALID.items() if k != "subject"}
    with pytest.raises(CaseError, match="key 'subject': missing required key"):
        load_case(write(tmp_path, "c.yaml", data))


@pytest.mark.parametrize("text", ["- a\n- b\n", "key: [unclosed\n", "just a string\n", "1: x\n"])
def test_not_a_mapping_or_invalid_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(CaseError) as info:
        load_case(write(tmp_path, "c.yaml", text))
    assert "c.yaml" in str(info.value)


def test_unsafe_yaml_tags_are_rejected(tmp_path: Path) -> None:
    text = "subject: !!python/object/apply:os.system ['echo hacked']\n"
    with pytest.raises(CaseError, match="invalid YAML"):
        load_case(write(tmp_path, "c.yaml", text))


def test_broken_defaults_names_the_defaults_file(tmp_path: Path) -> None:
    write(tmp_path, "_defaults.yaml", {"controlz": []})
    with pytest.raises(CaseError) as info:
        load_case(write(tmp_path, "c.yaml", VALID), root=tmp_path)
    assert "_defaults.yaml" in info.value.path and "did you mean 'controls'" in str(info.value)
