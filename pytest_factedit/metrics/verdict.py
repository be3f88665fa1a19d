"""Thresholds x measured metrics -> verdicts (pure, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from .spec import METRIC_BY_NAME


@dataclass(frozen=True)
class Verdict:
    """Whether one metric meets its threshold, with a one-line explanation."""

    metric: str
    value: float | None
    threshold: float
    passed: bool
    explanation: str


def judge(metric: str, value: float | None, threshold: float, samples: int) -> Verdict:
    """Compare a value with its threshold in the metric's direction; no samples means nothing to judge."""
    spec = METRIC_BY_NAME[metric]
    if value is None:
        return Verdict(metric, None, threshold, True, f"{metric}: no samples to measure")
    passed = value >= threshold if spec.direction == "higher" else value <= threshold
    verdict = "meets" if passed else "misses"
    return Verdict(
        metric,
        value,
        threshold,
        passed,
        f"{metric} = {value:.3f} over {samples} samples {verdict} the threshold ({spec.relation} {threshold:g})",
    )
