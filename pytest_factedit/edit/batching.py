"""Training rows and the forward pass of a step: rows of like length together, logits only where a loss
needs them, and the layers below the lowest adapter skipped (their hidden states are computed once)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..model.decoding import left_padded
from ..model.lmhead import decoder, logits_from_hidden
from ..model.precision import autocast_head_weight
from ..model.skip import capture_entering, entering_at

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .prefixes import UntouchedPrefixes


@dataclass(frozen=True)
class Row:
    """A token sequence and how many of its final positions need next-token distributions."""

    ids: tuple[int, ...]
    tail: int


@dataclass
class FrozenBelow:
    """The hidden states entering decoder layer `layer` for each row's tokens, computed once with the base
    model: no adapter sits below `layer`, so they are the same at every step of an edit."""

    layer: int
    states: dict[tuple[int, ...], torch.Tensor]  # a row's ids -> [len(ids), d]
    extras: int = -1  # how the layers return hidden states (see model/skip.py)

    def state(self, ids: tuple[int, ...]) -> torch.Tensor | None:
        """A row's states: its own, or the first positions of a longer row it begins (causal attention)."""
        if ids in self.states:
            return self.states[ids]
        for longer, state in self.states.items():
            if longer[: len(ids)] == ids:
                return state[: len(ids)]
        return None


def length_groups(rows: Sequence[Row], call_tokens: int = 64) -> list[list[int]]:
    """Row indices in groups of similar length, one forward pass each: the split of the rows (sorted by
    length) that costs least, counting each group's padded tokens plus `call_tokens` per pass."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    widths = [len(rows[i].ids) for i in order]
    best = [0.0] + [float("inf")] * len(order)  # best[k]: least cost of the first k rows
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + widths[end - 1] * (end - start) + call_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def tail_logprobs(
    model: PreTrainedModel,
    rows: Sequence[Row],
    pad_id: int,
    frozen: FrozenBelow | None = None,
    prefixes: UntouchedPrefixes | None = None,
    heads: Sequence[bool] | None = None,
) -> list[torch.Tensor]:
    """Log-softmax distributions at each row's last `tail` positions: a list of [tail, vocab] tensors.

    Rows of like length share a forward pass (`length_groups`); with `frozen`, the passes enter at its
    layer; with `prefixes`, each row's pass starts where the edit can first act on it (edit/prefixes.py).
    The LM head runs once, only on the positions a loss needs: with `heads`, a row marked False gets its
    final hidden states [tail, d] instead (a held row's second-order KL needs no head: edit/second_order.py).
    """
    tails, _ = _tail_passes(model, rows, pad_id, frozen, 0, prefixes)
    return _logprobs(model, rows, tails, heads)


def base_tails(
    model: PreTrainedModel,
    rows: Sequence[Row],
    pad_id: int,
    layer: int,
    prefixes: UntouchedPrefixes | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], FrozenBelow | None]:
    """`tail_logprobs` of `rows` with the base model, each row's final hidden states at those positions
    ([tail, d]), and the hidden states entering `layer` (None when `layer` is 0, or when the layers return
    what `entering_at` cannot stand in for); with `prefixes`, the rows' passes start at their splits, and
    the shared pass of their prefixes is made here."""
    tails, kept = _tail_passes(model, rows, pad_id, None, layer, prefixes)
    return _logprobs(model, rows, tails), [tails[i] for i in range(len(rows))], kept


def _tail_passes(
    model: PreTrainedModel,
    rows: Sequence[Row],
    pad_id: int,
    frozen: FrozenBelow | None,
    capture: int,
    prefixes: UntouchedPrefixes | None = None,
) -> tuple[dict[int, torch.Tensor], FrozenBelow | None]:
    """Each row's final hidden states at its tail positions (row index -> [tail, d]), and with `capture`
    the states entering that layer."""
    device = next(model.parameters()).device
    tails: dict[int, torch.Tensor] = {}
    states: dict[tuple[int, ...], torch.Tensor] = {}
    extras: int | None = -1
    if prefixes is not None and prefixes.has_prefix(rows):
        found = prefixes.tails(model, rows, pad_id, frozen, capture)
        if found is not None:  # None: the model keeps no key-value cache to continue
            return found
    for group in length_groups(rows):
        part = [rows[i] for i in group]
        ids, mask, positions = left_padded([r.ids for r in part], pad_id, device)
        store: dict[str, Any] = {}
        watch = capture_entering(model, capture, store) if capture > 0 else nullcontext()
        with watch, entering_stored(model, part, ids.shape[1], frozen):
            hidden = decoder(model)(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state
        width = ids.shape[1]
        tails.update({i: hidden[j, width - r.tail :] for j, (i, r) in enumerate(zip(group, part))})
        if capture > 0:
            extras = store["extras"] if extras is not None else None
            states.update({r.ids: store["hidden"][j, width - len(r.ids) :] for j, r in enumerate(part)})
    kept = FrozenBelow(capture, states, extras) if capture > 0 and extras is not None else None
    return tails, kept


def _logprobs(
    model: PreTrainedModel,
    rows: Sequence[Row],
    tails: dict[int, torch.Tensor],
    heads: Sequence[bool] | None = None,
) -> list[torch.Tensor]:
    """The LM head's log-softmax on the tail positions (`tails`: row index -> hidden states) of every row,
    or of those `heads` marks (the others keep their hidden states), in one product (under a bf16 training
    precision, with the head's bf16 copy), split back per row."""
    import torch

    headed = [i for i in range(len(rows)) if heads is None or heads[i]]
    out = {i: tails[i] for i in range(len(rows))}
    if headed:
        hidden = torch.cat([tails[i] for i in headed])
        logp = torch.log_softmax(logits_from_hidden(model, hidden, autocast_head_weight(model)).float(), -1)
        out.update(zip(headed, torch.split(logp, [rows[i].tail for i in headed])))
    return [out[i] for i in range(len(rows))]


def entering_stored(
    model: PreTrainedModel,
    rows: Sequence[Row],
    width: int,
    frozen: FrozenBelow | None,
    splits: Sequence[int] | None = None,
) -> Any:
    """`entering_at` frozen.layer with the rows' stored states in a [rows, width, d] block of zeros: whole and
    left-padded, or (`splits`) each from its split on and right-padded (edit/prefixes.py); or nothing to do
    (no frozen states, or a row without them)."""
    states = [frozen.state(r.ids) for r in rows] if frozen is not None else []
    if frozen is None or any(s is None for s in states):
        return nullcontext()
    first = states[0]
    assert first is not None
    hidden = first.new_zeros((len(rows), width, first.shape[-1]))
    for j, state in enumerate(states):
        assert state is not None
        if splits is None:
            hidden[j, width - state.shape[0] :] = state
        else:
            hidden[j, : state.shape[0] - splits[j]] = state[splits[j] :]
    return entering_at(model, frozen.layer, hidden, frozen.extras)


def kl_to_reference(reference_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(reference || current), summed over the vocabulary, averaged over positions."""
    import torch

    return torch.sum(reference_logp.exp() * (reference_logp - logp), dim=-1).mean()
