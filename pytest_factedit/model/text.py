"""Prompts and answers as token ids: the chat template, the leading space, the answer's token budget.

The probes and the editors' training rows both go through here, so a prompt is seen the same way by both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EXTRA_ANSWER_TOKENS = 4  # generated past the longest alias, so that "Rome" is not judged on "Romeo"'s first piece


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], chat: bool) -> list[str]:
    """Prompts as the model sees them: plain text, or wrapped in the tokenizer's chat template."""
    if not chat:
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("chat: true, but the tokenizer has no chat template", key="chat")
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str, chat: bool) -> tuple[int, ...]:
    """Token ids of a prompt as the model sees it (chat template when `chat`; it brings its own BOS)."""
    rendered = render_prompts(tokenizer, [text], chat)[0]
    return tuple(tokenizer(rendered, add_special_tokens=not chat).input_ids)


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, answer: str, chat: bool = False) -> list[int]:
    """Tokens of an answer as it follows a prompt: after a space in plain text, directly after a chat turn."""
    return tokenizer(("" if chat else " ") + answer, add_special_tokens=False).input_ids


def first_token_id(tokenizer: PreTrainedTokenizerBase, answer: str, chat: bool = False) -> int:
    return answer_token_ids(tokenizer, answer, chat)[0]


def answer_token_budget(tokenizer: PreTrainedTokenizerBase, aliases: Sequence[str]) -> int:
    """New tokens to generate for an answer: the longest alias (with a leading space) plus a few."""
    longest = max(len(tokenizer(" " + a, add_special_tokens=False).input_ids) for a in aliases)
    return longest + EXTRA_ANSWER_TOKENS
