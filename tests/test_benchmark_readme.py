"""bench/benchmark.py's README figure: the command it times is the README's first one, and a failed run
gives no figure."""

from __future__ import annotations

import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_timed_command_is_the_readmes_first_one(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import benchmark

    command = benchmark.readme_command()
    assert command.startswith("python3 -m venv .venv") and command.endswith("pytest fact_cases/")
    assert command in benchmark.README.read_text(encoding="utf-8")
    assert "pytest tests" not in command  # the second command is the project's own tests


def test_a_failed_readme_run_gives_no_figure_and_shows_why(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import benchmark

    seen = {}
    real_run = subprocess.run

    def run(args, **kwargs):
        if args[0] == "git":  # a clone of a tiny repository instead of this one
            source = tmp_path / "source"
            source.mkdir()
            real_run(["git", "init", "-q", str(source)], check=True)
            return real_run(["git", "clone", "-q", str(source), args[-1]], check=True)
        seen.update(kwargs)
        return subprocess.CompletedProcess(args, 2, "collected 0 items\n", "no such folder: fact_cases\n")

    monkeypatch.setattr(benchmark.subprocess, "run", run)
    assert benchmark.readme_seconds() == {}
    out = capsys.readouterr().out
    assert "rc 2" in out and "no such folder: fact_cases" in out
    assert seen["env"]["FACTEDIT_CACHE"] != "" and "PYTHONPATH" not in seen["env"]
