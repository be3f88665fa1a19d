"""The metric table: everything about each gated metric, in one row. Every other module iterates over it.

A row says the metric's name (the YAML/record key), its pytest item, its short label in tables, its
direction and default threshold, the answer groups it reads, how it is measured and under which
protocol. Share metrics count `samples`; the others `compute` their value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .answers import JUDGE_PROTOCOL
from .measure import (
    MetricValue,
    Sample,
    control_samples,
    edit_check_samples,
    forget_samples,
    latency_ratio,
    many_control_samples,
    new_fact_samples,
    paraphrase_samples,
    share,
)

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class MetricSpec:
    """A gated metric. Exactly one of `samples` (a share of hits) and `compute` (any value) is given."""

    name: str
    item: str
    label: str
    direction: Direction
    default_threshold: float
    reads: tuple[str, ...]
    protocol: str
    description: str
    samples: Callable[[Any], Sequence[Sample]] | None = None
    compute: Callable[[Any], tuple[float | None, int]] | None = None

    def __post_init__(self) -> None:
        if (self.samples is None) == (self.compute is None):
            raise ValueError(f"metric {self.name}: give exactly one of samples and compute")

    def measure(self, evidence: Any) -> MetricValue:
        """The metric's value over `evidence` (a CaseEvidence, or a ManyEvidence for the end-of-run rows)."""
        if self.samples is not None:
            hits = [s.hit for s in self.samples(evidence)]
            return MetricValue(self.name, share(hits), len(hits), self.protocol)
        assert self.compute is not None
        value, count = self.compute(evidence)
        return MetricValue(self.name, value, count, self.protocol)

    @property
    def relation(self) -> str:
        return ">=" if self.direction == "higher" else "<="


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "new_fact_accuracy",
        "new_fact_accuracy",
        "new fact",
        "higher",
        1.0,
        ("prompts",),
        f"prompts answered `new`; {JUDGE_PROTOCOL}",
        "share of prompts whose greedy answer matches `new`",
        samples=new_fact_samples,
    ),
    MetricSpec(
        "forget_rate",
        "forget_rate",
        "forget",
        "higher",
        0.8,
        ("prompts", "paraphrases"),
        f"prompts + paraphrases no longer answered `old`; {JUDGE_PROTOCOL}",
        "share of prompts + paraphrases whose answer no longer matches `old`",
        samples=forget_samples,
    ),
    MetricSpec(
        "paraphrase_accuracy",
        "paraphrase_accuracy",
        "paraphrase",
        "higher",
        0.5,
        ("paraphrases",),
        f"held-out paraphrases answered `new`; {JUDGE_PROTOCOL}",
        "share of held-out paraphrases whose answer matches `new`",
        samples=paraphrase_samples,
    ),
    MetricSpec(
        "control_retention",
        "control_retention",
        "controls",
        "higher",
        0.9,
        ("controls",),
        f"controls right before the edit and still right after; {JUDGE_PROTOCOL}",
        "share of controls the base model got right that are still right",
        samples=control_samples,
    ),
    MetricSpec(
        "latency_overhead",
        "latency",
        "latency",
        "lower",
        1.5,
        (),
        "edited / base greedy generation seconds per token over prompts + controls (best of repeats)",
        "edited / base generation seconds per token over prompts + controls",
        compute=latency_ratio,
    ),
)

# Gated once per run in `--factedit-mode sequential` (after the last edit) and `batch` (with the batch adapter).
MANY_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "edits_retained",
        "edits_retained",
        "edits retained",
        "higher",
        0.9,
        ("prompts",),
        "prompts of every edited case answering new, with every edit in place",
        "share of every edited case's prompts answering `new` with every edit in place",
        samples=edit_check_samples,
    ),
    MetricSpec(
        "controls_retained",
        "controls_retained",
        "controls retained",
        "higher",
        0.9,
        ("controls",),
        "controls right before any edit, still right with every edit in place",
        "share of all controls (right before any edit) still right with every edit in place",
        samples=many_control_samples,
    ),
)

METRIC_BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS + MANY_METRICS}
METRIC_BY_ITEM: dict[str, MetricSpec] = {m.item: m for m in METRICS}
DEFAULT_THRESHOLDS: dict[str, float] = {m.name: m.default_threshold for m in METRICS + MANY_METRICS}


def thresholds_with(overrides: Mapping[str, float]) -> dict[str, float]:
    """The default thresholds with a case's (already merged `_defaults.yaml` + case) values on top."""
    return {**DEFAULT_THRESHOLDS, **overrides}
