"""Answer judging and the metric table's arithmetic (no model)."""

from __future__ import annotations

import pytest

from pytest_factedit.metrics.answers import GROUPS, ProbedAnswer, matches, said
from pytest_factedit.metrics.measure import CaseEvidence, EditCheck, ManyEvidence, ngram_entropy, retained_by_case
from pytest_factedit.metrics.spec import MANY_METRICS, METRIC_BY_NAME, METRICS, MetricSpec
from pytest_factedit.metrics.verdict import wilson_interval


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


@pytest.mark.parametrize(
    ("continuation", "first"),
    [
        (" Sony and Microsoft", "old"),
        (" Microsoft and Sony", "new"),
        (" Microsoft", "new"),
        (" Nintendo", None),
        (" the French language", "old"),
    ],
)
def test_a_continuation_naming_both_answers_says_the_first(continuation: str, first: str | None) -> None:
    aliases = {"old": ["Sony", "French"], "new": ["Microsoft", "Greek"]}
    assert said(continuation, aliases) == first  # both orders: the first named answer wins


def test_ties_go_to_the_longer_alias() -> None:
    assert said(" New York City", {"a": ["New"], "b": ["New York"]}) == "b"


def answer(group, prompt, base, edited, expected=("Rome",), **extra):
    return ProbedAnswer(group, prompt, tuple(expected), base, edited, **extra)


def evidence(*answers, timings=None) -> CaseEvidence:
    """A case whose edit moves Paris to Rome."""
    return CaseEvidence(tuple(answers), ("Paris",), ("Rome",), timings or {})


def measured(name: str, ev: CaseEvidence):
    return METRIC_BY_NAME[name].measure(ev)


def test_new_fact_counts_the_first_named_answer() -> None:
    ev = evidence(answer("prompts", "p0", " Paris", " Rome"), answer("prompts", "p1", " Paris", " Paris and Rome"))
    value = measured("new_fact_accuracy", ev)
    assert value.value == 0.5 and value.hits == 1 and value.samples == 2


def test_forget_and_paraphrase_count_only_what_the_base_model_connected_to_the_fact() -> None:
    ev = evidence(
        answer("prompts", "p", " Paris", " Rome"),
        answer("paraphrases", "known", " Paris", " Rome"),
        answer("paraphrases", "unknown", " London", " London"),  # uninformative: the base never said Paris
    )
    assert measured("paraphrase_accuracy", ev).samples == 1 and measured("paraphrase_accuracy", ev).value == 1.0
    assert measured("paraphrase_accuracy_all", ev).value == 0.5
    assert measured("forget_rate", ev).samples == 2 and measured("forget_rate_all", ev).samples == 3


def test_a_case_whose_paraphrases_are_all_uninformative_is_not_measured_and_says_why() -> None:
    ev = evidence(answer("prompts", "p", " Paris", " Rome"), answer("paraphrases", "q", " London", " Rome"))
    value = measured("paraphrase_accuracy", ev)
    assert value.value is None and value.samples == 0
    assert "none of the 1 paraphrases qualifies" in value.reason and "reword" in value.reason


def test_empty_metrics_have_no_value() -> None:
    value = measured("neighbour_retention", evidence(answer("prompts", "p", " Paris", " Rome")))
    assert value.value is None and "no neighbours" in value.reason


def test_a_neighbour_that_flips_to_the_new_answer_is_lost() -> None:
    ev = evidence(
        answer("neighbours", "Louvre", " Paris", " Rome", expected=("Paris",), shares_old=True),
        answer("neighbours", "Gate", " Berlin", " Berlin", expected=("Berlin",)),
        answer("neighbours", "Colosseum", " Milan", " Milan", expected=("Rome",)),  # base wrong: not counted
    )
    assert measured("neighbour_retention", ev).value == 0.5 and measured("neighbour_retention", ev).samples == 2
    assert measured("neighbour_retention_sharing_old", ev).value == 0.0
    assert measured("neighbour_retention_other", ev).value == 1.0


def test_control_retention_excludes_controls_the_base_got_wrong() -> None:
    ev = evidence(
        answer("controls", "a", " London", " London", expected=("London",)),
        answer("controls", "b", " Berlin", " Rome", expected=("Berlin",)),
        answer("controls", "c", " Madrid", " Madrid", expected=("Lisbon",)),
    )
    value = measured("control_retention", ev)
    assert value.samples == 2 and value.value == 0.5


def test_counterfact_scores_compare_mean_token_logprobs() -> None:
    ev = evidence(
        answer("prompts", "p", " Paris", " Rome", logprobs={"new": -1.0, "old": -2.0}),
        answer("paraphrases", "q", " Paris", " Paris", logprobs={"new": -3.0, "old": -2.0}),
        answer("neighbours", "n", " Paris", " Paris", expected=("Paris",), logprobs={"expected": -1.0, "new": -4.0}),
        answer("controls", "c", " yen", " yen", expected=("yen",), logprobs={"expected": -5.0, "new": -4.0}),
    )
    assert [measured(n, ev).value for n in ("efficacy", "generalization", "specificity", "control_specificity")] == [
        1.0,
        0.0,
        1.0,
        0.0,
    ]
    assert {measured(n, ev).protocol for n in ("efficacy", "specificity")} == {"mean_token_logprob"}


def test_latency_ratio_of_the_minimums() -> None:
    ev = evidence(
        answer("prompts", "p0", " Paris", " Rome"),
        answer("prompts", "p1", " Paris", " Rome"),
        answer("controls", "c", " a", " a", expected=("a",)),
        timings={"base_seconds_per_token": 0.01, "edited_seconds_per_token": 0.012},
    )
    value = measured("latency_overhead", ev)
    # the timed steps run over the prompts only, so the prompts are the samples
    assert value.value == pytest.approx(1.2) and value.samples == 2
    assert measured("latency_overhead_merged", ev).value is None  # no merged timing: not measured


def test_the_failure_samples_are_the_counted_samples() -> None:
    ev = evidence(answer("prompts", "p0", " Paris", " Rome"), answer("prompts", "p1", " Paris", " Paris, France"))
    forget = METRIC_BY_NAME["forget_rate"].samples(ev)
    assert [s.hit for s in forget] == [True, False] and forget[1].shown_expected == ("not Paris",)


def test_many_edit_metrics_count_every_prompt_and_the_controls_right_before() -> None:
    many = ManyEvidence(
        (
            EditCheck("a", ("Rome",), ("Paris",), ("p0", "p1"), (" Rome", " Paris")),
            EditCheck("b", ("Oslo",), ("Bergen",), ("p2",), (" Oslo",)),
        ),
        (
            ProbedAnswer("controls", "c", ("London",), " London", " Rome"),
            ProbedAnswer("controls", "d", ("Tokyo",), " Kyoto", " Tokyo"),
        ),
    )
    values = {spec.name: spec.measure(many) for spec in MANY_METRICS}
    assert values["edits_retained"].value == pytest.approx(2 / 3) and values["edits_retained"].samples == 3
    assert values["controls_retained"].value == 0.0 and values["controls_retained"].samples == 1
    assert retained_by_case(many) == {"a": 0.5, "b": 1.0}


def test_end_of_run_rows_count_by_the_per_case_rules_over_every_edited_case() -> None:
    from pytest_factedit.metrics.verdict import judge

    held = (
        ProbedAnswer("paraphrases", "q0", ("Rome",), " Paris", " Rome"),
        ProbedAnswer("paraphrases", "q1", ("Rome",), " Lyon", " Lyon"),  # base did not say old: not counted
        ProbedAnswer("neighbours", "n0", ("Berlin",), " Berlin", " Rome"),
        ProbedAnswer("neighbours", "n1", ("Madrid",), " Lisbon", " Lisbon"),  # base wrong: not counted
        ProbedAnswer("same_subject", "s0", ("france",), " France", " France", unchanged=True),  # base first words
    )
    many = ManyEvidence(
        (EditCheck("a", ("Rome",), ("Paris",), ("p0",), (" Rome",), held),),
        (),
        {"base_seconds_per_token": 0.01, "edited_seconds_per_token": 0.02},
        4,
    )
    values = {spec.name: spec.measure(many) for spec in MANY_METRICS}
    assert (values["paraphrases_retained"].value, values["paraphrases_retained"].samples) == (1.0, 1)
    assert (values["neighbours_retained"].value, values["neighbours_retained"].samples) == (0.0, 1)
    assert (values["same_subject_retained"].value, values["same_subject_retained"].samples) == (1.0, 1)
    assert (values["latency_overhead_at_end"].value, values["latency_overhead_at_end"].samples) == (2.0, 4)
    for name in ("neighbours_retained", "latency_overhead_at_end"):
        spec = METRIC_BY_NAME[name]
        assert judge(name, values[name].value, spec.default_threshold, values[name].samples).passed is False
    untimed = METRIC_BY_NAME["latency_overhead_at_end"].measure(ManyEvidence((), ()))
    assert untimed.value is None and "merged into the weights" in untimed.reason


def test_every_metric_row_is_complete() -> None:
    for spec in METRICS + MANY_METRICS:
        assert spec.label and spec.protocol and spec.definition and spec.direction in ("higher", "lower")
        assert set(spec.reads) <= set(GROUPS)
    with pytest.raises(ValueError, match="exactly one"):
        MetricSpec(
            name="x",
            item="x",
            label="x",
            direction="higher",
            default_threshold=0.5,
            reads=(),
            protocol="greedy_generation",
            definition="d",
        )


def test_wilson_interval_by_hand() -> None:
    # 8 of 10, z = 1.96, z^2 = 3.8415: denominator 1 + 0.38415 = 1.38415; centre (0.8 + 0.19207) / 1.38415 =
    # 0.71674; half 1.96 * sqrt(0.8 * 0.2 / 10 + 3.8415 / 400) / 1.38415 = 1.96 * 0.16001 / 1.38415 = 0.22658
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_ngram_entropy_is_low_for_degenerate_text() -> None:
    fluent = ngram_entropy("Rome, Italy. It is the capital of the country and a large city")
    degenerate = ngram_entropy("Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome")
    assert degenerate == 0.0 < fluent
    assert ngram_entropy("") == 0.0
