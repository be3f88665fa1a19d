"""What metrics are measured from (the evidence of a case or of many edits) and the rule of each sample.

Pure Python, no torch. The table in `spec.py` names which rule each metric uses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .answers import ProbedAnswer, matches


@dataclass(frozen=True)
class MetricValue:
    """One measured metric with the protocol and sample count it was measured with."""

    name: str
    value: float | None
    samples: int
    protocol: str


@dataclass(frozen=True)
class Sample:
    """One answer a metric counts: whether it hit, and what was expected of it (as a failure table shows it)."""

    answer: ProbedAnswer
    hit: bool
    shown_expected: tuple[str, ...]


@dataclass(frozen=True)
class CaseEvidence:
    """What one case's metrics are measured from: every probed answer, the edited fact, latency timings."""

    answers: tuple[ProbedAnswer, ...]
    old: tuple[str, ...]
    new: tuple[str, ...]
    base_seconds_per_token: float | None = None
    edited_seconds_per_token: float | None = None

    def group(self, *names: str) -> list[ProbedAnswer]:
        return [a for a in self.answers if a.group in names]


@dataclass(frozen=True)
class EditCheck:
    """One edited case's prompts as answered once every edit of a sequence or batch is in place."""

    case_id: str
    new: tuple[str, ...]
    prompts: tuple[str, ...]
    answers_now: tuple[str, ...]


@dataclass(frozen=True)
class ManyEvidence:
    """What the end-of-run metrics of many edits are measured from.

    `controls` hold every case's controls: `base` answered before any edit, `edited` with every edit in place.
    """

    edits: tuple[EditCheck, ...]
    controls: tuple[ProbedAnswer, ...]


def share(hits: Sequence[bool]) -> float | None:
    """Fraction of True values; None when there is nothing to count."""
    return sum(hits) / len(hits) if hits else None


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def answers_new(evidence: CaseEvidence, group: str) -> list[Sample]:
    """Every answer of `group`, hit when the edited answer matches `new`."""
    return [Sample(a, matches(a.edited or "", evidence.new), a.expected) for a in evidence.group(group)]


def new_fact_samples(evidence: CaseEvidence) -> list[Sample]:
    return answers_new(evidence, "prompts")


def paraphrase_samples(evidence: CaseEvidence) -> list[Sample]:
    return answers_new(evidence, "paraphrases")


def forget_samples(evidence: CaseEvidence) -> list[Sample]:
    """Prompts and paraphrases, hit when the edited answer no longer matches `old`."""
    shown = tuple(f"not {a}" for a in evidence.old)
    return [
        Sample(a, not matches(a.edited or "", evidence.old), shown) for a in evidence.group("prompts", "paraphrases")
    ]


def retained_samples(controls: Sequence[ProbedAnswer]) -> list[Sample]:
    """Controls the base model got right, hit when still right after the edit(s)."""
    return [Sample(a, matches(a.edited or "", a.expected), a.expected) for a in controls if matches(a.base, a.expected)]


def control_samples(evidence: CaseEvidence) -> list[Sample]:
    return retained_samples(evidence.group("controls"))


def latency_ratio(evidence: CaseEvidence) -> tuple[float | None, int]:
    """(edited / base seconds per token, prompts + controls timed)."""
    base, edited = evidence.base_seconds_per_token, evidence.edited_seconds_per_token
    ratio = edited / base if base is not None and edited is not None and base > 0 else None
    return ratio, len(evidence.group("prompts", "controls"))


def edit_check_samples(evidence: ManyEvidence) -> list[Sample]:
    """Every edited case's prompts, hit when answered `new` with every edit in place."""
    return [
        Sample(ProbedAnswer("prompts", prompt, check.new, "", now), matches(now, check.new), check.new)
        for check in evidence.edits
        for prompt, now in zip(check.prompts, check.answers_now)
    ]


def many_control_samples(evidence: ManyEvidence) -> list[Sample]:
    return retained_samples(evidence.controls)


def retained_by_case(evidence: ManyEvidence) -> dict[str, float]:
    """Per edited case: the share of its prompts answering `new` with every edit in place."""
    return {
        check.case_id: sum(matches(a, check.new) for a in check.answers_now) / len(check.prompts)
        for check in evidence.edits
    }


def ngram_entropy(text: str) -> float:
    """ROME-style fluency: weighted entropy of the word 2- and 3-gram distributions of a generation.

    Repetitive, degenerate text scores low; the value is compared base vs edited, not gated.
    """
    words = text.split()
    total = 0.0
    for n, weight in ((2, 2 / 3), (3, 4 / 3)):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        count = sum(grams.values())
        if count:
            total += weight * -sum(c / count * math.log2(c / count) for c in grams.values())
    return total / 2
