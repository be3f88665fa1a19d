"""Two fact cases with one id would overwrite each other's adapters and mix their records: the second is
refused at collection, naming both files."""

from __future__ import annotations

import pytest

from pytest_factedit.cli import main

CASE = (
    "id: same\nsubject: Eiffel Tower\nprompts: [The Eiffel Tower is located in the city of]\nold: Paris\n"
    "new: Rome\ncontrols: [{prompt: Big Ben is in the city of, answer: London}]\n"
)


def test_a_duplicate_id_fails_collection_naming_both_files(pytester: pytest.Pytester) -> None:
    folder = pytester.mkdir("fact_cases")
    (folder / "a.yaml").write_text(CASE)
    (folder / "b.yaml").write_text(CASE.replace("Rome", "Berlin"))
    result = pytester.runpytest("fact_cases", "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*b.yaml: key 'id': duplicate case id 'same'*a.yaml*"])
    result.stdout.fnmatch_lines(["fact_cases/a.yaml::same::new_fact_accuracy"])
    assert "fact_cases/b.yaml::same" not in result.stdout.str()


def test_validate_reports_a_duplicate_id(tmp_path, capsys) -> None:
    (tmp_path / "a.yaml").write_text(CASE)
    (tmp_path / "b.yaml").write_text(CASE)
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "b.yaml: key 'id': duplicate case id 'same'" in out and "1 valid, 1 invalid" in out
