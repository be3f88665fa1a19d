"""bench/sequential.py's table of the scale targets."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_whole_run_is_judged_against_its_target_only_at_1000_facts(monkeypatch, capsys) -> None:
    """bench/sequential.py's target table: the 90-minute target is for 1,000 edits, so a shorter run (or a
    --stop-after part) shows its seconds without a verdict."""
    monkeypatch.syspath_prepend(str(BENCH))
    import sequential

    from pytest_factedit.metrics.measure import MetricValue

    metrics = {name: MetricValue(name, 1.0, 1, "greedy_generation") for name, _, _ in sequential.TARGETS}
    for facts, seconds, verdict in ((10, 400.0, "n/a (10 facts)"), (1000, 5000.0, "yes"), (1000, 6000.0, "no")):
        result = SimpleNamespace(metrics=metrics, memory=None, set_aside={}, outcomes=[None] * facts)
        sequential.print_targets(result, seconds)
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| whole run"))
        assert line.endswith(f"| {verdict} |"), line
