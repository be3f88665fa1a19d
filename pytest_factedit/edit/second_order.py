"""Retention without the LM head: a held row's KL to the base model, to second order in its final hidden state.

A retention row's KL term needs the edited model's log-softmax over the whole vocabulary at every step: a
product with the head (Gemma: 262,144 x 640) forward and backward for each held position, about a third
of a training step on a CPU. The head is linear and frozen, so with h the base model's final hidden state
at a position, p its distribution and Δ the edited state's change,

    KL(p || softmax(W (h + Δ))) = ½ Δᵀ F Δ + O(|Δ|³),   F = Σ_v p_v (w_v - m)(w_v - m)ᵀ,   m = Wᵀ p,

the covariance of the head's rows under p (the Fisher information of the logits' softmax in h). `F` is
kept as a factor G, ½ Δᵀ F Δ = ½ |G Δ|²: one row √p_v (w_v - m) for each of the `HELD_TOKENS` most likely
tokens, and one for the rest of the vocabulary at its mean row (which drops only the spread of those
tokens' rows among themselves, so the form never exceeds the exact quadratic). It is built once per row
from the base pass, and a step then multiplies G by Δ instead of running the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model.introspect import weight_of
from ..model.lmhead import plain_linear_head, products_through_onednn
from ..model.onednn import onednn_linear

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

HELD_TOKENS = 256  # base tokens of a held position with a row of their own in the factor
KL_FORMS = ("full", "second-order")


@dataclass(frozen=True)
class SecondOrderReference:
    """A held row's base final hidden states [tail, d] and the factor [tail, HELD_TOKENS + 1, d] of its Fisher."""

    hidden: torch.Tensor
    factor: torch.Tensor

    def kl(self, hidden: torch.Tensor) -> torch.Tensor:
        """½ |G Δ|² at each position, averaged over positions: the second-order KL for the edited states."""
        import torch

        delta = hidden.float() - self.hidden
        projected = torch.einsum("tkd,td->tk", self.factor, delta)
        return 0.5 * projected.pow(2).sum(-1).mean()


def head_is_linear_and_fixed(model: PreTrainedModel) -> bool:
    """The form holds for a head that is one frozen linear map: no bias, no logit soft-capping, not trained."""
    return plain_linear_head(model) and not weight_of(model.get_output_embeddings()).requires_grad


def second_order_references(
    weight: torch.Tensor, logps: Sequence[torch.Tensor], hidden: Sequence[torch.Tensor]
) -> list[SecondOrderReference]:
    """The references of held rows from their base log-probabilities ([tail, vocab] each) and final hidden
    states ([tail, d] each), for a head `weight` [vocab, d]: every position's mean row m = Wᵀ p in one
    product (a product per row read the head once per row: 0.1 s each on 2 cores; 120 positions take
    0.12 s at once by oneDNN on an AMD EPYC)."""
    import torch

    if not logps:
        return []
    head = weight.detach().float()
    probs = torch.cat([lp.detach().float() for lp in logps]).exp()
    # exact over the whole vocabulary; by oneDNN where it takes the fp32 products (0.5 x MKL's time here)
    on_cpu = probs.device.type == "cpu"
    mean = onednn_linear(probs, head.t()) if on_cpu and products_through_onednn() else probs @ head
    top, ids = probs.topk(min(HELD_TOKENS, probs.shape[-1]), dim=-1)
    rows = head[ids]  # [positions, k, d]
    kept = top.unsqueeze(-1)
    factor = kept.sqrt() * (rows - mean.unsqueeze(1))
    rest = (1.0 - top.sum(-1, keepdim=True)).clamp_min(0.0)
    # the other tokens at their mean row w̄ = (m - Σ_top p_v w_v) / rest, weighted as one: √rest (w̄ - m)
    spread = (mean - (kept * rows).sum(1)) / rest.clamp_min(1e-12).sqrt() - rest.sqrt() * mean
    spread = torch.where(rest > 1e-12, spread, torch.zeros_like(mean))
    factors = torch.cat([factor, spread.unsqueeze(1)], dim=1).split([lp.shape[0] for lp in logps])
    return [SecondOrderReference(h.detach().float(), f) for h, f in zip(hidden, factors)]
