"""Training passes that start where a gated edit can first act.

A gated edit changes no state before the first position its gate opens on (attention is causal: nothing
later reaches back), so the keys and values of a row's tokens before that position are the same at every
step of the edit. They are computed once per edit, every row's in one pass, and each step runs, and
back-propagates through, only the rest of each row, continuing their key-value cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model.decoding import left_padded
from ..model.kv import cache_keyword, cache_rows, returned_cache
from ..model.lmhead import decoder
from .batching import FrozenBelow, Row, entering_stored, length_groups

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# a text's leading tokens that an edit leaves as the base model has them (all of them: it never acts on it)
Untouched = Callable[[Sequence[int]], int]


@dataclass(frozen=True)
class SharedPrefixes:
    """The prefixes of an edit's rows, left-padded in one pass: its cache, attention mask, and each prefix's row."""

    cache: Any
    mask: torch.Tensor
    index: dict[tuple[int, ...], int]


@dataclass
class UntouchedPrefixes:
    """Each row's tokens before the edit can act on it, and their caches: the prefixes of `rows` (every row
    the edit will run) and of any other row asked for share one pass, from which a group's cache is cut."""

    untouched: Untouched
    rows: Sequence[Row] = ()
    caches: dict[tuple[tuple[int, ...], ...], tuple[Any, torch.Tensor]] = field(default_factory=dict)
    usable: bool = True  # False once the model returned no key-value cache: every pass runs whole rows
    splits: dict[Row, int] = field(default_factory=dict)  # asked of the gate once per row
    shared: SharedPrefixes | None = None

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
        """The cache of the rows' prefixes (left-padded alike) and its attention mask: the shared pass's rows."""
        import torch

        key = tuple(r.ids for r in rows)
        if key not in self.caches:
            prefixes = [r.ids[:s] for r, s in zip(rows, splits)]
            shared = self._shared(model, prefixes, pad_id)
            if shared.cache is None:
                return None, shared.mask
            picked = torch.tensor([shared.index[p] for p in prefixes], device=shared.mask.device)
            self.caches[key] = (cache_rows(shared.cache, picked), shared.mask.index_select(0, picked))
        return self.caches[key]

    def _shared(self, model: PreTrainedModel, prefixes: Sequence[tuple[int, ...]], pad_id: int) -> SharedPrefixes:
        """One pass over the prefixes of `rows` and of `prefixes`; run again, with those it had, for a prefix
        it lacks (a row the edit did not announce)."""
        import torch

        if self.shared is not None and all(p in self.shared.index for p in prefixes):
            return self.shared
        known = list(self.shared.index) if self.shared is not None else []
        ordered = list(dict.fromkeys([*known, *(r.ids[: self.split(r)] for r in self.rows), *prefixes]))
        device = next(model.parameters()).device
        ids, mask, positions = left_padded(ordered, pad_id, device)
        with torch.no_grad():
            out = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        self.shared = SharedPrefixes(returned_cache(out), mask, {p: i for i, p in enumerate(ordered)})
        return self.shared
