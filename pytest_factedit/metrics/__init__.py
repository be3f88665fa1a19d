"""Metrics: how answers are judged (`answers.py`), what is measured (`measure.py`), the metric table
(`spec.py`) and verdicts against thresholds (`verdict.py`). Pure Python: no torch."""

from .answers import JUDGE_PROTOCOL, ProbedAnswer, cut_answer, matches
from .measure import CaseEvidence, ManyEvidence, MetricValue
from .spec import DEFAULT_THRESHOLDS, MANY_METRICS, METRIC_BY_ITEM, METRIC_BY_NAME, METRICS, MetricSpec
from .verdict import Verdict, judge

__all__ = [
    "DEFAULT_THRESHOLDS",
    "JUDGE_PROTOCOL",
    "MANY_METRICS",
    "METRICS",
    "METRIC_BY_ITEM",
    "METRIC_BY_NAME",
    "CaseEvidence",
    "ManyEvidence",
    "MetricSpec",
    "MetricValue",
    "ProbedAnswer",
    "Verdict",
    "cut_answer",
    "judge",
    "matches",
]
