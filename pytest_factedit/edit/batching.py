"""Training rows and the one forward pass per step that computes logits only where a loss needs them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model.lmhead import decoder, logits_from_hidden

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Row:
    """A token sequence and how many of its final positions need next-token distributions."""

    ids: tuple[int, ...]
    tail: int


def pad_left(
    rows: Sequence[Row], pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), left-padded so every row's tail is at the end."""
    import torch

    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row.ids) :] = torch.tensor(row.ids)
        mask[i, width - len(row.ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def tail_logprobs(model: PreTrainedModel, rows: Sequence[Row], pad_id: int) -> list[torch.Tensor]:
    """Log-softmax distributions at each row's last `tail` positions: a list of [tail, vocab] tensors.

    One forward pass of the decoder; the LM head runs only on the positions a loss needs.
    """
    import torch

    device = next(model.parameters()).device
    ids, mask, positions = pad_left(rows, pad_id, device)
    hidden = decoder(model)(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    width = ids.shape[1]
    picked = torch.cat([hidden[i, width - r.tail :] for i, r in enumerate(rows)])
    logp = torch.log_softmax(logits_from_hidden(model, picked).float(), dim=-1)
    return list(torch.split(logp, [r.tail for r in rows]))


def kl_to_reference(reference_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(reference || current), summed over the vocabulary, averaged over positions."""
    import torch

    return torch.sum(reference_logp.exp() * (reference_logp - logp), dim=-1).mean()
