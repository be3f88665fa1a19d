"""Probes on a live model: greedy answers, answer log-probabilities and generation speed."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .text import answer_token_ids, first_token_id, render_prompts

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
    """Greedy continuation of each prompt, `budgets[i]` new tokens long (batched, left-padded)."""
    import torch

    texts = render_prompts(tokenizer, prompts, chat)
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        chunk_budgets = budgets[start : start + batch_size]
        batch = _tokenize_batch(tokenizer, chunk, device, chat)
        with torch.no_grad():
            new_tokens = greedy_tokens(model, tokenizer, batch, max(chunk_budgets))
        for row, budget in zip(new_tokens, chunk_budgets):
            out.append(tokenizer.decode(row[:budget], skip_special_tokens=True))
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


def answer_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answer: str, chat: bool = False
) -> list[float]:
    """log P(answer tokens | prompt) for each prompt (teacher-forced, answer with a leading space)."""
    import torch

    texts = render_prompts(tokenizer, prompts, chat)
    answer_ids = answer_token_ids(tokenizer, answer, chat)
    device = next(model.parameters()).device
    batch = _tokenize_batch(tokenizer, texts, device, chat)
    ids = torch.cat([batch["input_ids"], torch.tensor([answer_ids] * len(texts), device=device)], dim=1)
    mask = torch.cat(
        [
            batch["attention_mask"],
            torch.ones(len(texts), len(answer_ids), device=device, dtype=batch["attention_mask"].dtype),
        ],
        dim=1,
    )
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = (
            model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=len(answer_ids) + 1)
            .logits[:, :-1]
            .float()
        )
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(answer_ids, device=device).expand(len(texts), -1)
    return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1).tolist()


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
