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


def assert_every_item_ran(result: pytest.RunResult) -> str:
    """The session was not aborted: every collected item passed, failed or skipped (whatever the verdicts,
    which on a busy machine may include the latency item), and the summary printed."""
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), out
    counts = result.parseoutcomes()
    collected = int(out.split(" items")[0].rsplit("collected ", 1)[1])
    assert sum(counts.get(k, 0) for k in ("passed", "failed", "skipped")) == collected, out
    assert "pytest-factedit: fact edits" in out
    return out


def test_a_reports_path_that_is_a_file_stops_the_run_in_one_line_before_the_model_loads(pytester, suite) -> None:
    model, root = suite
    (root / "not-a-folder").write_text("x")
    for where in (model, Path("/nonexistent/model")):  # the second: the check comes before any model load
        result = run(pytester, where, "--factedit-reports", str(root / "not-a-folder"))
        out = result.stdout.str() + result.stderr.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR, out
        assert "INTERNALERROR" not in out and "Traceback" not in out and "could not load" not in out
        assert "cannot write reports" in out and "--factedit-reports" in out


def test_a_reports_folder_that_cannot_be_written_stops_the_run_in_one_line(pytester, suite, monkeypatch) -> None:
    """A read-only folder (simulated: the tests may run as root, whom chmod does not stop)."""
    model, root = suite
    locked = root / "read-only"
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args, **kwargs) -> None:
        if self == locked or locked in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = run(pytester, Path("/nonexistent/model"), "--factedit-reports", str(locked))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in out and "Traceback" not in out
    assert f"cannot write reports to {locked}: Permission denied" in out and "could not load" not in out


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
    out = assert_every_item_ran(run(pytester, model, "--factedit-run-id", "full"))
    assert out.count("could not write") == 1 and "No space left on device" in out


def test_latest_as_a_real_folder_is_left_alone_with_a_warning(pytester, suite) -> None:
    model, root = suite
    (root / "reports" / "latest").mkdir(parents=True)
    (root / "reports" / "latest" / "keep.txt").write_text("artifact")
    out = assert_every_item_ran(run(pytester, model, "--factedit-run-id", "r1"))
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


def _claim(reports: str, start, won) -> None:
    from pytest_factedit.errors import FactEditError
    from pytest_factedit.report.files import RunWriter

    start.wait()
    try:
        RunWriter(Path(reports), "same").open()
        won.put("opened")
    except FactEditError as exc:
        won.put(str(exc))


def test_two_runs_racing_for_one_run_id_one_wins_and_the_other_is_told(tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, won = context.Barrier(4), context.Queue()
    racers = [context.Process(target=_claim, args=(str(tmp_path), start, won)) for _ in range(4)]
    for racer in racers:
        racer.start()
    results = sorted(won.get(timeout=60) for _ in racers)  # read before join: a queued put holds its process
    for racer in racers:
        racer.join(10)
    assert results.count("opened") == 1, results
    assert all("already exists: another run used this run id" in r for r in results if r != "opened")
