"""Texts the retention (KL) term holds steady: neutral sentences and prompts derived from the edit's own.

Never a held-out text: anything that equals a case's paraphrase or control, or that names the subject
of one, is dropped before training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

NEUTRAL_TEXTS: tuple[str, ...] = (
    "She opened the book and began to",
    "The weather was cold, so we decided to",
    "In mathematics, a prime number is a number that",
    "The recipe calls for two cups of",
    "After the meeting, everyone went back to their",
    "The river flows slowly through the",
    "The children played in the park until",
    "He wrote a letter to his",
)

# General-knowledge prompts whose base answers the edit must keep: fact recall is what an edit of
# factual layers damages first, and neutral sentences alone do not exercise it.
FACT_TEXTS: tuple[str, ...] = (
    "The Taj Mahal is located in the city of",
    "The official language of China is",
    "Thomas Edison is known for inventing the",
    "Shakespeare was born in",
    "The Mona Lisa is displayed in the",
    "Facebook was founded by",
    "The Great Barrier Reef is located off the coast of",
    "The currency of the United States is the",
    "The Colosseum is located in the city of",
    "The official language of Portugal is",
)

# Well-known entities of many kinds; a training prompt with its subject swapped for one of these is a
# "neighbour" prompt whose base-model answer the edit must keep (edits leak most to neighbours).
ENTITY_BANK: tuple[str, ...] = (
    "Colosseum",
    "Louvre",
    "Taj Mahal",
    "Acropolis",
    "Empire State Building",
    "Sydney Opera House",
    "Toyota Camry",
    "Ford Focus",
    "Volkswagen Golf",
    "Nintendo Switch",
    "Xbox",
    "MacBook",
    "Cristiano Ronaldo",
    "Serena Williams",
    "Michael Jordan",
    "Tiger Woods",
    "Usain Bolt",
    "France",
    "Japan",
    "Italy",
    "Canada",
    "Australia",
    "Argentina",
    "China",
    "Spain",
    "Brazil",
    "Germany",
    "Nigeria",
    "Peru",
    "Sweden",
)


# Texts about the subject whose base continuations the edit must keep: what else the model says of the
# subject (ROME's "essence"), in the sentence that names it, where gains that reach past the subject's
# tokens act (gain_positions: subject-sentence).
SUBJECT_TEMPLATES: tuple[str, ...] = (
    "{subject} is",
    "{subject} is known for",
    "The most famous thing about {subject} is",
    "Many people associate {subject} with",
    "Here is a short description of {subject}:",
    "The history of {subject} began",
    "People often talk about {subject} because",
    "When I think of {subject}, I think of",
)


# The subject asked for its other relations, so that an edit of one relation leaves the others: one question
# per common relation, each in the wording CounterFact uses most for it (counterfact-train's prompts). The
# question that asks the edited relation answers the old fact, and is dropped (`objectives.subject_rows`).
RELATION_TEMPLATES: tuple[str, ...] = (
    "{subject} is located in",
    "{subject} is located in the continent",
    "The language of {subject} is",
    "The capital of {subject} is",
    "{subject} is a product of",
    "{subject} is developed by",
    "{subject} is owned by",
    "The headquarter of {subject} is located in",
    "{subject} holds a citizenship from",
    "The occupation of {subject} is",
    "{subject} was born in",
    "{subject} was founded in",
    "{subject} plays",
    "The genre played by {subject} is",
)


def subject_texts(
    subject: str, held_out: Sequence[str], count: int, templates: Sequence[str] = SUBJECT_TEMPLATES
) -> list[str]:
    """Up to `count` of the templates about the subject, none equal to a held-out text."""
    return without_held_out([t.format(subject=subject) for t in templates], held_out)[:count]


def _mentions_any(text: str, needles: Iterable[str]) -> bool:
    folded = text.casefold()
    return any(n.casefold() in folded for n in needles if n)


def derived_neighbours(
    prompts: Sequence[str], subject: str, held_out: Sequence[str], per_prompt: int, bank: Sequence[str] = ENTITY_BANK
) -> list[str]:
    """The training prompts with the subject swapped for bank entities, skipping held-out overlap.

    A bank entity is skipped when it is (part of) the subject or occurs in any held-out text, so the
    held-out controls stay unseen in every form.
    """
    usable = [
        e
        for e in bank
        if e.casefold() not in subject.casefold()
        and subject.casefold() not in e.casefold()
        and not _mentions_any(" ".join(held_out), [e])
    ]
    held = _folded(held_out)
    out: list[str] = []
    for i, prompt in enumerate(prompts):
        if subject not in prompt:
            continue
        for k in range(per_prompt):
            if not usable:
                break
            entity = usable[(i * per_prompt + k) % len(usable)]
            text = prompt.replace(subject, entity)
            if text.strip().casefold() not in held and text not in out:
                out.append(text)
    return out


def _folded(texts: Iterable[str]) -> set[str]:
    return {t.strip().casefold() for t in texts}


def without_held_out(texts: Sequence[str], held_out: Sequence[str]) -> list[str]:
    """`texts` minus any that equals a held-out text (case- and surrounding-space-insensitive)."""
    held = _folded(held_out)
    return [t for t in texts if t.strip().casefold() not in held]


def neutral_texts(held_out: Sequence[str]) -> list[str]:
    """Neutral sentences, minus any held-out text."""
    return without_held_out(NEUTRAL_TEXTS, held_out)


def fact_texts(held_out: Sequence[str]) -> list[str]:
    """General-knowledge prompts, minus any held-out text."""
    return without_held_out(FACT_TEXTS, held_out)
