"""The language-model head applied only to the hidden states a computation needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def logits_from_hidden(
    model: PreTrainedModel, hidden: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """LM head (and the final logit soft-capping some models use) on selected hidden states.

    `weight` replaces the head's weight, e.g. a copy already cast to the autocast dtype.
    """
    import torch

    head = model.get_output_embeddings()
    logits = torch.nn.functional.linear(hidden, head.weight if weight is None else weight, getattr(head, "bias", None))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
