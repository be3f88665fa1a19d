"""`factedit import counterfact` on records a hostile or careless file holds: no traceback, no file written
outside --out, one file per case it reports."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_factedit.cli import main


def record(case_id, **changes):
    base = {
        "case_id": case_id,
        "prompt": "The Eiffel Tower is located in the city of",
        "subject": "Eiffel Tower",
        "ground_truth": "Paris",
        "target_new": "Rome",
        "rephrase_prompt": "The Eiffel Tower is in",
        "locality_prompt": "Big Ben is in the city of",
        "locality_ground_truth": "London",
    }
    return {**base, **changes}


def test_duplicate_unsafe_and_mistyped_records_are_left_out_and_said(tmp_path: Path, capsys) -> None:
    records = [
        record(1),
        record(1, target_new="Berlin"),
        record("../../escape"),
        record("a/b"),
        record(2, prompt=5),
        record(3, subject=None),
        record(4, ground_truth=["Paris"]),
        record(5),
    ]
    source = tmp_path / "cf.json"
    source.write_text(json.dumps(records))
    out = tmp_path / "cases"
    code = main(["import", "counterfact", str(source), "--out", str(out), "-n", "20"])
    printed = capsys.readouterr()
    assert code == 0 and "Traceback" not in printed.err
    files = sorted(p.name for p in out.glob("*.yaml"))
    assert files == ["counterfact-1.yaml", "counterfact-5.yaml"]
    assert f"wrote {len(files)} cases" in printed.out
    assert "duplicate case_id 1" in printed.out
    assert printed.out.count("skipped record") == 3  # the duplicate and the two unsafe ids
    # `../../escape` from `out` would land beside tmp_path (other tests' folders there may have "escape" in
    # their names, so the file itself is looked for)
    assert not any((folder / "escape.yaml").exists() for folder in (out, tmp_path, tmp_path.parent))


def test_a_record_list_that_is_not_objects_is_a_clear_error(tmp_path: Path, capsys) -> None:
    source = tmp_path / "cf.json"
    source.write_text(json.dumps([1, 2]))
    assert main(["import", "counterfact", str(source), "--out", str(tmp_path / "o")]) == 2
    assert "record 0" in capsys.readouterr().err
