"""`factedit show` and `factedit report` on a results.jsonl that someone changed: one line naming the file,
the line and the key, exit 2, never a traceback (before, a record of the wrong shape crashed in the tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_factedit.cli import main
from pytest_factedit.report.records import RECORD_SCHEMA_VERSION, case_record_problem
from pytest_factedit.report.shape import shape_problem


def metric(**changes):
    return {
        "value": 1.0,
        "threshold": 0.9,
        "passed": True,
        "direction": "higher",
        "protocol": "greedy_generation",
        "samples": 2,
        **changes,
    }


def good(**changes):
    base = {
        "schema_version": RECORD_SCHEMA_VERSION,
        "case_id": "a",
        "status": "ran",
        "metrics": {"forget_rate": metric()},
    }
    return {**base, **changes}


BROKEN = {
    "no metrics": ({"case_id": "a"}, "the key 'metrics' is missing"),
    "a list": ([1, 2], "record: expected an object, found list"),
    "a string": ("str", "record: expected an object, found str"),
    "null": (None, "record: expected an object, found null"),
    "metrics a number": (good(metrics=5), "record.metrics: expected an object, found int 5"),
    "value a string": (
        good(metrics={"forget_rate": metric(value="x")}),
        "record.metrics.forget_rate.value: expected a number or null, found str 'x'",
    ),
    "threshold missing": (good(metrics={"forget_rate": {"value": 1.0}}), "the key 'direction' is missing"),
    "passed a string": (
        good(metrics={"forget_rate": metric(passed="yes")}),
        "record.metrics.forget_rate.passed: expected true or false or null",
    ),
    "case id a number": (good(case_id=7), "record.case_id: expected a string, found int 7"),
    "unknown status": (good(status="weird"), "record.status: expected one of ran, skipped, error"),
    "newer schema": (good(schema_version=RECORD_SCHEMA_VERSION + 1), "from a newer pytest-factedit"),
    "answer group a number": (good(answers=[{"group": 3}]), "record.answers[0].group: expected a string"),
    "answers an object": (good(answers={"a": 1}), "record.answers: expected a list"),
    "scores of strings": (good(scores={"fluency": "high"}), "record.scores.fluency: expected a number"),
}


@pytest.mark.parametrize("command", ["show", "report"])
@pytest.mark.parametrize("name", list(BROKEN))
def test_a_record_of_the_wrong_shape_is_one_clear_line(tmp_path: Path, capsys, command: str, name: str) -> None:
    data, expected = BROKEN[name]
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(good()) + "\n" + json.dumps(data) + "\n", encoding="utf-8")
    assert main([command, str(results)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert f"{results}: line 2 is not a case record of pytest-factedit: " in captured.err
    assert expected in captured.err


def test_a_record_that_fits_is_shown_even_with_keys_this_version_does_not_know(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results.jsonl"
    record = good(answers=[{"group": "prompts", "prompt": "p"}], scores={"fluency": 1}, future_key={"x": [1]})
    results.write_text(json.dumps(record) + "\n", encoding="utf-8")
    assert case_record_problem(record) is None
    assert main(["show", str(results)]) == 0
    assert "a " in capsys.readouterr().out


def test_the_shape_check_reads_unions_containers_and_numbers_as_json_has_them() -> None:
    assert shape_problem(3, float, "x") is None  # JSON writes 3.0 as 3
    assert shape_problem(True, float, "x") == "x: expected a number, found bool True"
    assert shape_problem(True, int, "x") is not None
    assert shape_problem(None, float | None, "x") is None
    assert shape_problem({"a": [1, "b"]}, dict[str, list[int]], "x") == "x.a[1]: expected an integer, found str 'b'"
    long = "y" * 10_000
    assert len(shape_problem(long, int, "x") or "") < 200  # a hostile value is summarised, not echoed
