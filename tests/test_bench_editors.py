"""bench/editors.py compares editors' edit seconds on the same facts: no method may read what another
computed before it (the base model's decodes an editor asks for), or its edit looks faster than it is."""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_each_method_keeps_its_own_cache_of_base_decodes_across_the_facts(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import editors

    from pytest_factedit.run import case as run_case_module

    facts = [SimpleNamespace(id=name, method={}) for name in ("first", "second")]
    monkeypatch.setattr(editors, "case_folder", lambda folder: (object(), facts, nullcontext()))
    seen: list[tuple[str, str, int]] = []

    def recorded(lm: Any, case: Any, settings: Any, cache: Any, plan: Any = None) -> Any:
        seen.append((case.id, settings.seed, id(cache)))
        return SimpleNamespace(status="skipped", reason="stub")

    monkeypatch.setattr(run_case_module, "run_case", recorded)
    args = argparse.Namespace(
        shard="0/1", cases=Path("unused"), methods=["ia3-two-stage", "ia3-two-stage:seed=1"], only=[], log=None
    )
    editors.run_editors(args, {}, [])
    capsys.readouterr()
    caches = {seed: {cache for _, s, cache in seen if s == seed} for seed in (0, 1)}
    assert [(fact, seed) for fact, seed, _ in seen] == [("first", 0), ("first", 1), ("second", 0), ("second", 1)]
    assert len(caches[0]) == len(caches[1]) == 1  # one cache per method, kept from fact to fact
    assert caches[0] != caches[1]  # and never another method's


def test_the_table_gives_each_later_method_s_edit_seconds_over_the_first_s_fact_by_fact(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import editors

    def result(fact: str, method: str, seconds: float, answer: str) -> dict[str, Any]:
        return {"fact": fact, "method": method, "status": "ran", "values": {"edit s": seconds, "answers": [answer]}}

    results = [
        result("a", "A", 10.0, "x"),
        result("a", "B", 5.0, "x"),
        result("b", "A", 8.0, "y"),
        result("b", "B", 6.0, "z"),
        result("c", "B", 1.0, "w"),  # no A on this fact: not a pair
    ]
    editors.print_time_ratios(results, ["A", "B"])
    printed = capsys.readouterr().out
    assert "B / A, fact by fact: median 0.62 (0.50-0.75) over 2 facts; the same answer texts in 1" in printed


def test_a_run_against_another_names_the_facts_whose_counts_differ(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import editors

    def result(fact: str, seconds: float, answer: str, forget: list[int]) -> dict[str, Any]:
        values = {"edit s": seconds, "answers": [answer], "forget_rate": forget}
        return {"fact": fact, "method": "A", "status": "ran", "values": values}

    now = [result("a", 4.0, "x", [1, 1]), result("b", 3.0, "y", [1, 2]), result("c", 2.0, "w", [1, 1])]
    earlier = [result("a", 8.0, "x", [1, 1]), result("b", 6.0, "z", [2, 2])]  # no "c": not compared
    editors.print_run_against(now, earlier)
    printed = capsys.readouterr().out
    assert "over 2 facts: the same answer texts in 1, the same counts in 1; edit seconds median ratio 0.50" in printed
    assert "  b: counts differ in forget_rate" in printed
    assert "  a:" not in printed
