"""Probes on a live model by prompt text: greedy answers and teacher-forced answer log-probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .decoding import Decoded, DecodeRow, decode
from .text import answer_text, answer_token_ids, decoding_sets, encode_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .text import Chat


def greedy_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    budgets: Sequence[int],
    chat: Chat = False,
    stop_at_newline: bool = True,
) -> list[str]:
    """Greedy continuation of each prompt: at most `budgets[i]` new tokens, up to an end-of-sequence token
    and (`stop_at_newline`) the first line break, after which nothing is judged."""
    rows = continuation_rows(tokenizer, prompts, budgets, chat, stop_at_newline)
    return continuation_texts(model, tokenizer, decode(model, tokenizer, rows))


def continuation_rows(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    budgets: Sequence[int],
    chat: Chat = False,
    stop_at_newline: bool = True,
) -> list[DecodeRow]:
    """The decoding request of each prompt's greedy continuation (see `greedy_continuations`)."""
    return [DecodeRow(encode_prompt(tokenizer, p, chat), b, stop_at_newline) for p, b in zip(prompts, budgets)]


def continuation_texts(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, decoded: Sequence[Decoded]
) -> list[str]:
    """The shown text of each decoded continuation: up to end of sequence, without special tokens."""
    stops, hidden = decoding_sets(model, tokenizer)
    return [answer_text(tokenizer, d.tokens, stops, hidden) for d in decoded]


def pair_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    chat: Chat = False,
    per_token: bool = True,
) -> list[float]:
    """log P(answer | prompt) of each (prompt, answer) pair, teacher-forced: the mean per answer token
    (CounterFact's comparison, as ROME's code computes it), or the sum with `per_token=False`."""
    wanted: dict[str, dict[tuple[int, ...], None]] = {}
    for prompt, answer in pairs:
        wanted.setdefault(prompt, {})[tuple(answer_token_ids(tokenizer, answer, chat))] = None
    rows = [DecodeRow(encode_prompt(tokenizer, p, chat), 0, candidates=tuple(c)) for p, c in wanted.items()]
    scores = dict(zip(wanted, (d.scores for d in decode(model, tokenizer, rows))))
    out = []
    for prompt, answer in pairs:
        score = scores[prompt][tuple(answer_token_ids(tokenizer, answer, chat))]
        out.append(score.mean if per_token else score.logprob)
    return out
