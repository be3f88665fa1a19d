"""Where words begin in a tokenizer's vocabulary: what the subject gate needs to match whole names only.

One byte of flags per token id, built once per tokenizer from its raw token strings (SentencePiece marks
a leading space with '▁', byte-level BPE with 'Ġ'): the token continues the word before it ("ese" in
"Japan|ese"), ends in a letter or digit, opens a capitalized word that is not a common sentence opener
("New" in "New York", not "In" in "In York"; words in capitals are not read as names), or ends a
sentence (holds '.', '!', '?' or a line break).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

JOINS, ENDS_WORD, NAME_WORD, ENDS_SENTENCE = 1, 2, 4, 8
SENTENCE_ENDS = ".!?\n"
SPACE_MARKS = "▁Ġ "
# Capitalized words that open sentences or questions rather than name things: "In York", "The Japan of".
OPENERS = frozenset(
    """a about after an and as at before but by describe did do does during for from has have he her his how i if
    in is it its my near of on or our she since speaking tell that the their these they this those to was we
    what when where which while who why with you your""".split()
)


def token_flags(token: str, spaced: bool = True) -> int:
    """The flags of one raw token string (`spaced`: the vocabulary marks the spaces before words)."""
    text = token.lstrip(SPACE_MARKS)
    flags = JOINS if spaced and token[:1] not in SPACE_MARKS and text[:1].isalnum() else 0
    if text[-1:].isalnum():
        flags |= ENDS_WORD
    if any(c in SENTENCE_ENDS for c in token):
        flags |= ENDS_SENTENCE
    word = "".join(c for c in text if c.isalpha())
    if text[:1].isupper() and not word.isupper() and word.casefold() not in OPENERS:  # "New", not "NEW" or "In"
        flags |= NAME_WORD
    return flags


def build_flags(tokenizer: PreTrainedTokenizerBase) -> bytes:
    """The flags of `tokenizer`'s whole vocabulary, indexed by token id (about a second for 262k tokens).

    A vocabulary with no space mark at all splits words before tokenizing (a word-level tokenizer): each
    token is then a word of its own, and none joins the one before."""
    tokens = [t if isinstance(t, str) else "" for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
    spaced = any(t[:1] in SPACE_MARKS for t in tokens if t)
    return bytes(token_flags(t, spaced) for t in tokens)


_FLAGS: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def word_flags(tokenizer: PreTrainedTokenizerBase) -> bytes:
    """`build_flags`, kept per tokenizer object."""
    if tokenizer not in _FLAGS:
        _FLAGS[tokenizer] = build_flags(tokenizer)
    return _FLAGS[tokenizer]


def whole_name(ids: Sequence[int], start: int, end: int, flags: bytes, first: int = 0) -> bool:
    """Is ids[start:end] a name on its own: not inside a longer word, and not the end of a longer
    capitalized name ("York" in "New York")? Tokens before `first` are not read (a gate that keeps
    fewer tokens of the text before sees the text begin there)."""

    def flag(position: int, bit: int) -> bool:
        return first <= position < len(ids) and 0 <= ids[position] < len(flags) and bool(flags[ids[position]] & bit)

    if flag(end, JOINS) or (flag(start, JOINS) and flag(start - 1, ENDS_WORD)):
        return False
    word = start - 1  # the first token of the word before the name
    while flag(word, JOINS) and flag(word - 1, ENDS_WORD):
        word -= 1
    return not (flag(start - 1, ENDS_WORD) and flag(word, NAME_WORD))
