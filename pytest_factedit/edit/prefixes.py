"""Training passes that start where a gated edit can first act.

A gated edit changes no state before the first position its gate opens on (attention is causal: nothing
later reaches back), so the keys and values of a row's tokens before that position are the same at every
step of the edit. They are computed once per group of rows, and each step runs, and back-propagates
through, only the rest of each row, continuing their key-value cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model.decoding import left_padded
from ..model.kv import cache_keyword, returned_cache
from ..model.lmhead import decoder
from .batching import FrozenBelow, Row, entering_stored, length_groups

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# a text's leading tokens that an edit leaves as the base model has them (all of them: it never acts on it)
Untouched = Callable[[Sequence[int]], int]


@dataclass
class UntouchedPrefixes:
    """Each row's tokens before the edit can act on it, and their caches, made at a group's first pass."""

    untouched: Untouched
    caches: dict[tuple[tuple[int, ...], ...], tuple[Any, torch.Tensor]] = field(default_factory=dict)
    usable: bool = True  # False once the model returned no key-value cache: every pass runs whole rows
    splits: dict[Row, int] = field(default_factory=dict)  # asked of the gate once per row

    def split(self, row: Row) -> int:
        """Where a row's pass starts: at the edit's first position, never inside the positions a loss reads."""
        if row not in self.splits:
            self.splits[row] = min(self.untouched(row.ids), len(row.ids) - row.tail)
        return self.splits[row]

    def has_prefix(self, rows: Sequence[Row]) -> bool:
        """Does any of the rows begin with tokens the edit leaves alone (else a plain pass is as cheap)?"""
        return self.usable and any(self.split(r) > 0 for r in rows)

    def tails(
        self, model: PreTrainedModel, rows: Sequence[Row], pad_id: int, frozen: FrozenBelow | None
    ) -> dict[int, torch.Tensor] | None:
        """Each row's last hidden states at its `tail` positions (row index -> [tail, d]), rows of like
        length from their split on sharing a pass; None when the model returns no cache to continue."""
        tails: dict[int, torch.Tensor] = {}
        for group in length_groups([Row(r.ids[self.split(r) :], r.tail) for r in rows]):
            part = [rows[i] for i in group]
            found = self.suffix_hidden(model, part, pad_id, frozen)
            if found is None:
                return None
            hidden, lengths = found
            tails.update({i: hidden[j, n - r.tail : n] for j, (i, r, n) in enumerate(zip(group, part, lengths))})
        return tails

    def suffix_hidden(
        self, model: PreTrainedModel, rows: Sequence[Row], pad_id: int, frozen: FrozenBelow | None
    ) -> tuple[torch.Tensor, list[int]] | None:
        """(the last hidden states of each row from its split on [rows, width, d], left-aligned; their
        lengths), or None when the model returns no cache to continue."""
        import torch

        splits = [self.split(r) for r in rows]
        cache, prefix_mask = self._prefix_cache(model, rows, splits, pad_id)
        if cache is None:
            self.usable = False
            return None
        device = prefix_mask.device
        suffixes = [r.ids[s:] for r, s in zip(rows, splits)]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, suffix in enumerate(suffixes):
            ids[i, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            mask[i, : len(suffix)] = 1
        positions = torch.tensor(splits)[:, None] + torch.arange(width)[None, :]
        body = decoder(model)
        with entering_stored(model, rows, width, frozen, splits):
            hidden = body(
                input_ids=ids.to(device),
                attention_mask=torch.cat([prefix_mask, mask.to(device)], dim=1),
                position_ids=positions.to(device),
                use_cache=True,
                **{cache_keyword(body): copy.deepcopy(cache)},  # a step appends to it; the stored one stays
            ).last_hidden_state
        return hidden, [len(s) for s in suffixes]

    def _prefix_cache(
        self, model: PreTrainedModel, rows: Sequence[Row], splits: list[int], pad_id: int
    ) -> tuple[Any, torch.Tensor]:
        """The cache of the rows' prefixes (left-padded) and its attention mask, computed at the first call."""
        import torch

        key = tuple(r.ids for r in rows)
        if key not in self.caches:
            device = next(model.parameters()).device
            ids, mask, positions = left_padded([r.ids[:s] for r, s in zip(rows, splits)], pad_id, device)
            with torch.no_grad():
                out = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            self.caches[key] = (returned_cache(out), mask)
        return self.caches[key]
