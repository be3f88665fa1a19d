"""What metrics are measured from (the evidence of a case or of many edits) and the rule of each sample.

Pure Python, no torch. The table in `spec.py` names which rule each metric uses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .answers import ProbedAnswer, first_words, matches, said


@dataclass(frozen=True)
class MetricValue:
    """One measured metric: its value, how many samples it counted (and how many hit), under which protocol.

    `value` is None when there was nothing to count; `reason` then says why.
    """

    name: str
    value: float | None
    samples: int
    protocol: str
    hits: int | None = None
    reason: str = ""


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
    timings: Mapping[str, float] = field(default_factory=dict)

    def group(self, *names: str) -> list[ProbedAnswer]:
        return [a for a in self.answers if a.group in names]

    def says(self, continuation: str | None) -> str | None:
        """'new', 'old' or None: which side of the edit a prompt's or paraphrase's continuation answers."""
        return said(continuation or "", {"new": self.new, "old": self.old})

    def base_said_old(self, answer: ProbedAnswer) -> bool:
        """The base model connected this prompt to the fact: it answered it with `old`."""
        return said(answer.base, {"old": self.old, "new": self.new}) == "old"

    def right(self, answer: ProbedAnswer, continuation: str | None) -> bool:
        """A held fact's continuation names its own answer before the edit's new one; one given without an
        answer (`unchanged`) starts with the base model's first words."""
        if answer.unchanged:
            return (
                bool(answer.expected and answer.expected[0]) and first_words(continuation or "") == answer.expected[0]
            )
        return said(continuation or "", {"expected": answer.expected, "new": self.new}) == "expected"


@dataclass(frozen=True)
class EditCheck:
    """One edited case's prompts as answered once every edit of a sequence or batch is in place."""

    case_id: str
    new: tuple[str, ...]
    old: tuple[str, ...]
    prompts: tuple[str, ...]
    answers_now: tuple[str, ...]
    # its paraphrases, neighbours and same-subject facts: `base` before the edit, `edited` with every edit in place
    held: tuple[ProbedAnswer, ...] = ()

    def evidence(self) -> CaseEvidence:
        """`held` as a case's evidence, so the end-of-run rows count by the per-case rules."""
        return CaseEvidence(self.held, self.old, self.new)


@dataclass(frozen=True)
class ManyEvidence:
    """What the end-of-run metrics of many edits are measured from.

    `controls` hold every case's controls: `base` answered before any edit, `edited` with every edit in place.
    """

    edits: tuple[EditCheck, ...]
    controls: tuple[ProbedAnswer, ...]
    # base (every edit off) and edited seconds per token over `timed` of the edited prompts; empty: not timed
    timings: Mapping[str, float] = field(default_factory=dict)
    timed: int = 0


def share(hits: Sequence[bool]) -> float | None:
    """Fraction of True values; None when there is nothing to count."""
    return sum(hits) / len(hits) if hits else None


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# -- greedy generation, prompts and paraphrases: judged against `new` and `old`, the first named wins


def _saying_new(evidence: CaseEvidence, answers: Sequence[ProbedAnswer]) -> list[Sample]:
    return [Sample(a, evidence.says(a.edited) == "new", a.expected) for a in answers]


def _not_saying_old(evidence: CaseEvidence, answers: Sequence[ProbedAnswer]) -> list[Sample]:
    shown = tuple(f"not {a}" for a in evidence.old)
    return [Sample(a, evidence.says(a.edited) != "old", shown) for a in answers]


def _informative(evidence: CaseEvidence, *groups: str) -> list[ProbedAnswer]:
    return [a for a in evidence.group(*groups) if evidence.base_said_old(a)]


def new_fact_samples(evidence: CaseEvidence) -> list[Sample]:
    return _saying_new(evidence, evidence.group("prompts"))


def forget_samples(evidence: CaseEvidence) -> list[Sample]:
    """Prompts and paraphrases the base model answered with `old`: hit when the edited model no longer does."""
    return _not_saying_old(evidence, _informative(evidence, "prompts", "paraphrases"))


def forget_all_samples(evidence: CaseEvidence) -> list[Sample]:
    return _not_saying_old(evidence, evidence.group("prompts", "paraphrases"))


def paraphrase_samples(evidence: CaseEvidence) -> list[Sample]:
    """Paraphrases the base model answered with `old`: hit when the edited model answers `new`."""
    return _saying_new(evidence, _informative(evidence, "paraphrases"))


def paraphrase_all_samples(evidence: CaseEvidence) -> list[Sample]:
    return _saying_new(evidence, evidence.group("paraphrases"))


# -- greedy generation, neighbours and controls: right when their own answer is named before `new`


def _retained(evidence: CaseEvidence, answers: Sequence[ProbedAnswer]) -> list[Sample]:
    return [Sample(a, evidence.right(a, a.edited), a.expected) for a in answers if evidence.right(a, a.base)]


def neighbour_samples(evidence: CaseEvidence) -> list[Sample]:
    return _retained(evidence, evidence.group("neighbours"))


def neighbour_sharing_old_samples(evidence: CaseEvidence) -> list[Sample]:
    return _retained(evidence, [a for a in evidence.group("neighbours") if a.shares_old])


def neighbour_other_samples(evidence: CaseEvidence) -> list[Sample]:
    return _retained(evidence, [a for a in evidence.group("neighbours") if not a.shares_old])


def control_samples(evidence: CaseEvidence) -> list[Sample]:
    return _retained(evidence, evidence.group("controls"))


def same_subject_samples(evidence: CaseEvidence) -> list[Sample]:
    """Other facts about the edited subject the base model got right (or, without `answer:`, any)."""
    return _retained(evidence, evidence.group("same_subject"))


def context_samples(evidence: CaseEvidence) -> list[Sample]:
    """Neighbours and controls behind a sentence naming the subject, right before the edit."""
    return _retained(evidence, evidence.group("context"))


def alias_samples(evidence: CaseEvidence) -> list[Sample]:
    """Prompts and paraphrases with an alias for the subject that the base model answered with `old`: hit
    when the edited model answers `new`."""
    return _saying_new(evidence, _informative(evidence, "aliases"))


def implication_samples(evidence: CaseEvidence) -> list[Sample]:
    """What the edit implies (not conditioned on the base model, which should not know it): hit when named."""
    return [Sample(a, evidence.right(a, a.edited), a.expected) for a in evidence.group("implications")]


# -- CounterFact's probability comparisons: mean log-probability per answer token, teacher-forced


def _prefers(answers: Sequence[ProbedAnswer], winner: str, loser: str) -> list[Sample]:
    return [
        Sample(a, a.logprobs[winner] > a.logprobs[loser], a.expected)
        for a in answers
        if winner in a.logprobs and loser in a.logprobs
    ]


def efficacy_samples(evidence: CaseEvidence) -> list[Sample]:
    return _prefers(evidence.group("prompts"), "new", "old")


def generalization_samples(evidence: CaseEvidence) -> list[Sample]:
    return _prefers(evidence.group("paraphrases"), "new", "old")


def specificity_samples(evidence: CaseEvidence) -> list[Sample]:
    return _prefers(evidence.group("neighbours"), "expected", "new")


def control_specificity_samples(evidence: CaseEvidence) -> list[Sample]:
    return _prefers(evidence.group("controls"), "expected", "new")


# -- timing


def _ratio(timings: Mapping[str, float], edited_key: str, timed: int) -> tuple[float | None, int]:
    base, edited = timings.get("base_seconds_per_token"), timings.get(edited_key)
    ratio = edited / base if base is not None and edited is not None and base > 0 else None
    return ratio, timed if ratio is not None else 0


def latency_ratio(evidence: CaseEvidence) -> tuple[float | None, int]:
    """(edited / base seconds per token, the minimum of interleaved timings each; the prompts timed)."""
    return _ratio(evidence.timings, "edited_seconds_per_token", len(evidence.group("prompts")))


def merged_latency_ratio(evidence: CaseEvidence) -> tuple[float | None, int]:
    """The same with the adapter merged into the weights (None for an edit that has no adapter)."""
    return _ratio(evidence.timings, "merged_seconds_per_token", len(evidence.group("prompts")))


# -- many edits on one model


def edit_check_samples(evidence: ManyEvidence) -> list[Sample]:
    """Every edited case's prompts, hit when answered `new` (named before `old`) with every edit in place."""
    return [
        Sample(
            ProbedAnswer("prompts", prompt, check.new, "", now),
            said(now, {"new": check.new, "old": check.old}) == "new",
            check.new,
        )
        for check in evidence.edits
        for prompt, now in zip(check.prompts, check.answers_now)
    ]


def many_control_samples(evidence: ManyEvidence) -> list[Sample]:
    """Controls right before any edit (their answer named), hit when still right with every edit in place."""
    return [
        Sample(a, matches(a.edited or "", a.expected), a.expected)
        for a in evidence.controls
        if matches(a.base, a.expected)
    ]


def paraphrases_at_end_samples(evidence: ManyEvidence) -> list[Sample]:
    """Every edited case's paraphrases the base model answered with `old`: hit when answered `new` with every
    edit in place."""
    return [s for check in evidence.edits for s in paraphrase_samples(check.evidence())]


def neighbours_at_end_samples(evidence: ManyEvidence) -> list[Sample]:
    """Every edited case's neighbours the base model got right: hit when still right with every edit in place."""
    return [s for check in evidence.edits for s in neighbour_samples(check.evidence())]


def same_subject_at_end_samples(evidence: ManyEvidence) -> list[Sample]:
    """Every edited case's same-subject facts the base model got right (without `answer:`, its first words):
    hit when still right with every edit in place."""
    return [s for check in evidence.edits for s in same_subject_samples(check.evidence())]


def latency_ratio_at_end(evidence: ManyEvidence) -> tuple[float | None, int]:
    """(every edit active / every edit off, seconds per token of one greedy step; the prompts timed)."""
    return _ratio(evidence.timings, "edited_seconds_per_token", evidence.timed)


def retained_by_case(evidence: ManyEvidence) -> dict[str, float]:
    """Per edited case: the share of its prompts answering `new` with every edit in place."""
    return {
        check.case_id: sum(said(a, {"new": check.new, "old": check.old}) == "new" for a in check.answers_now)
        / len(check.prompts)
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
