"""Training passes that start where a gated edit can first act.

A gated edit changes no state before the first position its gate opens on (attention is causal: nothing
later reaches back), so the keys and values of a row's tokens before that position are the same at every
step of the edit. They are computed once per edit, every row's in one pass, and each step runs, and
back-propagates through, only the rest of each row, continuing their key-value cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model.decoding import left_padded
from ..model.kv import cache_keyword, cache_rows, returned_cache
from ..model.lmhead import decoder
from ..model.skip import capture_entering
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
    layer: int = 0  # > 0: `entering` holds the states entering this decoder layer [prefixes, width, d]
    entering: torch.Tensor | None = None


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
        self, model: PreTrainedModel, rows: Sequence[Row], pad_id: int, frozen: FrozenBelow | None, capture: int = 0
    ) -> tuple[dict[int, torch.Tensor], FrozenBelow | None] | None:
        """Each row's last hidden states at its `tail` positions (row index -> [tail, d]), rows of like
        length from their split on sharing a pass; with `capture` (a layer), also the states entering that
        layer over each whole row, the prefix's from the shared pass (batching.base_tails). None when the
        model returns no cache to continue."""
        tails: dict[int, torch.Tensor] = {}
        states: dict[tuple[int, ...], torch.Tensor] = {}
        extras: int | None = -1
        if capture > 0:  # the prefixes' states entering that layer come from the shared pass
            self._shared(model, [r.ids[: self.split(r)] for r in rows], pad_id, capture)
        for group in length_groups([Row(r.ids[self.split(r) :], r.tail) for r in rows]):
            part = [rows[i] for i in group]
            store: dict[str, Any] = {}
            found = self.suffix_hidden(model, part, pad_id, frozen, capture, store)
            if found is None:
                return None
            hidden, lengths = found
            tails.update({i: hidden[j, n - r.tail : n] for j, (i, r, n) in enumerate(zip(group, part, lengths))})
            if capture > 0:
                extras = store["extras"] if extras is not None else None
                states.update(self._whole_states(part, store["hidden"], lengths))
        return tails, FrozenBelow(capture, states, extras) if capture > 0 and extras is not None else None

    def _whole_states(
        self, rows: Sequence[Row], suffixes: torch.Tensor, lengths: Sequence[int]
    ) -> dict[tuple[int, ...], torch.Tensor]:
        """Each row's states entering the captured layer: its prefix's (shared pass), then its suffix's."""
        import torch

        shared = self.shared
        assert shared is not None and shared.entering is not None, "the shared pass captured the layer"
        width = shared.mask.shape[1]
        found = {}
        for j, (row, length) in enumerate(zip(rows, lengths)):
            split = self.split(row)
            before = shared.entering[shared.index[row.ids[:split]], width - split :]
            found[row.ids] = torch.cat([before, suffixes[j, :length]])
        return found

    def suffix_hidden(
        self,
        model: PreTrainedModel,
        rows: Sequence[Row],
        pad_id: int,
        frozen: FrozenBelow | None,
        capture: int = 0,
        store: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, list[int]] | None:
        """(the last hidden states of each row from its split on [rows, width, d], left-aligned; their
        lengths), or None when the model returns no cache to continue. With `capture`, `store` receives
        the states entering that layer (`capture_entering`)."""
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
        watch = capture_entering(model, capture, store if store is not None else {}) if capture else nullcontext()
        with watch, entering_stored(model, rows, width, frozen, splits):
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

    def _shared(
        self, model: PreTrainedModel, prefixes: Sequence[tuple[int, ...]], pad_id: int, capture: int = 0
    ) -> SharedPrefixes:
        """One pass over the prefixes of `rows` and of `prefixes` (with `capture`, keeping the states entering
        that layer); run again, with those it had, for a prefix it lacks (a row the edit did not announce) or
        a layer it did not keep."""
        import torch

        shared = self.shared
        if shared is not None and all(p in shared.index for p in prefixes) and capture in (0, shared.layer):
            return shared
        layer = capture or (shared.layer if shared is not None else 0)
        known = list(shared.index) if shared is not None else []
        ordered = list(dict.fromkeys([*known, *(r.ids[: self.split(r)] for r in self.rows), *prefixes]))
        device = next(model.parameters()).device
        ids, mask, positions = left_padded(ordered, pad_id, device)
        store: dict[str, Any] = {}
        with torch.no_grad(), capture_entering(model, layer, store) if layer else nullcontext():
            out = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        index = {p: i for i, p in enumerate(ordered)}
        self.shared = SharedPrefixes(returned_cache(out), mask, index, layer, store.get("hidden"))
        return self.shared
