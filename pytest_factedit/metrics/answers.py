"""How an answer is judged: the greedy continuation, cut at the first line break, matched against aliases."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

JUDGE_PROTOCOL = "greedy continuation, cut at the first line break, case-insensitive alias match at word boundaries"
Group = Literal["prompts", "paraphrases", "controls"]
GROUPS: tuple[Group, ...] = ("prompts", "paraphrases", "controls")


def cut_answer(continuation: str) -> str:
    """The part of a greedy continuation that is judged: up to the first line break."""
    return continuation.split("\n", 1)[0].strip()


def matches(continuation: str, aliases: Sequence[str]) -> bool:
    """True when any alias occurs in the judged continuation, case-insensitively, at word boundaries."""
    text = cut_answer(continuation)
    return any(
        re.search(r"(?<!\w)" + re.escape(alias.strip()) + r"(?!\w)", text, re.IGNORECASE)
        for alias in aliases
        if alias.strip()
    )


@dataclass(frozen=True)
class ProbedAnswer:
    """One prompt's expected answer and the greedy continuations before and after the edit."""

    group: Group
    prompt: str
    expected: tuple[str, ...]
    base: str
    edited: str | None = None

    @classmethod
    def from_record(cls, entry: Mapping[str, Any]) -> ProbedAnswer:
        """The answer as a results.jsonl `answers` entry holds it."""
        return cls(entry["group"], entry["prompt"], tuple(entry["expected"]), entry["base"], entry.get("edited"))
