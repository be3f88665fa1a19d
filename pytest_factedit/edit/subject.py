"""Where the subject sits in a prompt's tokens: the positions the subject-keyed edits read and write.

Found through the fast tokenizer's character offsets, so that "Norway" is found in "Norway's capital"
whatever pieces the tokenizer cut; the token sequences found are also what `SubjectGate` looks for in
prompts it has never seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import MethodError, shown
from ..model.text import render_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..model.text import Chat


@dataclass(frozen=True)
class SubjectSpan:
    """A prompt's token ids and the positions of the subject's tokens in them (its last occurrence)."""

    ids: tuple[int, ...]
    positions: tuple[int, ...]

    @property
    def last(self) -> int:
        return self.positions[-1]

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(self.ids[p] for p in self.positions)


def subject_span(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str, chat: Chat = False) -> SubjectSpan:
    """The prompt as the model sees it, with the subject's token positions; a clear error when the subject
    is not in the prompt (case-insensitive)."""
    text = render_prompts(tokenizer, [prompt], chat)[0]
    start = text.lower().rfind(subject.lower())
    if not subject or start < 0:
        raise MethodError(
            "subject",
            f"the subject {shown(subject)} does not appear in the prompt {shown(prompt)}; "
            "a subject-keyed edit needs it there",
        )
    if not getattr(tokenizer, "is_fast", False):
        raise MethodError("subject", f"{type(tokenizer).__name__} gives no character offsets; a fast tokenizer does")
    encoded = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    end = start + len(subject)
    positions = tuple(i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a < end and b > start)
    if not positions:
        raise MethodError("subject", f"no token of {shown(prompt)} covers the subject {shown(subject)}")
    return SubjectSpan(tuple(encoded["input_ids"]), positions)


def spellings(name: str) -> tuple[str, ...]:
    """How a user may write a name: as given, lower case, capitalized, upper case; without a leading "the"."""
    name = name.strip()
    if name.casefold().startswith("the ") and len(name) > 4:
        name = name[4:].strip()
    forms = (name, name.lower(), name[:1].upper() + name[1:], name.upper())
    return tuple(dict.fromkeys(f for f in forms if f))


def subject_patterns(
    tokenizer: PreTrainedTokenizerBase, subject: str, spans: Sequence[SubjectSpan] = (), aliases: Sequence[str] = ()
) -> tuple[tuple[int, ...], ...]:
    """The token sequences the subject (and each alias) is written as: each spelling alone and after a
    space, and as found in `spans`."""
    texts = [form for name in (subject, *aliases) for form in spellings(name)]
    found = [tuple(tokenizer(t, add_special_tokens=False).input_ids) for text in texts for t in (text, " " + text)]
    found += [span.tokens for span in spans]
    return tuple(dict.fromkeys(p for p in found if p))
