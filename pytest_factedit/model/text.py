"""Prompts and answers as token ids: the chat template, the leading space, the answer's token budget.

The probes and the editors' training rows both go through here, so a prompt is seen the same way by both.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EXTRA_ANSWER_TOKENS = 4  # generated past the longest alias, so that "Rome" is not judged on "Romeo"'s first piece
CHAT_REPLY_TOKENS = 24  # a chat reply may name the answer in a sentence: "PyTorch was developed by Meta AI."


@dataclass(frozen=True)
class ChatFormat:
    """A case's prompts go through the tokenizer's chat template, as a user turn after this system prompt.

    Wherever a `chat` argument is taken, False means plain text, True the template without a system
    prompt, and a ChatFormat the template with its system prompt.
    """

    system: str | None = None


Chat = bool | ChatFormat


def _messages(prompt: str, chat: Chat) -> list[dict[str, str]]:
    system = chat.system if isinstance(chat, ChatFormat) else None
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], chat: Chat) -> list[str]:
    """Prompts as the model sees them: plain text, or wrapped in the tokenizer's chat template."""
    if not chat:
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"chat: true, but the tokenizer ({type(tokenizer).__name__}, {tokenizer.name_or_path or 'in memory'}) "
            "has no chat template. Fix: use the model's instruct/chat variant, whose tokenizer_config.json has a "
            "chat_template, or set chat: false and write the prompts as text to continue",
            key="chat",
        )
    return [
        one_text(tokenizer.apply_chat_template(_messages(p, chat), tokenize=False, add_generation_prompt=True))
        for p in prompts
    ]


def one_text(result: object) -> str:
    """A tokenizer's text for one input: transformers types `decode` and `apply_chat_template` by all
    their forms (str | list[str] | ...), and one sequence in gives one str."""
    if not isinstance(result, str):
        raise TypeError(f"the tokenizer gave a {type(result).__name__} where one text was expected")
    return result


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str, chat: Chat) -> tuple[int, ...]:
    """Token ids of a prompt as the model sees it (chat template when `chat`; it brings its own BOS)."""
    rendered = render_prompts(tokenizer, [text], chat)[0]
    return tuple(tokenizer(rendered, add_special_tokens=not chat).input_ids)


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, answer: str, chat: Chat = False) -> list[int]:
    """Tokens of an answer as it follows a prompt: after a space in plain text, directly after a chat turn."""
    # BatchEncoding's fields are Any to mypy; one text in gives its ids as a list of ints
    return cast("list[int]", tokenizer(("" if chat else " ") + answer, add_special_tokens=False).input_ids)


def first_token_id(tokenizer: PreTrainedTokenizerBase, answer: str, chat: Chat = False) -> int:
    return answer_token_ids(tokenizer, answer, chat)[0]


def answer_token_budget(tokenizer: PreTrainedTokenizerBase, aliases: Sequence[str], chat: Chat = False) -> int:
    """New tokens to generate for an answer: the longest alias (with a leading space) plus a few, and room
    for a sentence around it in a chat reply (generation stops once the answer is settled)."""
    longest = max(len(tokenizer(" " + a, add_special_tokens=False).input_ids) for a in aliases)
    return longest + (CHAT_REPLY_TOKENS if chat else EXTRA_ANSWER_TOKENS)


_CONTROL_TOKEN = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")  # <start_of_image>, <unused0>, [multimodal]
# per tokenizer, weakly held (a new tokenizer at a freed one's address is not taken for it)
_HIDDEN: weakref.WeakKeyDictionary[Any, frozenset[int]] = weakref.WeakKeyDictionary()
_LINE_BREAKS: weakref.WeakKeyDictionary[Any, dict[int, bool]] = weakref.WeakKeyDictionary()


def decoding_sets(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[frozenset[int], frozenset[int]]:
    """(ids that end an answer, ids never shown in one).

    An answer ends at an end-of-sequence token (the tokenizer's and the generation config's). Special
    tokens are not shown, nor control tokens a tokenizer does not flag as special (the embedded Gemma
    decodes `<start_of_image>` as text, so a record could read "Paris, France.<start_of_").
    """
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    if tokenizer not in _HIDDEN:
        hidden = set(tokenizer.all_special_ids)
        hidden |= {
            i
            for i, token in tokenizer.added_tokens_decoder.items()
            if token.special or _CONTROL_TOKEN.fullmatch(token.content)
        }
        _HIDDEN[tokenizer] = frozenset(hidden)
    return frozenset(i for i in stops if i is not None), _HIDDEN[tokenizer]


def answer_text(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], stops: frozenset[int], hidden: frozenset[int]
) -> str:
    """The text of generated ids: up to the first end-of-sequence token, without special or control tokens."""
    kept = []
    for token in ids:
        if token in stops:
            break
        if token not in hidden:
            kept.append(token)
    return one_text(tokenizer.decode(kept, skip_special_tokens=True))


def ends_line(tokenizer: PreTrainedTokenizerBase, token: int) -> bool:
    """Does this token hold a line break? (The judged part of an answer ends at the first one.)"""
    known = _LINE_BREAKS.setdefault(tokenizer, {})
    if token not in known:
        known[token] = "\n" in tokenizer.decode([token])
    return known[token]
