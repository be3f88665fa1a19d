"""A sequential run stopped after its first case and run again with the same checkpoint folder
(bench/sequence_checkpoint.py) ends as the uninterrupted run does: the first edit is put back from its saved
gains, the second made on top, and every end-of-run figure and answer is the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import resolve_settings  # noqa: E402

from .test_sequence_end import FAST, PLACED, two_cases  # noqa: E402
from .tiny import tiny_model, word_tokenizer  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "bench"


class Stopped(Exception):
    """Stands in for a kill between two cases."""


def two_case_run() -> tuple[SimpleNamespace, list[Any], Callable[[Any], Any]]:
    """A tiny random llama with its word tokenizer, two cases on it, and the fast placed settings for each."""
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    settings = resolve_settings({**FAST, **PLACED})
    return SimpleNamespace(model=model, tokenizer=tok, dtype="float32"), two_cases(model, tok), lambda _case: settings


def figures(result: Any) -> dict[str, Any]:
    """A sequence's end-of-run metric values, latency left out (a timing, never equal across runs)."""
    return {name: metric.value for name, metric in result.metrics.items() if "latency" not in name}


def test_a_run_stopped_after_its_first_case_goes_on_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from pytest_factedit.run.many import run_sequence

    monkeypatch.syspath_prepend(str(BENCH))
    from sequence_checkpoint import OUTCOMES, Checkpoint

    lm, cases, settings_for = two_case_run()
    whole = run_sequence(lm, cases, settings_for)
    assert [o.status for o in whole.outcomes] == ["ran", "ran"]

    folder, identity = tmp_path / "checkpoint", {"method": "ia3-two-stage"}
    first_part = Checkpoint(folder, cases, identity)

    def log_then_stop(position: int, outcome: Any) -> None:
        first_part.log(position, outcome, 12.5)
        raise Stopped

    with pytest.raises(Stopped):
        run_sequence(lm, cases, settings_for, first_part.edits, log_then_stop)
    assert "_factedit_gate_registry" not in lm.model.__dict__  # the stopped run took its edits off
    with (folder / OUTCOMES).open("a") as log:
        log.write('{"position": 1, "case_id": "c1", "sta')  # a line cut short by the kill

    second_part = Checkpoint(folder, cases, identity)
    assert [e["case_id"] for e in second_part.logged] == ["c0"] and second_part.earlier_seconds() == 12.5
    heard: list[int] = []
    resumed = run_sequence(
        lm, cases, settings_for, second_part.edits,
        lambda position, outcome: (second_part.log(position, outcome, 20.0), heard.append(position)),
        second_part.resume(lm, settings_for),
    )  # fmt: skip
    assert heard == [1]  # the first case was put back, not edited again
    assert [o.status for o in resumed.outcomes] == ["ran", "ran"]
    assert resumed.outcomes[0].metrics["new_fact_accuracy"] == whole.outcomes[0].metrics["new_fact_accuracy"]
    assert resumed.answers_at_end == whole.answers_at_end
    assert figures(resumed) == figures(whole)
    assert resumed.set_aside == whole.set_aside and resumed.base_restored
    assert [e["case_id"] for e in Checkpoint(folder, cases, identity).logged] == ["c0", "c1"]
    with pytest.raises(SystemExit, match="another run"):
        Checkpoint(folder, cases, {"method": "rome"})


def test_resume_must_give_back_the_first_cases_in_order() -> None:
    from pytest_factedit.run.many import run_sequence
    from pytest_factedit.run.outcome import CaseOutcome

    lm, cases, settings_for = two_case_run()
    wrong = [CaseOutcome(case=cases[1], status="skipped", settings=settings_for(cases[1]))]
    with pytest.raises(ValueError, match="case 'c1' at position 0, not 'c0'"):
        run_sequence(lm, cases, settings_for, resume=lambda: wrong)


def test_a_part_stopping_short_of_the_log_checks_only_its_first_edits(tmp_path: Path, monkeypatch) -> None:
    """`--stop-after K` on a checkpoint that logged more: the first K edits are put back (none made again) and
    the end figures are those of a sequence of K, while the log keeps every case."""
    from pytest_factedit.run.many import run_sequence

    monkeypatch.syspath_prepend(str(BENCH))
    from sequence_checkpoint import Checkpoint

    lm, cases, settings_for = two_case_run()
    folder, identity = tmp_path / "checkpoint", {"method": "ia3-two-stage"}
    whole = Checkpoint(folder, cases, identity)
    run_sequence(lm, cases, settings_for, whole.edits, lambda p, o: whole.log(p, o, 10.0 * (p + 1)))
    first_only = run_sequence(lm, cases[:1], settings_for)

    part = Checkpoint(folder, cases, identity)
    assert part.earlier_seconds() == 20.0 and part.earlier_seconds(upto=1) == 10.0
    heard: list[int] = []
    stopped = run_sequence(
        lm, cases[:1], settings_for, part.edits, lambda p, o: heard.append(p), part.resume(lm, settings_for, upto=1)
    )
    assert heard == []  # put back from the checkpoint, not edited again
    assert [o.case.id for o in stopped.outcomes] == ["c0"]
    assert stopped.answers_at_end == first_only.answers_at_end
    assert figures(stopped) == figures(first_only)
    assert stopped.base_restored
    assert [e["case_id"] for e in Checkpoint(folder, cases, identity).logged] == ["c0", "c1"]
