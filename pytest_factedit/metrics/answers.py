"""How an answer is judged: the greedy continuation, cut at the first line break, matched against aliases.

When a continuation names several candidate answers ("Sony and Microsoft"), a reader takes it for the
one named first; `said` decides that way, and `mentions` keeps every name it contains.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

JUDGE_PROTOCOL = "greedy continuation, cut at the first line break, case-insensitive alias match at word boundaries"
Group = Literal["prompts", "paraphrases", "neighbours", "controls"]
GROUPS: tuple[Group, ...] = ("prompts", "paraphrases", "neighbours", "controls")
FACT_GROUPS: tuple[Group, ...] = ("prompts", "paraphrases")  # judged against `new` and `old`
HELD_FACT_GROUPS: tuple[Group, ...] = ("neighbours", "controls")  # judged against their answer and `new`


def cut_answer(continuation: str) -> str:
    """The part of a greedy continuation that is judged: up to the first line break."""
    return continuation.split("\n", 1)[0].strip()


def _first_match(text: str, aliases: Sequence[str]) -> tuple[int, int] | None:
    """(start, -length) of the earliest (then longest) alias at word boundaries in `text`, or None."""
    found = []
    for alias in aliases:
        alias = alias.strip()
        if alias:
            hit = re.search(r"(?<!\w)" + re.escape(alias) + r"(?!\w)", text, re.IGNORECASE)
            if hit:
                found.append((hit.start(), -len(alias)))
    return min(found) if found else None


def matches(continuation: str, aliases: Sequence[str]) -> bool:
    """True when any alias occurs in the judged continuation, case-insensitively, at word boundaries."""
    return _first_match(cut_answer(continuation), aliases) is not None


def said(continuation: str, candidates: Mapping[str, Sequence[str]]) -> str | None:
    """Which candidate the continuation answers with: the one an alias of which comes first.

    Ties (the same start) go to the longer alias, then to the candidate listed first. None when the
    continuation names no candidate.
    """
    text = cut_answer(continuation)
    best: tuple[tuple[int, int], int, str] | None = None
    for order, (name, aliases) in enumerate(candidates.items()):
        position = _first_match(text, aliases)
        if position is not None and (best is None or (position, order) < best[:2]):
            best = (position, order, name)
    return best[2] if best else None


@dataclass(frozen=True)
class ProbedAnswer:
    """One prompt's expected answer, the greedy continuations before and after the edit, and (after the
    edit) the mean log-probability per token of each candidate answer, teacher-forced."""

    group: Group
    prompt: str
    expected: tuple[str, ...]
    base: str
    edited: str | None = None
    shares_old: bool = False  # a neighbour whose answer is the edited fact's old answer (the hardest kind)
    logprobs: Mapping[str, float] = field(default_factory=dict)  # after the edit: {"new": .., "old"|"expected": ..}

    @classmethod
    def from_record(cls, entry: Mapping[str, Any]) -> ProbedAnswer:
        """The answer as a results.jsonl `answers` entry holds it."""
        return cls(
            entry["group"],
            entry["prompt"],
            tuple(entry["expected"]),
            entry["base"],
            entry.get("edited"),
            bool(entry.get("shares_old", False)),
            dict(entry.get("logprobs") or {}),
        )
