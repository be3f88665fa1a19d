"""bench/sequence_plot.py: a long sequential run's checkpoint log, read back by blocks of positions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def entry(position: int, status: str, edit: float | None, new_fact: float | None) -> dict:
    timings = {"base_probe_seconds": 3.0} | ({"edit_seconds": edit, "probe_seconds": 4.0} if edit else {})
    metrics = {"new_fact_accuracy": {"value": new_fact}} if new_fact is not None else {}
    return {
        "run_seconds": 100.0 + 10 * position,
        "position": position,
        "case_id": f"c{position}",
        "status": status,
        "metrics": metrics,
        "timings": timings,
    }


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    """A checkpoint folder with three logged cases (the second skipped) and a line cut short by a kill."""
    monkeypatch.syspath_prepend(str(BENCH))
    lines = [json.dumps(entry(0, "ran", 10.0, 1.0)), json.dumps(entry(1, "skipped", None, None))]
    lines += [json.dumps(entry(2, "ran", 20.0, 0.0)), '{"position": 3, "ca']
    (tmp_path / "outcomes.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_each_fact_counts_the_phases_it_reached_and_a_cut_line_ends_the_log(folder: Path) -> None:
    from sequence_plot import logged, per_case_seconds

    entries = logged(folder)
    assert [e["case_id"] for e in entries] == ["c0", "c1", "c2"]
    assert per_case_seconds(entries) == [17.0, 3.0, 27.0]


def test_blocks_give_medians_means_and_what_held_at_the_end(folder: Path, capsys) -> None:
    from sequence_plot import logged, print_blocks

    print_blocks(logged(folder), {"c0": 1.0, "c2": 0.0}, size=2)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1-2") or line.startswith("| 3")]
    assert rows[0].startswith("| 1-2 | 1 | 10.0 | 10.0 | 1.000 | n/a |")  # the skipped case's 3 s count
    assert rows[0].endswith("| 1.000 |") and rows[1].startswith("| 3-3 | 1 | 20.0 | 27.0 | 0.000 |")
    assert rows[1].endswith("| 0.000 |")


def test_the_plot_is_written(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from sequence_plot import logged, plot

    plot(logged(folder), None, tmp_path / "sequence.png", width=2)
    assert (tmp_path / "sequence.png").read_bytes()[:4] == b"\x89PNG"


def test_upto_keeps_the_positions_a_stopped_part_checked(folder: Path, capsys, monkeypatch) -> None:
    import sequence_plot

    monkeypatch.setattr("sys.argv", ["sequence_plot.py", str(folder), "--upto", "2", "--block", "5"])
    assert sequence_plot.main() == 0
    out = capsys.readouterr().out
    assert "| 1-2 | 1 |" in out and "2 cases logged" in out and "| 3" not in out
