"""The metric table: everything about each metric, in one row. Every other module iterates over it.

A row says the metric's name (the YAML/record key), its pytest item, its short label in tables, its
direction, its default threshold (None: recorded, gated only when a threshold is set), the answer
groups it reads, its protocol tag, its definition, and how it is measured. Share metrics count
`samples` (and say, through `condition` and `remedy`, why they may have none); the others `compute`.
docs/metrics.md explains each row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import measure as m
from .measure import MetricValue, Sample, share

Direction = Literal["higher", "lower"]
Protocol = Literal["greedy_generation", "mean_token_logprob", "step_time"]
GREEDY: Protocol = "greedy_generation"
LOGPROB: Protocol = "mean_token_logprob"


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """A metric. Exactly one of `samples` (a share of hits) and `compute` (any value) is given.

    Fields by keyword only: a row of the table reads as what each value is.
    """

    name: str
    item: str
    label: str
    direction: Direction
    default_threshold: float | None
    reads: tuple[str, ...]
    protocol: Protocol
    definition: str
    samples: Callable[[Any], Sequence[Sample]] | None = None
    compute: Callable[[Any], tuple[float | None, int]] | None = None
    condition: str = ""  # which answers of `reads` count, when not all do ("the base model answered `old`")
    remedy: str = ""  # what the case author can do when none does
    absent: str = ""  # why a computed metric can have no value
    # How much worse than a baseline's value still passes when --factedit-tolerance does not say: 0 for
    # answers (a run on one machine is deterministic), more for timings (which never are).
    baseline_tolerance: float = 0.0

    def __post_init__(self) -> None:
        if (self.samples is None) == (self.compute is None):
            raise ValueError(f"metric {self.name}: give exactly one of samples and compute")

    def measure(self, evidence: Any) -> MetricValue:
        """The metric over `evidence` (a CaseEvidence, or a ManyEvidence for the end-of-run rows)."""
        if self.samples is not None:
            hits = [s.hit for s in self.samples(evidence)]
            value = MetricValue(self.name, share(hits), len(hits), self.protocol, sum(hits))
        else:
            assert self.compute is not None
            number, count = self.compute(evidence)
            value = MetricValue(self.name, number, count, self.protocol)
        return value if value.value is not None else dataclasses.replace(value, reason=self.why_empty(evidence))

    def why_empty(self, evidence: Any) -> str:
        """Why there was nothing to count: the case lacks the groups, or none of them met the condition."""
        if self.absent:
            return f"not measured: {self.absent}"
        total = len(evidence.group(*self.reads)) if hasattr(evidence, "group") else 0
        groups = " or ".join(self.reads)
        if total == 0 or not self.condition:
            return f"not measured: there are no {groups} to count"
        return f"not measured: none of the {total} {groups} qualifies ({self.condition})" + (
            f"; {self.remedy}" if self.remedy else ""
        )

    @property
    def relation(self) -> str:
        return ">=" if self.direction == "higher" else "<="

    @property
    def gated_by_default(self) -> bool:
        return self.default_threshold is not None


_OLD = "the base model must answer it with `old`"
_REWORD = "reword them so that the unedited model gives the old answer, or they measure the model, not the edit"
_RIGHT = "the base model must get it right"
_KNOWN = "use facts the unedited model knows"

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        name="new_fact_accuracy",
        item="new_fact_accuracy",
        label="new",
        direction="higher",
        default_threshold=1.0,
        reads=("prompts",),
        protocol=GREEDY,
        definition="share of prompts whose greedy answer names `new` (before `old`)",
        samples=m.new_fact_samples,
    ),
    MetricSpec(
        name="forget_rate",
        item="forget_rate",
        label="forget",
        direction="higher",
        default_threshold=0.8,
        reads=("prompts", "paraphrases"),
        protocol=GREEDY,
        definition="share of the prompts and paraphrases the base model answered with `old` whose edited answer no "
        "longer names `old` first",
        samples=m.forget_samples,
        condition=_OLD,
        remedy=_REWORD,
    ),
    MetricSpec(
        name="paraphrase_accuracy",
        item="paraphrase_accuracy",
        label="para",
        direction="higher",
        default_threshold=0.5,
        reads=("paraphrases",),
        protocol=GREEDY,
        definition="share of the held-out paraphrases the base model answered with `old` whose edited "
        "answer names `new`",
        samples=m.paraphrase_samples,
        condition=_OLD,
        remedy=_REWORD,
    ),
    MetricSpec(
        name="neighbour_retention",
        item="neighbour_retention",
        label="nbrs",
        direction="higher",
        default_threshold=0.8,
        reads=("neighbours",),
        protocol=GREEDY,
        definition="share of the neighbours (other subjects, same relation) the base model got right "
        "that are still right",
        samples=m.neighbour_samples,
        condition=_RIGHT,
        remedy=_KNOWN,
    ),
    MetricSpec(
        name="control_retention",
        item="control_retention",
        label="ctrls",
        direction="higher",
        default_threshold=0.9,
        reads=("controls",),
        protocol=GREEDY,
        definition="share of the controls (general facts) the base model got right that are still right",
        samples=m.control_samples,
        condition=_RIGHT,
        remedy=_KNOWN,
    ),
    MetricSpec(
        name="relation_specificity",
        item="relation_specificity",
        label="same subj",
        direction="higher",
        default_threshold=0.8,
        reads=("same_subject",),
        protocol=GREEDY,
        definition="share of the other facts about the edited subject (`same_subject`: other relations) "
        "the base model got "
        "right that are still right; an entry without `answer:` must keep the base model's first words",
        samples=m.same_subject_samples,
        condition=_RIGHT,
        remedy="use facts the unedited model knows, or leave out `answer:` to keep whatever it says",
    ),
    MetricSpec(
        name="context_retention",
        item="context_retention",
        label="context",
        direction="higher",
        default_threshold=0.9,
        reads=("context",),
        protocol=GREEDY,
        definition="share of the neighbours and controls, each behind a sentence that names the edited "
        "subject, the base "
        "model got right (so prefixed) that are still right",
        samples=m.context_samples,
        condition=_RIGHT,
        remedy=_KNOWN,
    ),
    MetricSpec(
        name="latency_overhead",
        item="latency",
        label="latency",
        direction="lower",
        default_threshold=1.5,
        reads=("prompts",),
        protocol="step_time",
        definition="edited / base seconds per generated token (one greedy step over the prompts): the minimum of "
        "interleaved timings of the decoder pass each, plus the LM head's, timed once on the last edited step",
        compute=m.latency_ratio,
        absent="nothing was timed",
        baseline_tolerance=0.25,
    ),
    # Recorded, and gated only when a case or suite sets a threshold:
    MetricSpec(
        name="forget_rate_all",
        item="forget_rate_all",
        label="forget (all)",
        direction="higher",
        default_threshold=None,
        reads=("prompts", "paraphrases"),
        protocol=GREEDY,
        definition="share of all prompts and paraphrases whose edited answer no longer names `old` first",
        samples=m.forget_all_samples,
    ),
    MetricSpec(
        name="paraphrase_accuracy_all",
        item="paraphrase_accuracy_all",
        label="paraphrase (all)",
        direction="higher",
        default_threshold=None,
        reads=("paraphrases",),
        protocol=GREEDY,
        definition="share of all held-out paraphrases whose edited answer names `new`",
        samples=m.paraphrase_all_samples,
    ),
    MetricSpec(
        name="neighbour_retention_sharing_old",
        item="neighbour_retention_sharing_old",
        label="nbr old",
        direction="higher",
        default_threshold=None,
        reads=("neighbours",),
        protocol=GREEDY,
        definition="neighbour_retention over the neighbours whose answer is the edited fact's `old` (the hardest kind)",
        samples=m.neighbour_sharing_old_samples,
        condition=_RIGHT,
    ),
    MetricSpec(
        name="neighbour_retention_other",
        item="neighbour_retention_other",
        label="nbr other",
        direction="higher",
        default_threshold=None,
        reads=("neighbours",),
        protocol=GREEDY,
        definition="neighbour_retention over the neighbours with another answer",
        samples=m.neighbour_other_samples,
        condition=_RIGHT,
    ),
    MetricSpec(
        name="alias_accuracy",
        item="alias_accuracy",
        label="alias",
        direction="higher",
        default_threshold=None,
        reads=("aliases",),
        protocol=GREEDY,
        definition="share of the prompts and paraphrases with an alias in place of the subject (held "
        "out) the base model "
        "answered with `old` whose edited answer names `new`",
        samples=m.alias_samples,
        condition=_OLD,
        remedy="declare aliases the unedited model connects to the fact",
    ),
    MetricSpec(
        name="portability",
        item="portability",
        label="portability",
        direction="higher",
        default_threshold=None,
        reads=("implications",),
        protocol=GREEDY,
        definition="share of the `implications` (what should change with the edit) whose edited answer "
        "names their answer "
        "before `new`",
        samples=m.implication_samples,
    ),
    MetricSpec(
        name="efficacy",
        item="efficacy",
        label="efficacy",
        direction="higher",
        default_threshold=None,
        reads=("prompts",),
        protocol=LOGPROB,
        definition="CounterFact efficacy: share of prompts where P(new) > P(old)",
        samples=m.efficacy_samples,
    ),
    MetricSpec(
        name="generalization",
        item="generalization",
        label="generalization",
        direction="higher",
        default_threshold=None,
        reads=("paraphrases",),
        protocol=LOGPROB,
        definition="CounterFact generalization: share of paraphrases where P(new) > P(old)",
        samples=m.generalization_samples,
    ),
    MetricSpec(
        name="specificity",
        item="specificity",
        label="specificity",
        direction="higher",
        default_threshold=None,
        reads=("neighbours",),
        protocol=LOGPROB,
        definition="CounterFact specificity: share of neighbours where P(their answer) > P(new)",
        samples=m.specificity_samples,
    ),
    MetricSpec(
        name="control_specificity",
        item="control_specificity",
        label="control specificity",
        direction="higher",
        default_threshold=None,
        reads=("controls",),
        protocol=LOGPROB,
        definition="the specificity rule on the controls: share where P(their answer) > P(new)",
        samples=m.control_specificity_samples,
    ),
    MetricSpec(
        name="latency_overhead_merged",
        item="latency_merged",
        label="latency merged",
        direction="lower",
        default_threshold=None,
        reads=("prompts",),
        protocol="step_time",
        definition="merged / base seconds per generated token, the adapter folded into the weights (peft editors only)",
        compute=m.merged_latency_ratio,
        absent="the edit has no adapter to merge",
        baseline_tolerance=0.25,
    ),
)

# Gated once per run in `--factedit-mode sequential` (after the last edit) and `batch` (with the batch adapter).
MANY_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        name="edits_retained",
        item="edits_retained",
        label="edits retained",
        direction="higher",
        default_threshold=0.9,
        reads=("prompts",),
        protocol=GREEDY,
        definition="share of every edited case's prompts answering `new` with every edit in place",
        samples=m.edit_check_samples,
    ),
    MetricSpec(
        name="controls_retained",
        item="controls_retained",
        label="controls retained",
        direction="higher",
        default_threshold=0.9,
        reads=("controls",),
        protocol=GREEDY,
        definition="share of all controls (right before any edit) still right with every edit in place",
        samples=m.many_control_samples,
    ),
    MetricSpec(
        name="paraphrases_retained",
        item="paraphrases_retained",
        label="paraphrases retained",
        direction="higher",
        default_threshold=0.5,
        reads=("paraphrases",),
        protocol=GREEDY,
        definition="share of every edited case's paraphrases the base model answered with `old` that answer "
        "`new` with every edit in place",
        samples=m.paraphrases_at_end_samples,
        condition=_OLD,
        remedy=_REWORD,
    ),
    MetricSpec(
        name="neighbours_retained",
        item="neighbours_retained",
        label="neighbours retained",
        direction="higher",
        default_threshold=0.8,
        reads=("neighbours",),
        protocol=GREEDY,
        definition="share of every edited case's neighbours (right before any edit) still right with every "
        "edit in place; one naming a subject another case edits is set aside",
        samples=m.neighbours_at_end_samples,
        condition=_RIGHT,
        remedy=_KNOWN,
    ),
    MetricSpec(
        name="same_subject_retained",
        item="same_subject_retained",
        label="same subject retained",
        direction="higher",
        default_threshold=0.8,
        reads=("same_subject",),
        protocol=GREEDY,
        definition="share of every edited case's same-subject facts (right before any edit) still right with "
        "every edit in place; an entry without `answer:` must keep the base model's first words; one naming "
        "a subject another case edits is set aside",
        samples=m.same_subject_at_end_samples,
        condition=_RIGHT,
        remedy="use facts the unedited model knows, or leave out `answer:` to keep whatever it says",
    ),
    MetricSpec(
        name="latency_overhead_at_end",
        item="latency_at_end",
        label="latency at end",
        direction="lower",
        default_threshold=1.5,
        reads=("prompts",),
        protocol="step_time",
        definition="seconds per generated token with every edit active / with every edit off (one greedy step "
        "over the edited prompts), timed as latency_overhead's",
        compute=m.latency_ratio_at_end,
        absent="no edit on the model can be switched off (edits merged into the weights leave no edits-off "
        "model to time against), or nothing was edited",
        baseline_tolerance=0.25,
    ),
)

# The summary table's columns, one metric (so one protocol) each: the metrics gated by default. The suite
# table below it shows every share metric pooled, the hardest neighbours among them.
COLUMNS: tuple[str, ...] = tuple(spec.name for spec in METRICS if spec.gated_by_default)

METRIC_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS + MANY_METRICS}
METRIC_BY_ITEM: dict[str, MetricSpec] = {spec.item: spec for spec in METRICS}
DEFAULT_THRESHOLDS: dict[str, float] = {
    spec.name: spec.default_threshold for spec in METRICS + MANY_METRICS if spec.default_threshold is not None
}


def threshold_problem(name: str, value: float) -> str:
    """Why `value` cannot be the threshold of metric `name` ('' when it can): shares lie in [0, 1], and
    ratios are not negative. YAML and the command line check thresholds with this one rule."""
    if not math.isfinite(value):
        return f"expected a finite number, found {value}"
    if METRIC_BY_NAME[name].samples is not None and not 0.0 <= value <= 1.0:
        return f"expected a share between 0 and 1, found {value:g}"
    if value < 0:
        return f"expected a non-negative number, found {value:g}"
    return ""


def worse_by(name: str, value: float, baseline: float) -> float:
    """How much worse `value` is than `baseline` in the metric's direction (negative: better)."""
    return baseline - value if METRIC_BY_NAME[name].direction == "higher" else value - baseline


def thresholds_with(overrides: Mapping[str, float]) -> dict[str, float]:
    """The default thresholds with a case's (already merged `_defaults.yaml` + case) values on top."""
    return {**DEFAULT_THRESHOLDS, **overrides}
