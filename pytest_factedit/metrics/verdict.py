"""Thresholds x measured metrics -> verdicts (pure, no torch); and Wilson intervals for pooled rates."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import METRIC_BY_NAME


@dataclass(frozen=True)
class Verdict:
    """Whether one metric meets its threshold, with a one-line explanation.

    `passed` is None when nothing was judged: the metric had no samples (it is skipped, never passed)
    or no threshold (it is recorded only).
    """

    metric: str
    value: float | None
    threshold: float | None
    passed: bool | None
    explanation: str


def judge(metric: str, value: float | None, threshold: float | None, samples: int, reason: str = "") -> Verdict:
    """Compare a value with its threshold in the metric's direction."""
    spec = METRIC_BY_NAME[metric]
    if value is None:
        return Verdict(metric, None, threshold, None, f"{metric}: {reason or 'not measured: no samples'}")
    if threshold is None:
        return Verdict(
            metric, value, None, None, f"{metric} = {value:.3f} over {samples} samples (recorded, no threshold)"
        )
    passed = value >= threshold if spec.direction == "higher" else value <= threshold
    verdict = "meets" if passed else "misses"
    return Verdict(
        metric,
        value,
        threshold,
        passed,
        f"{metric} = {value:.3f} over {samples} samples {verdict} the threshold ({spec.relation} {threshold:g})",
    )


def wilson_interval(hits: int, samples: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): sound near 0 and 1, unlike the normal one."""
    if samples <= 0:
        raise ValueError("a proportion needs at least one sample")
    p = hits / samples
    denominator = 1 + z * z / samples
    centre = (p + z * z / (2 * samples)) / denominator
    half = z * math.sqrt(p * (1 - p) / samples + z * z / (4 * samples * samples)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_worse_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """One-sided exact McNemar test on paired samples: the chance of at least `right_to_wrong` of the
    discordant pairs going that way if neither run were better (Binomial(b + c, 1/2)). Small: worse."""
    if right_to_wrong < 0 or wrong_to_right < 0:
        raise ValueError("counts of discordant pairs cannot be negative")
    discordant = right_to_wrong + wrong_to_right
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(right_to_wrong, discordant + 1))
    outcomes: int = 2**discordant  # typeshed types int ** int as Any (a negative power is a float)
    return tail / outcomes
