"""How an answer is judged: the greedy continuation, cut at the first line break, matched against aliases.

When a continuation names several candidate answers ("Sony and Microsoft"), a reader takes it for the
one named first; `said` decides that way. `settled` tells when more text can no longer change that
choice, so that generation can stop there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

JUDGE_PROTOCOL = "greedy continuation, cut at the first line break, case-insensitive alias match at word boundaries"
Group = Literal[
    "prompts", "paraphrases", "aliases", "neighbours", "controls", "same_subject", "context", "implications"
]
GROUPS: tuple[Group, ...] = get_args(Group)
# judged against `new` and `old`: the edited fact as the case words it, and with an alias for the subject
FACT_GROUPS: tuple[Group, ...] = ("prompts", "paraphrases", "aliases")
# judged against their own answer and `new`: facts the edit must leave alone, and (implications) what it implies
HELD_FACT_GROUPS: tuple[Group, ...] = ("neighbours", "controls", "same_subject", "context", "implications")
UNCHANGED_WORDS = 3  # a same-subject fact without `answer:` keeps the base model's first this many words


def cut_answer(continuation: str) -> str:
    """The part of a greedy continuation that is judged: up to the first line break."""
    return continuation.split("\n", 1)[0].strip()


def _first_match(text: str, aliases: Sequence[str]) -> tuple[int, int] | None:
    """(start, -length) of the earliest (then longest) alias at word boundaries in `text`, or None."""
    found = []
    for alias in aliases:
        alias = alias.strip()
        if alias:
            hit = re.search(_alias_pattern(alias), text, re.IGNORECASE)
            if hit:
                found.append((hit.start(), -len(alias)))
    return min(found) if found else None


def matches(continuation: str, aliases: Sequence[str]) -> bool:
    """True when any alias occurs in the judged continuation, case-insensitively, at word boundaries."""
    return _first_match(cut_answer(continuation), aliases) is not None


def _alias_pattern(alias: str) -> str:
    return r"(?<!\w)" + re.escape(alias) + r"(?!\w)"


def _first_decided(text: str, aliases: Sequence[str]) -> tuple[int, int] | None:
    """(start, -length) of the earliest alias match that more text cannot undo: one followed by a character."""
    found = []
    for alias in aliases:
        for hit in re.finditer(_alias_pattern(alias), text, re.IGNORECASE):
            if hit.end() < len(text):
                found.append((hit.start(), -len(alias)))
                break
    return min(found) if found else None


def _could_still_match(text: str, alias: str, start: int) -> bool:
    """Could `alias` match at `start` once more text follows? (It runs to the end of `text` or beyond.)"""
    rest = text[start:]
    if start + len(alias) < len(text) or (start > 0 and re.match(r"\w", text[start - 1])):
        return False
    return re.fullmatch(re.escape(rest), alias[: len(rest)], re.IGNORECASE) is not None


def settled(continuation: str, aliases: Sequence[str]) -> bool:
    """True when no text added to `continuation` can change which of `aliases` `said` finds first.

    That is so once the judged part has ended (a line break), or once an alias is named and followed by a
    character, with no alias able to begin at or before it and still match as the text grows.
    """
    if "\n" in continuation:
        return True
    text = continuation.strip()
    names = [a.strip() for a in aliases if a.strip()]
    best = _first_decided(text, names)
    if best is None:
        return False
    for alias in names:
        for start in range(max(0, len(text) - len(alias)), best[0] + 1):
            if (start, -len(alias)) <= best and _could_still_match(text, alias, start):
                return False
    return True


def first_words(continuation: str, count: int = UNCHANGED_WORDS) -> str:
    """The first `count` words of the judged answer, lower-cased, without punctuation: what a same-subject
    fact given without `answer:` must keep ("Wrought iron, and" -> "wrought iron and")."""
    return " ".join(re.findall(r"\w+", cut_answer(continuation).casefold())[:count])


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
    unchanged: bool = False  # a same-subject fact without `answer:`: `expected` is the base model's first words
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
            bool(entry.get("unchanged", False)),
            dict(entry.get("logprobs") or {}),
        )
