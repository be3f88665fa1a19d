"""Thresholds: defaults live in one place, directions are respected, overrides win."""

from __future__ import annotations

from pathlib import Path

import yaml

from pytest_factedit.cases import load_case
from pytest_factedit.metrics.spec import DEFAULT_THRESHOLDS, MANY_METRICS, METRICS, thresholds_with
from pytest_factedit.metrics.verdict import judge

GATED = [
    "new_fact_accuracy",
    "forget_rate",
    "paraphrase_accuracy",
    "neighbour_retention",
    "control_retention",
    "relation_specificity",
    "context_retention",
    "latency",
]


def test_gated_metrics_have_default_thresholds_and_recorded_ones_do_not() -> None:
    assert set(DEFAULT_THRESHOLDS) == {m.name for m in METRICS + MANY_METRICS if m.default_threshold is not None}
    assert [m.item for m in MANY_METRICS] == [
        "edits_retained",
        "controls_retained",
        "paraphrases_retained",
        "neighbours_retained",
        "same_subject_retained",
        "latency_at_end",
    ]
    assert [m.item for m in METRICS if m.gated_by_default] == GATED
    recorded = {m.name for m in METRICS if not m.gated_by_default}
    assert {
        "efficacy",
        "generalization",
        "specificity",
        "control_specificity",
        "forget_rate_all",
        "paraphrase_accuracy_all",
        "neighbour_retention_sharing_old",
        "alias_accuracy",
        "portability",
    } <= recorded
    assert DEFAULT_THRESHOLDS["neighbour_retention"] == 0.8


def test_higher_is_better_metrics() -> None:
    assert judge("forget_rate", 0.9, 0.9, 10).passed
    assert not judge("forget_rate", 0.89, 0.9, 10).passed


def test_lower_is_better_metrics() -> None:
    assert judge("latency_overhead", 1.2, 1.5, 4).passed
    verdict = judge("latency_overhead", 1.6, 1.5, 4)
    assert not verdict.passed and "<= 1.5" in verdict.explanation


def test_nothing_to_measure_is_skipped_never_passed() -> None:
    verdict = judge("paraphrase_accuracy", None, 0.5, 0, "not measured: no paraphrases")
    assert verdict.passed is None and "not measured: no paraphrases" in verdict.explanation


def test_a_recorded_metric_is_not_judged_without_a_threshold() -> None:
    assert judge("efficacy", 0.4, None, 3).passed is None
    assert judge("efficacy", 0.4, 0.5, 3).passed is False  # gated once a threshold is set


def test_case_overrides_defaults_file_overrides_builtin(tmp_path: Path) -> None:
    (tmp_path / "_defaults.yaml").write_text(
        yaml.safe_dump({"thresholds": {"control_retention": 0.7, "forget_rate": 0.8}})
    )
    case = {
        "subject": "X",
        "prompts": ["X is in"],
        "old": "a",
        "new": "b",
        "controls": [{"prompt": "Y is in", "answer": "c"}],
        "thresholds": {"forget_rate": 0.6},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(case))
    thresholds = thresholds_with(load_case(tmp_path / "c.yaml", root=tmp_path).thresholds)
    assert thresholds["forget_rate"] == 0.6
    assert thresholds["control_retention"] == 0.7
    assert thresholds["new_fact_accuracy"] == DEFAULT_THRESHOLDS["new_fact_accuracy"]
