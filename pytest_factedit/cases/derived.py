"""Held-out prompts a case derives from its own keys: its prompts with an alias for the subject, and its
neighbours and controls behind a sentence that names the subject. Probed, never trained on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schema import Control, FactCase

# Sentences that name the subject and say nothing of the edit; each neighbour and control is probed behind
# one of them (in turn), so that an edit keyed on the subject shows what it does to unrelated questions
# asked after the subject was named (CounterFact+'s failure).
CONTEXT_TEMPLATES: tuple[str, ...] = (
    "Speaking of {subject}, here is another question.",
    "{subject} came up in our conversation.",
    "I was reading about {subject} yesterday.",
)


def alias_prompt(text: str, subject: str, alias: str) -> str:
    """`text` with `alias` in place of `subject` (capitalized where the subject opens the text)."""
    if text.startswith(subject) and alias[:1].islower():
        alias = alias[:1].upper() + alias[1:]
    return text.replace(subject, alias)


def alias_prompts(texts: Sequence[str], subject: str, aliases: Sequence[str]) -> tuple[str, ...]:
    """Every text with each alias in place of the subject: what `alias_accuracy` probes (never trained on)."""
    return tuple(alias_prompt(text, subject, alias) for alias in aliases for text in texts)


def case_alias_prompts(case: FactCase) -> tuple[str, ...]:
    """The case's prompts and paraphrases with each of its aliases in place of the subject."""
    return alias_prompts(case.prompts + case.paraphrases, case.subject, case.aliases)


def context_prompt(subject: str, prompt: str, index: int) -> str:
    """`prompt` behind the `index`-th context sentence (in turn) naming `subject`."""
    template = CONTEXT_TEMPLATES[index % len(CONTEXT_TEMPLATES)]
    return template.format(subject=subject) + " " + prompt


def context_facts(case: FactCase) -> list[tuple[str, Control]]:
    """(prompt behind a sentence naming the subject, the fact) for every neighbour and control of `case`."""
    facts = case.neighbours + case.controls
    return [(context_prompt(case.subject, fact.prompt, i), fact) for i, fact in enumerate(facts)]


def derived_held_out(case: FactCase) -> tuple[str, ...]:
    """Every prompt a case derives (alias and context prompts): held out like its own held-out texts."""
    return case_alias_prompts(case) + tuple(prompt for prompt, _ in context_facts(case))
