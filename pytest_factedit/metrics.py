"""Answer judging and metric functions over probed answers (pure Python, no torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

JUDGE_PROTOCOL = "greedy continuation, cut at the first line break, case-insensitive alias match at word boundaries"
EXTRA_ANSWER_TOKENS = 4


def cut_answer(continuation: str) -> str:
    """The part of a greedy continuation that is judged: up to the first line break."""
    return continuation.split("\n", 1)[0].strip()


def matches(continuation: str, aliases: Sequence[str]) -> bool:
    """True when any alias occurs in the judged continuation, case-insensitively, at word boundaries."""
    text = cut_answer(continuation)
    return any(re.search(r"(?<!\w)" + re.escape(alias.strip()) + r"(?!\w)", text, re.IGNORECASE)
               for alias in aliases if alias.strip())


def ngram_entropy(text: str) -> float:
    """ROME-style fluency: weighted entropy of the word 2- and 3-gram distributions of a generation.

    Repetitive, degenerate text scores low; the value is compared base vs edited, not gated.
    """
    import math
    from collections import Counter

    words = text.split()
    total = 0.0
    for n, weight in ((2, 2 / 3), (3, 4 / 3)):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        count = sum(grams.values())
        if count:
            total += weight * -sum(c / count * math.log2(c / count) for c in grams.values())
    return total / 2


@dataclass(frozen=True)
class MetricValue:
    """One measured metric with the protocol and sample count it was measured with."""

    name: str
    value: float | None
    samples: int
    protocol: str


def share(hits: Sequence[bool]) -> float | None:
    """Fraction of True values; None when there is nothing to count."""
    return sum(hits) / len(hits) if hits else None


def new_fact_accuracy(prompt_answers: Sequence[str], new: Sequence[str]) -> MetricValue:
    hits = [matches(a, new) for a in prompt_answers]
    return MetricValue("new_fact_accuracy", share(hits), len(hits), f"prompts answered `new`; {JUDGE_PROTOCOL}")


def forget_rate(answers: Sequence[str], old: Sequence[str]) -> MetricValue:
    hits = [not matches(a, old) for a in answers]
    return MetricValue("forget_rate", share(hits), len(hits),
                       f"prompts + paraphrases no longer answered `old`; {JUDGE_PROTOCOL}")


def paraphrase_accuracy(paraphrase_answers: Sequence[str], new: Sequence[str]) -> MetricValue:
    hits = [matches(a, new) for a in paraphrase_answers]
    return MetricValue("paraphrase_accuracy", share(hits), len(hits),
                       f"held-out paraphrases answered `new`; {JUDGE_PROTOCOL}")


def control_retention(base_answers: Sequence[str], edited_answers: Sequence[str],
                      expected: Sequence[Sequence[str]]) -> MetricValue:
    """Share of the controls the base model answered correctly that the edited model still answers correctly."""
    hits = [matches(after, aliases) for before, after, aliases in zip(base_answers, edited_answers, expected)
            if matches(before, aliases)]
    return MetricValue("control_retention", share(hits), len(hits),
                       f"controls right before the edit and still right after; {JUDGE_PROTOCOL}")


def latency_overhead(base_seconds_per_token: float, edited_seconds_per_token: float, samples: int) -> MetricValue:
    ratio = edited_seconds_per_token / base_seconds_per_token if base_seconds_per_token > 0 else None
    return MetricValue("latency_overhead", ratio, samples,
                       "edited / base greedy generation seconds per token over prompts + controls (best of repeats)")
