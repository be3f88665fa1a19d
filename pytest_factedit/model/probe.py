"""Probes on a live model: greedy answers, answer log-probabilities and generation speed."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .text import answer_text, answer_token_ids, decoding_sets, encode_prompt, first_token_id, render_prompts

if TYPE_CHECKING:
    import torch
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase


def _tokenize_batch(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], device: torch.device, chat: bool
) -> BatchEncoding:
    return tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)


def greedy_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Mapping[str, torch.Tensor],
    new_tokens: int,
    exactly: bool = False,
) -> torch.Tensor:
    """The greedily generated token ids after `inputs` (left-padded), up to `new_tokens` (`exactly` that many).

    Sampling settings a model's generation config may carry are switched off, so the answer is the argmax path.
    """
    length = {"max_new_tokens": new_tokens, **({"min_new_tokens": new_tokens} if exactly else {})}
    generated = model.generate(
        **inputs,
        **length,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        top_p=None,
        top_k=None,
        temperature=None,
    )
    return generated[:, inputs["input_ids"].shape[1] :]


def greedy_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    budgets: Sequence[int],
    chat: bool = False,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuation of each prompt, at most `budgets[i]` new tokens, up to an end-of-sequence token."""
    import torch

    texts = render_prompts(tokenizer, prompts, chat)
    device = next(model.parameters()).device
    stops, hidden = decoding_sets(model, tokenizer)
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        chunk_budgets = budgets[start : start + batch_size]
        batch = _tokenize_batch(tokenizer, chunk, device, chat)
        with torch.no_grad():
            new_tokens = greedy_tokens(model, tokenizer, batch, max(chunk_budgets))
        for row, budget in zip(new_tokens, chunk_budgets):
            out.append(answer_text(tokenizer, row[:budget].tolist(), stops, hidden))
    return out


def seconds_per_token(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    new_tokens: int = 8,
    chat: bool = False,
) -> float:
    """Wall seconds per generated token for one batched greedy generation of exactly `new_tokens`."""
    import torch

    texts = render_prompts(tokenizer, prompts, chat)
    device = next(model.parameters()).device
    batch = _tokenize_batch(tokenizer, texts, device, chat)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        greedy_tokens(model, tokenizer, batch, new_tokens, exactly=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (new_tokens * len(texts))


def pair_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    chat: bool = False,
    per_token: bool = True,
    batch_size: int = 64,
) -> list[float]:
    """log P(answer | prompt) of each (prompt, answer) pair, teacher-forced: the mean per answer token
    (CounterFact's comparison, as ROME's code computes it), or the sum with `per_token=False`."""
    import torch

    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows = [(encode_prompt(tokenizer, p, chat), tuple(answer_token_ids(tokenizer, a, chat))) for p, a in chunk]
        ids, mask = _left_padded([p + a for p, a in rows], tokenizer.pad_token_id, device)
        longest = max(len(a) for _, a in rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=longest + 1)
        logp = torch.log_softmax(logits.logits[:, :-1].float(), dim=-1)
        for row, (_, answer) in enumerate(rows):
            picked = logp[row, longest - len(answer) :].gather(-1, torch.tensor(answer, device=device)[:, None])
            total = float(picked.sum())
            out.append(total / len(answer) if per_token else total)
    return out


def _left_padded(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        mask[i, width - len(sequence) :] = 1
    return ids.to(device), mask.to(device)


def answer_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answer: str, chat: bool = False
) -> list[float]:
    """log P(answer tokens | prompt) for each prompt (teacher-forced, summed over the answer's tokens)."""
    return pair_logprobs(model, tokenizer, [(p, answer) for p in prompts], chat, per_token=False)


def next_token_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], chat: bool = False
) -> torch.Tensor:
    """Log-probabilities [len(prompts), vocab] of the token right after each prompt (one batched pass)."""
    import torch

    texts = render_prompts(tokenizer, prompts, chat)
    device = next(model.parameters()).device
    batch = _tokenize_batch(tokenizer, texts, device, chat)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1].float()
    return torch.log_softmax(logits, dim=-1)


def first_token_rank(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answer: str, chat: bool = False
) -> list[float]:
    """Rank (0 = top) of the answer's first token at the answer position of each prompt."""
    logp = next_token_logprobs(model, tokenizer, prompts, chat)
    token = first_token_id(tokenizer, answer, chat)
    return (logp > logp[:, token : token + 1]).sum(-1).float().tolist()
