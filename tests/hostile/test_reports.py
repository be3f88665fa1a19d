"""Reports under hostile conditions: a bad folder stops the run at start-up in one line; a write that fails
later warns and the run goes on; `latest` and the run folder are never clobbered; files are readable."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from .conftest import case_text

ARGS = ("-p", "no:cacheprovider", "--factedit-device", "cpu")


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_model_dir) -> tuple[Path, Path]:
    folder, old = tiny_model_dir
    cases = pytester.mkdir("fact_cases")
    (cases / "tower.yaml").write_text(case_text(old))
    return folder, pytester.path


def run(pytester: pytest.Pytester, model: Path, *args: str) -> pytest.RunResult:
    reports = () if "--factedit-reports" in args else ("--factedit-reports", str(pytester.path / "reports"))
    return pytester.runpytest("fact_cases", "--model", str(model), *ARGS, *reports, *args)


def test_a_reports_path_that_is_a_file_stops_the_run_in_one_line(pytester, suite) -> None:
    model, root = suite
    (root / "not-a-folder").write_text("x")
    result = run(pytester, model, "--factedit-reports", str(root / "not-a-folder"))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert "INTERNALERROR" not in out and "Traceback" not in out
    assert "cannot write reports" in out and "--factedit-reports" in out


def test_a_run_id_that_leaves_the_reports_folder_is_refused(pytester, suite) -> None:
    model, root = suite
    for bad in ("../escape", "a/b", "/abs"):
        result = run(pytester, model, "--factedit-run-id", bad)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "--factedit-run-id" in result.stderr.str()
    assert not (root / "escape").exists()


def test_a_run_id_already_used_is_refused_before_the_model_loads(pytester, suite) -> None:
    model, root = suite
    (root / "reports" / "taken").mkdir(parents=True)
    (root / "reports" / "taken" / "results.jsonl").write_text("{}\n")
    result = run(pytester, Path("/nonexistent/model"), "--factedit-run-id", "taken")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "already exists" in out and "could not load" not in out
    assert (root / "reports" / "taken" / "results.jsonl").read_text() == "{}\n"


def test_a_write_that_fails_later_warns_and_the_run_goes_on(pytester, suite, monkeypatch) -> None:
    from pytest_factedit.report import files

    def disk_full(path: Path, text: str) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(files, "write_atomic", disk_full)
    model, root = suite
    result = run(pytester, model, "--factedit-run-id", "full")
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    counts = result.parseoutcomes()
    collected = int(out.split(" items")[0].rsplit("collected ", 1)[1])
    assert sum(counts.get(k, 0) for k in ("passed", "failed", "skipped")) == collected  # every item ran
    assert "pytest-factedit: fact edits" in out  # the summary still prints
    assert out.count("could not write") == 1 and "No space left on device" in out


def test_latest_as_a_real_folder_is_left_alone_with_a_warning(pytester, suite) -> None:
    model, root = suite
    (root / "reports" / "latest").mkdir(parents=True)
    (root / "reports" / "latest" / "keep.txt").write_text("artifact")
    result = run(pytester, model, "--factedit-run-id", "r1")
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and result.ret == pytest.ExitCode.OK, out
    assert "reports/latest" in out and "not a link" in out
    assert (root / "reports" / "latest" / "keep.txt").read_text() == "artifact"
    assert json.loads((root / "reports" / "r1" / "results.jsonl").read_text().splitlines()[0])["case_id"] == "tower"


def test_reports_are_readable_by_others_as_the_umask_allows(pytester, suite) -> None:
    model, root = suite
    old = os.umask(0o022)
    try:
        run(pytester, model, "--factedit-run-id", "perm")
    finally:
        os.umask(old)
    for name in ("results.jsonl", "summary.json"):
        assert stat.S_IMODE((root / "reports" / "perm" / name).stat().st_mode) == 0o644
