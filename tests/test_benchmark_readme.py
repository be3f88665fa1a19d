"""bench/benchmark.py's README figure (the command it times is the README's first one, and a failed run
gives no figure) and its benchmark facts' tables (the median edit, and each quality target beside it)."""

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


def _fact(seconds: float, fluency: float, **counts: list[int]) -> dict:
    return {
        "fact": f"f{seconds}",
        "method": "ia3-two-stage",
        "status": "ran",
        "values": {"edit s": seconds, "fluency change": fluency, **counts},
    }


def test_the_benchmark_facts_give_the_median_edit_and_each_quality_target_beside_it(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import benchmark

    fast = [_fact(s, -0.2, forget_rate=[9, 10], relation_specificity=[1, 1]) for s in (2.0, 3.0, 4.0, 4.5, 9.0)]
    slow = [_fact(s, 0.1, forget_rate=[10, 10]) for s in (5.5, 6.0, 7.0)]
    benchmark.print_benchmark_facts({"quick facts": fast, "slow facts": slow, "none ran": []})
    lines = capsys.readouterr().out.splitlines()
    row = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert row["quick facts"].startswith("| quick facts | 5 | 4.00 s (2.50-6.75) | 4 of 5 | <= 5 s | yes |")
    assert row["slow facts"].endswith("| 0 of 3 | <= 5 s | no (1.20x) |")
    assert "| none ran | 0 | n/a |" in row["none ran"]
    # forget: 45 of 50 misses 0.97, 30 of 30 meets it; a metric no fact sampled is n/a; fluency is a mean
    assert row["forget_rate"] == "| forget_rate | 0.900 (45 of 50) **no** | 1.000 (30 of 30) yes | n/a | >= 0.97 |"
    assert row["relation_specificity"].startswith("| relation_specificity | 1.000 (5 of 5) yes | n/a | n/a |")
    assert row["fluency change"] == "| fluency change | -0.200 **no** | +0.100 yes | n/a | >= -0.1 |"
