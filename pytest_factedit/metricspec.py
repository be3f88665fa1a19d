"""Metric names, directions and default thresholds: the one place they are defined."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MetricSpec:
    """A gated metric: its name, the pytest item that asserts it and its direction."""

    name: str
    item: str
    direction: Literal["higher", "lower"]
    default_threshold: float
    description: str


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("new_fact_accuracy", "new_fact_accuracy", "higher", 1.0,
               "share of prompts whose greedy answer matches `new`"),
    MetricSpec("forget_rate", "forget_rate", "higher", 0.8,
               "share of prompts + paraphrases whose answer no longer matches `old`"),
    MetricSpec("paraphrase_accuracy", "paraphrase_accuracy", "higher", 0.5,
               "share of held-out paraphrases whose answer matches `new`"),
    MetricSpec("control_retention", "control_retention", "higher", 0.9,
               "share of controls the base model got right that are still right"),
    MetricSpec("latency_overhead", "latency", "lower", 1.5,
               "edited / base generation seconds per token over prompts + controls"),
)

# Gated once per run in `--factedit-mode sequential` (after the last edit) and `batch` (with the batch adapter).
SEQUENCE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("edits_retained", "edits_retained", "higher", 0.9,
               "share of every edited case's prompts answering `new` with every edit in place"),
    MetricSpec("controls_retained", "controls_retained", "higher", 0.9,
               "share of all controls (right before any edit) still right with every edit in place"),
)

METRIC_BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS + SEQUENCE_METRICS}
METRIC_BY_ITEM: dict[str, MetricSpec] = {m.item: m for m in METRICS}
DEFAULT_THRESHOLDS: dict[str, float] = {m.name: m.default_threshold for m in METRICS + SEQUENCE_METRICS}
