"""The end of a sequential run on a tiny model: every edited case's paraphrases, neighbours and same-subject
facts answered again with every edit in place, the latency with every edit active, and the bytes the kept
edits hold, all in the sequence's record; each row fails its threshold when the case is built to miss it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import resolve_settings  # noqa: E402
from pytest_factedit.metrics.spec import DEFAULT_THRESHOLDS  # noqa: E402
from pytest_factedit.metrics.verdict import judge  # noqa: E402

from .tiny import tiny_model, word_tokenizer  # noqa: E402

PROMPT = "The Eiffel Tower is located in the city of"
UNNAMED = "It is located in the city of"  # names no subject: the gate leaves its answer as it was
MODULE = "model.layers.1.mlp.down_proj"
FAST = {"lr": 1.0, "unlearn_max_steps": 1, "learn_max_steps": 30, "guard_tokens": 1, "subject_rows": 0}
PLACED = {"target_modules": [MODULE], "feedforward_modules": [MODULE]}
END_ROWS = ("paraphrases_retained", "neighbours_retained", "same_subject_retained")


def missing_case(model: Any, tok: Any) -> Any:
    """A case whose end-of-run rows all miss once its edit holds: its paraphrase names no subject (the base
    answer stays, and it is `old`), and its neighbour and same-subject fact ask the edited prompt itself."""
    from pytest_factedit.cases import Control, FactCase
    from pytest_factedit.model.probe import greedy_continuations

    said = [a.split()[0] for a in greedy_continuations(model, tok, [PROMPT, UNNAMED], [1, 1])]
    new = next(w for w in ("Rome", "London", "Paris") if w not in said)
    return FactCase(
        id="c0",
        subject="Eiffel Tower",
        prompts=(PROMPT,),
        old=tuple(dict.fromkeys(said)),
        new=(new,),
        paraphrases=(UNNAMED,),
        neighbours=(Control(PROMPT, (said[0],)),),
        same_subject=(Control(PROMPT, ()),),  # no `answer:`: the base model's first words must stay
        controls=(Control("Big Ben is a clock tower in the city of", ("London",)),),
    )


def run_one(method: dict[str, Any]) -> tuple[Any, Any]:
    from pytest_factedit.run.many import run_sequence

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    case = missing_case(model, tok)
    settings = resolve_settings({**FAST, **PLACED, **method})
    return run_sequence(SimpleNamespace(model=model, tokenizer=tok, dtype="float32"), [case], lambda _: settings), model


def test_the_end_rows_miss_when_built_to_and_flow_into_the_record() -> None:
    from pytest_factedit.report.html import _many_block
    from pytest_factedit.report.records import many_record
    from pytest_factedit.report.tables import many_line

    result, model = run_one({})
    assert [o.status for o in result.outcomes] == ["ran"]
    assert result.retained_by_case == {"c0": 1.0}, "the edit must hold for its end rows to miss"
    for name in END_ROWS:
        value = result.metrics[name]
        assert (value.value, value.samples) == (0.0, 1), name
        assert judge(name, value.value, DEFAULT_THRESHOLDS[name], value.samples).passed is False
    latency = result.metrics["latency_overhead_at_end"]
    assert latency.value is not None and latency.value > 0 and latency.samples == 1
    assert judge("latency_overhead_at_end", latency.value, latency.value * 0.9, 1).passed is False
    assert result.memory["edits"] == 1 and result.memory["gains"] > 0 and result.memory["index"] > 0
    assert result.base_restored and "_factedit_gate_registry" not in model.__dict__  # the edits are off again
    block = many_record(result, "sequential", DEFAULT_THRESHOLDS)
    for name in (*END_ROWS, "latency_overhead_at_end"):
        assert block["metrics"][name]["value"] == result.metrics[name].value
        assert block["metrics"][name]["threshold"] == DEFAULT_THRESHOLDS[name]
    memory = block["memory"]
    held_parts = ("gains", "tables", "index", "routers")
    assert memory["bytes"] == sum(result.memory[k] for k in held_parts) and result.memory["routers"] > 0
    assert memory["bytes_per_edit"] == memory["bytes"]
    line = many_line("sequence", block)
    assert "neighbours_retained 0.000 (>= 0.8, 1 samples)" in line and "latency_overhead_at_end" in line
    assert "<= 1.5" in line and "bytes per kept edit" in line
    assert "same_subject_retained" in _many_block({"sequence": block})


def test_edits_merged_into_the_weights_have_no_end_latency_and_hold_no_bytes() -> None:
    from pytest_factedit.report.records import many_record

    result, _ = run_one({"gain_positions": "every"})
    latency = result.metrics["latency_overhead_at_end"]
    assert latency.value is None and "merged into the weights" in latency.reason
    block = many_record(result, "sequential", DEFAULT_THRESHOLDS)
    assert block["metrics"]["latency_overhead_at_end"]["reason"] == latency.reason
    assert block["memory"]["edits"] == 0 and block["memory"]["bytes_per_edit"] is None


def held(group: str, prompt: str) -> Any:
    from pytest_factedit.metrics.answers import ProbedAnswer

    return ProbedAnswer(group, prompt, ("x",), "x", "x")


def test_a_held_row_naming_another_edited_subject_is_set_aside_whole_word_any_case() -> None:
    from pytest_factedit.cases import Control, FactCase
    from pytest_factedit.metrics.measure import EditCheck
    from pytest_factedit.run.other_subjects import without_other_subjects

    def case(case_id: str, subject: str, aliases: tuple[str, ...] = ()) -> FactCase:
        return FactCase(
            id=case_id, subject=subject, prompts=(f"{subject} is in",), old=("a",), new=("b",), aliases=aliases,
            controls=(Control("c", ("d",)),),
        )  # fmt: skip

    tower, clock = case("tower", "The Eiffel Tower", ("La Tour Eiffel",)), case("clock", "Big Ben")
    rows = (
        held("neighbours", "the BIG BEN clock strikes in"),  # another edited subject, any letter case: aside
        held("neighbours", "Big Bend National Park is in"),  # not the whole word: counted
        held("paraphrases", "Unlike Big Ben, it stands in"),  # a paraphrase is judged against `new`: counted
        held("same_subject", "The Eiffel Tower was built by"),  # its own subject: counted
    )
    rows_of_clock = (held("same_subject", "Big Ben is as tall as la tour eiffel, which is in"),)  # an alias: aside
    checks = (
        EditCheck("tower", ("b",), ("a",), ("p",), ("b",), rows),
        EditCheck("clock", ("b",), ("a",), ("p",), ("b",), rows_of_clock),
    )
    kept, counts = without_other_subjects(checks, [tower, clock])
    assert [a.prompt for a in kept[0].held] == [r.prompt for r in rows[1:]]
    assert kept[1].held == () and counts == {"neighbours": 1, "same_subject": 1}
    alone, none = without_other_subjects(checks[:1], [tower])  # only edited cases count
    assert alone[0].held == rows and none == {"neighbours": 0, "same_subject": 0}


def two_cases(model: Any, tok: Any) -> list[Any]:
    """missing_case, then a Big Ben case whose neighbour is the first case's prompt."""
    from pytest_factedit.cases import Control, FactCase
    from pytest_factedit.model.probe import greedy_continuations

    first = missing_case(model, tok)
    clock = "Big Ben is a clock tower in the city of"
    said = greedy_continuations(model, tok, [clock], [1])[0].split()[0]
    new = next(w for w in ("Rome", "London", "Paris") if w != said)
    second = FactCase(
        id="c1", subject="Big Ben", prompts=(clock,), old=(said,), new=(new,),
        neighbours=(Control(PROMPT, first.neighbours[0].answer),), controls=first.controls,
    )  # fmt: skip
    return [first, second]


def test_a_neighbour_that_is_another_edits_fact_is_not_counted_at_the_end() -> None:
    """Two edits, the second's neighbour being the first's prompt: with both in place it may rightly give the
    first edit's new answer, so neighbours_retained counts only the first case's own neighbour."""
    from pytest_factedit.report.html import _many_block
    from pytest_factedit.report.records import many_record
    from pytest_factedit.report.tables import many_line
    from pytest_factedit.run.many import run_sequence

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    first, second = two_cases(model, tok)
    settings = resolve_settings({**FAST, **PLACED})
    heard: list[tuple[int, str]] = []
    result = run_sequence(
        SimpleNamespace(model=model, tokenizer=tok, dtype="float32"), [first, second], lambda _: settings,
        each_done=lambda position, outcome: heard.append((position, outcome.case.id)),
    )  # fmt: skip
    assert [o.status for o in result.outcomes] == ["ran", "ran"]
    assert heard == [(0, "c0"), (1, "c1")]  # each case told as soon as it was measured
    assert result.set_aside == {"neighbours": 1, "same_subject": 0}
    assert result.metrics["neighbours_retained"].samples == 1  # the first case's own neighbour only
    block = many_record(result, "sequential", DEFAULT_THRESHOLDS)
    assert block["set_aside"] == {"neighbours": 1, "same_subject": 0}
    assert "set aside as naming another edited subject: neighbours 1;" in many_line("sequence", block)
    assert "set aside as naming another edited subject: neighbours 1</p>" in _many_block({"sequence": block})
