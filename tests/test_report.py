"""Reports without a model: atomic JSONL, reports/latest, plain vs coloured tables, failure tables."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_factedit.report.files import RunWriter
from pytest_factedit.report.records import summary_record
from pytest_factedit.report.tables import answers_table, failure_details, summary_table


def record(case_id: str, forget: float = 1.0) -> dict:
    def metric(v, t, d="higher"):
        return {
            "value": v,
            "threshold": t,
            "passed": v >= t if d == "higher" else v <= t,  # noqa: E731
            "direction": d,
            "protocol": "p",
            "samples": 3,
        }

    return {
        "schema_version": 1,
        "run_id": "r",
        "case_id": case_id,
        "case_file": f"fact_cases/{case_id}.yaml",
        "status": "ran",
        "reason": "",
        "model": {"name": "m"},
        "device": "cpu",
        "dtype": "float32",
        "versions": {},
        "old": ["Paris"],
        "new": ["Rome"],
        "timings": {"edit_seconds": 3.0, "base_seconds_per_token": 0.01, "edited_seconds_per_token": 0.011},
        "metrics": {
            "new_fact_accuracy": metric(1.0, 1.0),
            "forget_rate": metric(forget, 0.8),
            "paraphrase_accuracy": metric(0.5, 0.5),
            "control_retention": metric(1.0, 0.9),
            "latency_overhead": metric(1.1, 1.5, "lower"),
        },
        "answers": [
            {
                "group": "prompts",
                "prompt": "The Eiffel Tower is in",
                "expected": ["Rome"],
                "base": " Paris",
                "base_correct": False,
                "edited": " Paris, France",
                "edited_correct": False,
            },
            {
                "group": "controls",
                "prompt": "Big Ben is in",
                "expected": ["London"],
                "base": " London",
                "base_correct": True,
                "edited": " Rome",
                "edited_correct": False,
            },
        ],
    }


def test_results_jsonl_is_valid_after_every_case_and_latest_points_at_the_run(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "run-1")
    assert writer.add(record("a"))
    assert not writer.add(record("a"))  # one line per case, even when several items carry the record
    lines = (tmp_path / "run-1" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["case_id"] for x in lines] == ["a"]
    writer.add(record("b", forget=0.5))
    writer.finish(
        summary_record(
            writer.records,
            {"run_id": "run-1", "model": {}, "device": "cpu", "dtype": "f", "versions": {}},
            1.0,
            "isolated",
            "",
            None,
        )
    )
    assert (tmp_path / "latest").resolve() == (tmp_path / "run-1").resolve()
    summary = json.loads((tmp_path / "run-1" / "summary.json").read_text())
    assert summary["cases"] == 2 and summary["failed_metrics"] == 1
    assert not [p for p in (tmp_path / "run-1").iterdir() if p.name.startswith(".")]  # no temp files left


def test_plain_table_has_no_escape_codes_and_coloured_one_has(tmp_path: Path) -> None:
    plain = summary_table([record("a"), record("b", forget=0.5)], color=False)
    assert "\x1b[" not in plain
    assert "1.00 ok" in plain and "0.50 FAIL" in plain and ">=0.8" in plain  # shared threshold in the header
    one_off = record("c")
    one_off["metrics"]["forget_rate"]["threshold"] = 0.5
    assert "1.00>=0.5 ok" in summary_table([record("a"), one_off], color=False)  # differing: per cell
    coloured = summary_table([record("a"), record("b", forget=0.5)], color=True)
    assert "\x1b[" in coloured


def test_failure_details_show_prompt_expected_base_and_edited() -> None:
    text = failure_details("forget_rate", record("a", forget=0.0))
    assert "The Eiffel Tower is in" in text and "not Paris" in text and "Paris, France" in text
    controls = failure_details("control_retention", record("a"))
    assert "Big Ben is in" in controls and "London" in controls and "Rome" in controls
    for column in ("prompt", "expected", "base answer", "edited answer"):
        assert column in answers_table("t", [])


def test_factedit_show_prints_the_table_and_explains_a_missing_or_broken_file(tmp_path: Path, capsys) -> None:
    from pytest_factedit.cli import main

    writer = RunWriter(tmp_path, "run-1")
    writer.add(record("a"))
    assert main(["show", str(tmp_path / "run-1")]) == 0
    assert "1.00 ok" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "nope")]) == 2
    assert "error: no results file at" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(record("a")) + "\nnot json\n")
    assert main(["show", str(broken)]) == 2
    assert "broken.jsonl: line 2 is not a JSON record" in capsys.readouterr().err


def test_at_80_columns_nothing_is_cut_neither_an_id_nor_a_cell() -> None:
    records = [record("michael-jordan-sport-and-basketball"), record("b")]
    records[1]["metrics"]["forget_rate"]["threshold"] = 0.5  # thresholds differ: shown in each cell
    text = summary_table(records, color=False, width=80)
    assert "…" not in text
    assert any("michael-jordan-sport-and-basketball " in line for line in text.splitlines())
    assert "1.00>=0.8 ok" in text and "1.00>=0.5 ok" in text
