"""Answer judging and the metric table's arithmetic (no model)."""

from __future__ import annotations

import pytest

from pytest_factedit.metrics.answers import ProbedAnswer, matches
from pytest_factedit.metrics.measure import CaseEvidence, EditCheck, ManyEvidence, ngram_entropy, retained_by_case
from pytest_factedit.metrics.spec import MANY_METRICS, METRIC_BY_NAME, METRICS, MetricSpec


@pytest.mark.parametrize(
    ("continuation", "aliases", "expected"),
    [
        (" Rome, Italy. It is", ["Rome"], True),
        (" rome is lovely", ["Rome"], True),
        (" Romeo and Juliet", ["Rome"], False),
        (" the city of Rome", ["Rome"], True),
        (" Paris\nRome", ["Rome"], False),  # judged only up to the first line break
        (" New York City", ["New York"], True),
        (" soccer player", ["football", "soccer"], True),
        (" U.S. dollar", ["U.S."], True),
        ("", ["Rome"], False),
    ],
)
def test_matches_at_word_boundaries(continuation: str, aliases: list[str], expected: bool) -> None:
    assert matches(continuation, aliases) is expected


def evidence(prompts=(), paraphrases=(), controls=(), base_spt=None, edited_spt=None) -> CaseEvidence:
    """Edited answers of prompts and paraphrases; (base, edited, expected) of controls; old Paris, new Rome."""
    answers = [ProbedAnswer("prompts", f"p{i}", ("Rome",), " Paris", a) for i, a in enumerate(prompts)]
    answers += [ProbedAnswer("paraphrases", f"q{i}", ("Rome",), " Paris", a) for i, a in enumerate(paraphrases)]
    answers += [ProbedAnswer("controls", f"c{i}", tuple(x), b, a) for i, (b, a, x) in enumerate(controls)]
    return CaseEvidence(tuple(answers), ("Paris",), ("Rome",), base_spt, edited_spt)


def measured(name: str, ev: CaseEvidence):
    return METRIC_BY_NAME[name].measure(ev)


def test_new_fact_and_forget() -> None:
    assert measured("new_fact_accuracy", evidence(prompts=[" Rome", " Paris"])).value == 0.5
    forget = measured("forget_rate", evidence(prompts=[" Rome", " Paris"], paraphrases=[" Milan"]))
    assert forget.value == pytest.approx(2 / 3) and forget.samples == 3


def test_control_retention_excludes_controls_the_base_got_wrong() -> None:
    value = measured(
        "control_retention",
        evidence(
            controls=[
                (" London", " London", ["London"]),
                (" Berlin", " Rome", ["Berlin"]),
                (" Madrid", " Madrid", ["Lisbon"]),
            ]
        ),
    )
    assert value.samples == 2 and value.value == 0.5


def test_no_samples_gives_none() -> None:
    assert measured("paraphrase_accuracy", evidence(prompts=[" Rome"])).value is None


def test_latency_ratio() -> None:
    value = measured(
        "latency_overhead",
        evidence(prompts=[" Rome"] * 3, controls=[(" a", " a", ["a"])] * 2, base_spt=0.01, edited_spt=0.012),
    )
    assert value.value == pytest.approx(1.2) and value.samples == 5


def test_the_failure_samples_are_the_counted_samples() -> None:
    forget = METRIC_BY_NAME["forget_rate"].samples(evidence(prompts=[" Rome", " Paris, France"]))
    assert [s.hit for s in forget] == [True, False] and forget[1].shown_expected == ("not Paris",)


def test_many_edit_metrics_count_every_prompt_and_the_controls_right_before() -> None:
    many = ManyEvidence(
        (EditCheck("a", ("Rome",), ("p0", "p1"), (" Rome", " Paris")), EditCheck("b", ("Oslo",), ("p2",), (" Oslo",))),
        (
            ProbedAnswer("controls", "c", ("London",), " London", " Rome"),
            ProbedAnswer("controls", "d", ("Tokyo",), " Kyoto", " Tokyo"),
        ),
    )
    values = {spec.name: spec.measure(many) for spec in MANY_METRICS}
    assert values["edits_retained"].value == pytest.approx(2 / 3) and values["edits_retained"].samples == 3
    assert values["controls_retained"].value == 0.0 and values["controls_retained"].samples == 1
    assert retained_by_case(many) == {"a": 0.5, "b": 1.0}


def test_every_metric_row_is_complete() -> None:
    for spec in METRICS + MANY_METRICS:
        assert spec.label and spec.protocol and spec.description and spec.direction in ("higher", "lower")
        assert set(spec.reads) <= {"prompts", "paraphrases", "controls"}
    with pytest.raises(ValueError, match="exactly one"):
        MetricSpec("x", "x", "x", "higher", 0.5, (), "p", "d")


def test_ngram_entropy_is_low_for_degenerate_text() -> None:
    fluent = ngram_entropy("Rome, Italy. It is the capital of the country and a large city")
    degenerate = ngram_entropy("Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome")
    assert degenerate == 0.0 < fluent
    assert ngram_entropy("") == 0.0
