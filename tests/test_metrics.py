"""Answer judging and metric arithmetic (no model)."""

from __future__ import annotations

import pytest

from pytest_factedit import metrics as m


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
    assert m.matches(continuation, aliases) is expected


def test_new_fact_and_forget() -> None:
    assert m.new_fact_accuracy([" Rome", " Paris"], ["Rome"]).value == 0.5
    forget = m.forget_rate([" Rome", " Paris", " Milan"], ["Paris"])
    assert forget.value == pytest.approx(2 / 3) and forget.samples == 3


def test_control_retention_excludes_controls_the_base_got_wrong() -> None:
    value = m.control_retention(base_answers=[" London", " Berlin", " Madrid"],
                                edited_answers=[" London", " Rome", " Madrid"],
                                expected=[["London"], ["Berlin"], ["Lisbon"]])
    assert value.samples == 2 and value.value == 0.5


def test_no_samples_gives_none() -> None:
    assert m.paraphrase_accuracy([], ["Rome"]).value is None


def test_latency_ratio() -> None:
    assert m.latency_overhead(0.01, 0.012, 5).value == pytest.approx(1.2)


def test_ngram_entropy_is_low_for_degenerate_text() -> None:
    fluent = m.ngram_entropy("Rome, Italy. It is the capital of the country and a large city")
    degenerate = m.ngram_entropy("Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome Rome")
    assert degenerate == 0.0 < fluent
    assert m.ngram_entropy("") == 0.0
