"""The report files the tool reads back (summary.json, results.jsonl) and the HTML page it writes, under
hostile conditions: a file that is not UTF-8, not JSON, nested too deep or of the wrong shape is one line
naming the file (and line, and key) with exit 2; a value the HTML writer cannot format costs its cell, not
the page; and a report writer that breaks never turns a green run red.

(Before, `factedit report` tracebacked on a wrongly shaped or deeply nested summary.json, `show` and
`report` on a results.jsonl that is not UTF-8, and a string where the page wanted a number crashed the
HTML writer: exit 1 with every test passed.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_factedit.cli import main
from pytest_factedit.report.html import write_html

from .test_reports import assert_every_item_ran, run, suite  # noqa: F401 (suite: a fixture)
from .test_show import good, metric


def results_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text(json.dumps(good()) + "\n", encoding="utf-8")
    return folder / "results.jsonl"


ROW = {
    "folder": "f",
    "metric": "forget_rate",
    "cases": 1,
    "hits": 1,
    "samples": 2,
    "value": 0.5,
    "interval": [0.1, 0.9],
    "threshold": None,
    "passed": None,
}
BAD_SUMMARIES = {
    "not UTF-8": (b'{"schema_version": 1, "run_id": "r\xff"}', "expected UTF-8 text, found the byte 0xff at offset"),
    "suites a number": (b'{"schema_version": 1, "suites": 5}', "key 'suites': not a run summary"),
    "cases a string": (b'{"schema_version": 1, "cases": "many"}', "key 'cases': not a run summary"),
    "model a number": (b'{"schema_version": 1, "model": 5}', "key 'model': not a run summary"),
    "a suite row of the wrong shape": (
        json.dumps({"schema_version": 1, "suites": [{**ROW, "interval": "wide"}]}).encode(),
        "key 'suites[0].interval': not a run summary",
    ),
    "nested beyond Python's recursion limit": (
        b'{"schema_version": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "levels",
    ),
}


@pytest.mark.parametrize("name", list(BAD_SUMMARIES))
def test_factedit_report_on_a_bad_summary_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    content, expected = BAD_SUMMARIES[name]
    results = results_file(tmp_path / "run")
    (results.parent / "summary.json").write_bytes(content)
    out = tmp_path / "page.html"
    assert main(["report", str(results.parent), "--html", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {results.parent / 'summary.json'}: ") and expected in err, err
    assert err.count("\n") == 1 and "Fix:" in err and "many" not in err  # a value: named by its type only
    assert not out.exists()  # nothing half-written


def test_a_summary_with_keys_this_version_does_not_know_still_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newer summary's extra keys are let be; a wrongly typed one that this version reads is not."""
    results = results_file(tmp_path / "run")
    (results.parent / "summary.json").write_text(json.dumps({"schema_version": 1, "future": [1], "wall_seconds": "x"}))
    assert main(["report", str(results.parent), "--html", str(tmp_path / "page.html")]) == 2
    assert (
        "key 'wall_seconds': not a run summary of pytest-factedit: expected a number, found str"
        in capsys.readouterr().err
    )
    (results.parent / "summary.json").write_text(json.dumps({"schema_version": 1, "future": [1], "wall_seconds": 2}))
    assert main(["report", str(results.parent), "--html", str(tmp_path / "page.html")]) == 0


@pytest.mark.parametrize("command", ["show", "report"])
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"case_id": "caf\xe9"}', "line 2: expected UTF-8 text, found the byte 0xe9"),
        (b"[" * 100_000 + b"]" * 100_000, "line 2: expected at most 32 levels"),
    ],
    ids=["latin-1", "nested beyond Python's recursion limit"],
)
def test_a_results_file_that_is_not_utf8_or_nests_too_deep_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, line: bytes, expected: str
) -> None:
    results = results_file(tmp_path / "run")
    results.write_bytes(results.read_bytes() + line + b"\n")
    assert main([command, str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {results}: ") and expected in err and err.count("\n") == 1, err
    assert "Traceback" not in err and "Fix:" in err


def test_the_html_writer_shows_what_it_cannot_format_instead_of_crashing(tmp_path: Path) -> None:
    odd = good(
        case_id="odd",
        method={"name": "staged", "trainable_parameters": "many"},
        metrics={
            "forget_rate": metric(
                value="0.5", threshold="high", baseline={"value": "0.9", "delta": "-0.4", "regressed": True}
            ),
            "latency_overhead": metric(value=[1], passed="yes", direction="lower"),
        },
    )
    undrawable = good(case_id="undrawable", method={"name": "staged", "stages": [1]})
    summary = {
        "schema_version": 1,
        "cases": "two",
        "wall_seconds": "long",
        "suites": [{**ROW, "interval": [0.1], "threshold": "t", "baseline": {"p_value": "p", "delta": "d"}}],
    }
    page = write_html(tmp_path / "page.html", [odd, undrawable], summary).read_text(encoding="utf-8")
    assert "0.5" in page and "\u2265high" in page and "long s" in page and "many trainable parameters" in page
    assert "case 2 could not be drawn: AttributeError" in page and "2: 2 ran" in page  # the rest of the page is there


def test_a_report_writer_that_breaks_never_turns_a_green_run_red(
    pytester: pytest.Pytester,
    suite: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_factedit.report import html

    def broken_page(*args: object) -> str:
        raise ValueError("Unknown format code 'f' for object of type 'str'")

    monkeypatch.setattr(html, "html_report", broken_page)
    model, root = suite
    page = root / "page.html"
    result = run(pytester, model, "--factedit-html", str(page), "--factedit-threshold", "latency_overhead=1000")
    out = assert_every_item_ran(result)
    assert result.ret == pytest.ExitCode.OK, out
    assert f"could not write the html to {page}: ValueError: Unknown format code" in out and not page.exists()
