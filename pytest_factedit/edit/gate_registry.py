"""One subject gate per model for every subject-gated edit on it, at a cost per pass that does not grow
with the number of edits.

A sequential run keeps each gated edit on the model until the run ends, so the thousandth edit is
trained, probed and decoded under 999 others. Giving each edit its own gate (edit/gate.py) would scan
every edit's patterns on every pass, and scale every targeted module once per edit. Here one decoder
pre-hook reads the pass's ids once and walks one trie of all the edits' patterns (edit/gate_index.py),
which yields, per position, the edits whose subject it holds (and the rest of its sentence, for that
reach); each targeted module has one hook, which multiplies only the matched positions, each by the
factors of its own edits, gathered from one table per module. A pass that names no kept subject adds a
fixed handful of operations, however many edits there are.

The outputs are bit-identical to one `SubjectGate` per edit with its own hooks, stacked in the order the
edits went on (tests/stacked_gates.py keeps that reference and tests/test_gate_registry.py pins it with
`torch.equal`): an edit's hook multiplies x by 1 + mask * (g - 1), which is x * 1 = x where the mask is 0
and x * F, F = 1 + (g - 1) rounded as there, where it is 1; here the first is skipped and the second is
done with the same F, in the same order, on the same positions. An edit still training (not yet sealed)
is applied whole with that formula, so its gradients are the ones its own hooks gave. The text before a
pass that continues a cache (a generation step) is what each edit's own gate would have kept of it: its
last tokens (the per-edit look-back, bounded by `whole_name(first=)`), and which edits' sentences are
still open, kept with the cache (`model/kv.py: row_state`) as a few small tensors, not one per edit.
Sealed gains are read once into the tables: change them only before `seal`, or seal again.

A sealed edit with a relation router (edit/router.py) keeps its marks on a text only where its router
passes the text: decided on the pass that starts the text, from one pass of the base model over the rows
such edits mark, and kept with the cache with the rest of the state, so the text's later passes stay off.
"""

from __future__ import annotations

import itertools
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model.kv import cache_keyword, returned_cache, row_state
from ..model.lmhead import decoder
from ..model.skip import first_rows_safe
from ..model.state_store import row_texts
from .gate import SENTENCE_REACHES
from .gate_index import PatternTrie, rest_of_sentence
from .router import KnownStates, RelationRouter, layer_states
from .words import ENDS_SENTENCE, whole_name

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .subject_gains import SubjectGainEdit

_SERIALS = itertools.count(1)  # edits' serials and registries' state names, never reused in a process
ModuleKey = tuple[str, bool]  # (module name, scaled at its input: a feed-forward output projection)


@dataclass(eq=False)
class _FlagGroup:
    """Edits that share one tokenizer's word flags (edit/words.py): one copy of the flags, one trie."""

    flags: bytes
    trie: PatternTrie = field(default_factory=PatternTrie)
    members: int = 0


@dataclass(eq=False)
class _Entry:
    edit: SubjectGainEdit
    serial: int  # the order the edits went on: the order their factors are applied in
    group: _FlagGroup
    keep: int  # tokens its own gate keeps of the text before a continued pass (SubjectGate.kept_tokens)
    sealed: bool = False


@dataclass
class _Step:
    """What one module does for one pass: sealed edits' factors in layers (a position appears once per
    layer, so edits on one token apply in serial order), or one training edit applied whole."""

    live: _Entry | None
    positions: list[list[int]] = field(default_factory=list)  # flat positions (row x tokens + token), per layer
    slots: list[list[int]] = field(default_factory=list)  # table rows, per layer


@dataclass
class _Pass:
    rows: int
    tokens: int
    marks: dict[int, list[int]]  # edit serial -> flat positions its gains act on
    steps: dict[ModuleKey, list[_Step]]


@dataclass
class _Before:
    """What the gate kept of the text before a continued pass (the same for every row but tail and open)."""

    tails: list[list[int]]
    open: list[set[int]]  # per row, the serials whose sentence was still open
    since: list[tuple[int, int]]  # (latest serial, text length) at each pass where the latest serial changed
    length: int  # tokens of text before this pass, pads included
    written: int  # the latest serial when the state was written: later edits read the pass as new text
    closed: list[set[int]]  # per row, the serials its relation router sent away (edit/router.py): they stay off


class _ModuleGains:
    """One targeted module's hook and its table of sealed factors, one row (slot) per edit, per dtype and
    device; adding or removing an edit costs one row, not a copy of the table."""

    def __init__(self, name: str, handle: Any) -> None:
        self.name, self.handle = name, handle
        self.users = 0
        self.slot_of: dict[int, int] = {}  # serial -> row
        self.owner: dict[int, _Entry] = {}  # row -> entry
        self.free: list[int] = []
        self.capacity = 0
        self.tables: dict[tuple[Any, Any], tuple[torch.Tensor, set[int]]] = {}

    def take(self, entry: _Entry) -> None:
        slot = self.slot_of.get(entry.serial)
        if slot is None:
            slot = self.free.pop() if self.free else len(self.owner)
            self.slot_of[entry.serial], self.owner[slot] = slot, entry
            self.capacity = max(self.capacity, 1) * 2 if slot >= self.capacity else self.capacity
        for _table, filled in self.tables.values():
            filled.discard(slot)

    def release(self, serial: int) -> None:
        slot = self.slot_of.pop(serial, None)
        if slot is not None:
            del self.owner[slot]
            self.free.append(slot)
            for _table, filled in self.tables.values():
                filled.discard(slot)

    def table(self, dtype: torch.dtype, device: torch.device, slots: Sequence[int]) -> torch.Tensor:
        """The factors 1 + (g - 1) in `dtype` on `device`, rows filled the first time a pass needs them."""
        import torch

        table, filled = self.tables.get((dtype, device), (None, set()))
        with torch.no_grad():
            for slot in dict.fromkeys(slots):
                if slot in filled and table is not None:
                    continue
                gain = self.owner[slot].edit.product(self.name)
                assert gain is not None  # a slot is only taken for a module with gains
                factor = (1 + (gain.to(dtype) - 1)).to(device)
                if table is None or table.shape[0] < self.capacity:
                    grown = torch.ones(self.capacity, factor.shape[-1], dtype=dtype, device=device)
                    if table is not None:
                        grown[: table.shape[0]] = table
                    table = grown
                table[slot] = factor
                filled.add(slot)
        assert table is not None
        self.tables[(dtype, device)] = (table, filled)
        return table


REGISTRY_ATTRIBUTE = "_factedit_gate_registry"  # on the model itself: a model dropped with edits on frees all


class GateRegistry:
    """Every subject-gated edit on one model behind one gate (`of(model)`); `add` returns the remover."""

    @classmethod
    def of(cls, model: PreTrainedModel) -> GateRegistry:
        found = model.__dict__.get(REGISTRY_ATTRIBUTE)
        if not isinstance(found, GateRegistry):
            found = model.__dict__[REGISTRY_ATTRIBUTE] = cls(model)
        return found

    def __init__(self, model: PreTrainedModel) -> None:
        self.model_ref = weakref.ref(model)
        self.body = decoder(model)
        self.keyword = cache_keyword(self.body)
        self.state_name = f"subject-gates-{next(_SERIALS)}"
        self.entries: dict[int, _Entry] = {}
        self.serial_of: dict[int, int] = {}  # id(edit) -> serial
        self.unsealed: set[int] = set()  # serials of the edits still training (usually none, or one)
        self.groups: dict[bytes, _FlagGroup] = {}
        self.modules: dict[ModuleKey, _ModuleGains] = {}
        self.keeps: Counter[int] = Counter()
        self.latest = 0
        self.off = 0
        self.unrouted = 0  # > 0: no router decides (localization's passes: edit/gate_registry.py: unrouted)
        self.known_states: KnownStates | None = None  # the base model's states at hand (router_states_served)
        self.body_hooks: list[Any] = []
        self.current: _Pass | None = None
        self.pending: tuple[torch.Tensor, ...] | None = None

    def add(self, edit: SubjectGainEdit) -> Callable[[], None]:
        """`edit` behind the shared gate (unsealed: applied whole, as training needs); the call returned
        takes it off again, and the hooks with the last edit."""
        self.latest = serial = next(_SERIALS)
        group = self.groups.setdefault(edit.gate.word_flags, _FlagGroup(edit.gate.word_flags))
        edit.gate.word_flags = group.flags  # one copy per tokenizer, however many edits are loaded
        entry = _Entry(edit, serial, group, edit.gate.kept_tokens)
        group.trie.add(serial, edit.gate.patterns)
        group.members += 1
        self.entries[serial], self.serial_of[id(edit)] = entry, serial
        self.unsealed.add(serial)
        self.keeps[entry.keep] += 1
        for key in _module_keys(edit):
            if key not in self.modules:
                self.modules[key] = _ModuleGains(key[0], self._module_hook(edit.model, key))
            self.modules[key].users += 1
        if not self.body_hooks:
            # hooks on the decoder itself, which sees every row of a pass: safe where a layer computes its first rows
            before = first_rows_safe(lambda module, args, kwargs: self._before_pass(module, args, kwargs))
            after = first_rows_safe(lambda module, args, output: self._after_pass(module, args, output))
            self.body_hooks = [
                self.body.register_forward_pre_hook(before, with_kwargs=True),
                self.body.register_forward_hook(after),
            ]
        return lambda: self.discard(edit)

    def seal(self, edit: SubjectGainEdit) -> None:
        """`edit`'s gains are final: from now on its factors are gathered from the tables."""
        entry = self.entries[self.serial_of[id(edit)]]
        entry.sealed = True
        self.unsealed.discard(entry.serial)
        for key in _module_keys(edit):
            if edit.product(key[0]) is not None:
                self.modules[key].take(entry)
        self._replan()

    def discard(self, edit: SubjectGainEdit) -> None:
        serial = self.serial_of.pop(id(edit), None)
        if serial is None:
            return
        entry = self.entries.pop(serial)
        self.unsealed.discard(serial)
        entry.group.trie.discard(serial, edit.gate.patterns)
        entry.group.members -= 1
        if not entry.group.members:
            del self.groups[entry.group.flags]
        self.keeps[entry.keep] -= 1
        self.keeps += Counter()
        for key in _module_keys(edit):
            gains = self.modules[key]
            gains.release(serial)
            gains.users -= 1
            if not gains.users:
                gains.handle.remove()
                del self.modules[key]
        if self.current is not None:
            self.current.marks.pop(serial, None)
        self._replan()
        if not self.entries:
            for handle in self.body_hooks:
                handle.remove()
            self.body_hooks, self.current, self.pending = [], None, None
            model = self.model_ref()
            if model is not None and model.__dict__.get(REGISTRY_ATTRIBUTE) is self:
                del model.__dict__[REGISTRY_ATTRIBUTE]

    def may_open(self, ids: Sequence[int]) -> bool:
        """Does the pattern of an edit with gains occur in this text's ids? Where none does, every gain on the
        model multiplies by exactly 1 (SubjectGate.may_open, for all the edits at once, at a cost that does
        not grow with them). An edit added but given no stage yet changes nothing: its editor asks the base
        model's decodes then (edit/objectives.py), which the edits kept before it leave unchanged elsewhere."""
        return self._occurs(ids, self._idle())

    def row_may_open(
        self, prompt: Sequence[int], continuations: Sequence[Sequence[int]], known: KnownStates | None
    ) -> bool:
        """May an edit act on a decode that starts with `prompt` and goes on with any of `continuations` (its
        tokens, its candidates)? `may_open` of each, less the edits whose routers the prefill of `prompt`
        will surely send away (`routed_away`): those stay off for the whole row."""
        texts = [tuple(prompt) + tuple(c) for c in continuations]
        idle = self._idle()
        if not any(self._occurs(text, idle) for text in texts):
            return False
        ignoring = idle | self.routed_away(prompt, known)
        return any(self._occurs(text, ignoring) for text in texts)

    def routed_away(
        self, prompt: Sequence[int], known: KnownStates | None, serials: AbstractSet[int] | None = None
    ) -> set[int]:
        """The edits (of `serials`, or all) that the pass starting `prompt` will route away (`_route`), as far as
        the base model's states in `known` tell: an edit the prefill marks whose router surely turns the prompt
        down (`RelationRouter.surely_fails`). Decodes run without gradients, as `_route` asks; none while its
        other conditions say no router decides, and none whose state is not kept (the decode computes it)."""
        if known is None or self.unsealed or self.unrouted or self.off:
            return set()
        counted = [(group.trie, group.trie.lookups) for group in self.groups.values()]
        marks: dict[int, list[int]] = {}
        try:
            self._matched(0, list(prompt), None, marks, set())
        finally:  # no pass asked this: the passes' matching cost stays theirs
            for trie, lookups in counted:
                trie.lookups = lookups
        away: set[int] = set()
        for serial in marks:
            entry = self.entries[serial]
            router = entry.edit.router
            if router is None or not entry.sealed or (serials is not None and serial not in serials):
                continue
            state = known.get(router.layer, tuple(prompt))
            if state is not None and router.surely_fails(state):
                away.add(serial)
        return away

    def serial(self, edit: SubjectGainEdit) -> int | None:
        """`edit`'s serial here; None when it is not on this registry."""
        return self.serial_of.get(id(edit))

    def _idle(self) -> set[int]:
        """Edits added but given no stage yet: they change nothing."""
        return {serial for serial in self.unsealed if not self.entries[serial].edit.gains}

    def _occurs(self, ids: Sequence[int], ignoring: AbstractSet[int]) -> bool:
        """Does a pattern of an edit not in `ignoring` occur in `ids`?"""
        return any(group.trie.occurs_in(ids, ignoring) for group in self.groups.values())

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Every edit off for the block (the base model's cost and outputs); passes in it keep no gate state."""
        self.off += 1
        try:
            yield
        finally:
            self.off -= 1

    @property
    def lookups(self) -> int:
        """Trie lookups made so far by every pass (the matching cost, for the tests and the benchmark)."""
        return sum(g.trie.lookups for g in self.groups.values())

    def _module_hook(self, model: PreTrainedModel, key: ModuleKey) -> Any:
        module = model.get_submodule(key[0])
        if key[1]:

            @first_rows_safe
            def scale_input(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
                return (self._scaled(key, args[0]),) + tuple(args[1:])

            return module.register_forward_pre_hook(scale_input)

        @first_rows_safe
        def scale_output(_module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
            return self._scaled(key, output)

        return module.register_forward_hook(scale_output)

    def _before_pass(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.current, self.pending = None, None
        if self.off or ids is None or ids.dim() != 2 or not ids.shape[0]:
            return
        cache = kwargs.get(self.keyword)
        continues = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        kept = row_state(cache).get(self.state_name) if continues else None
        if kept is not None and kept[0].shape[0] != ids.shape[0]:  # rows selected by code that does not carry it
            kept = None
        rows = ids.tolist()
        before = _read_state(kept) if kept is not None else None
        closed = before.closed if before is not None else [set() for _ in rows]
        marks: dict[int, list[int]] = {}
        tails, still_open = [], []
        for index, row in enumerate(rows):
            tail, opened = self._matched(index, row, before, marks, closed[index])
            tails.append(tail)
            still_open.append(opened)
        if not continues:
            self._route(ids, kwargs, marks, still_open, closed)
        self.current = _Pass(len(rows), ids.shape[1], marks, {})
        self._replan()
        self.pending = self._state(tails, still_open, before, ids.shape[1], ids.device, closed)

    def _route(
        self,
        ids: torch.Tensor,
        kwargs: dict[str, Any],
        marks: dict[int, list[int]],
        still_open: list[list[int]],
        closed: list[set[int]],
    ) -> None:
        """A pass that starts its text: each sealed edit with a relation router (edit/router.py) keeps its
        marks only on the rows whose question its router passes; the others join `closed`. Not while an edit
        trains (its steps and the decodes it holds see the edits kept before it as they were), nor while one
        is localized (`unrouted`), nor in a pass that keeps gradients."""
        import torch

        routed: dict[int, RelationRouter] = {}
        for serial in marks:
            router = self.entries[serial].edit.router
            if router is not None and self.entries[serial].sealed:
                routed[serial] = router
        if not routed or self.unsealed or self.unrouted or torch.is_grad_enabled():
            return
        tokens = ids.shape[1]
        rows_of = {serial: sorted({p // tokens for p in marks[serial]}) for serial in routed}
        states = self._router_states(ids, kwargs, rows_of, routed)
        for serial, router in routed.items():
            verdicts = router.passes(torch.stack([states[router.layer][row] for row in rows_of[serial]]))
            for row, passed in zip(rows_of[serial], verdicts):
                if not passed:
                    closed[row].add(serial)
                    still_open[row] = [s for s in still_open[row] if s != serial]
            marks[serial] = [p for p in marks[serial] if serial not in closed[p // tokens]]
            if not marks[serial]:
                del marks[serial]

    def _router_states(
        self,
        ids: torch.Tensor,
        kwargs: dict[str, Any],
        rows_of: dict[int, list[int]],
        routed: dict[int, RelationRouter],
    ) -> dict[int, dict[int, torch.Tensor]]:
        """Per router layer, per row: the base model's state at the row's last real token. Those of texts in
        `known_states` are read there; the others come from one pass (`_computed_states`), and are kept there."""
        needed = sorted({row for rows in rows_of.values() for row in rows})
        layers = sorted({router.layer for router in routed.values()})
        known = self.known_states
        texts = row_texts(ids, kwargs, needed) if known is not None else {}
        states: dict[int, dict[int, torch.Tensor]] = {layer: {} for layer in layers}
        for row, text in texts.items():
            found = [known.get(layer, text) for layer in layers] if known is not None else []
            if all(state is not None for state in found):
                for layer, state in zip(layers, found):
                    assert state is not None
                    states[layer][row] = state.to(ids.device)
        missing = [row for row in needed if row not in states[layers[0]]]
        if missing:
            computed = self._computed_states(ids, kwargs, missing, layers)
            for layer in layers:
                states[layer].update(computed[layer])
                if known is not None:
                    known.add(layer, {texts[row]: computed[layer][row] for row in missing if row in texts})
        return states

    def _computed_states(
        self, ids: torch.Tensor, kwargs: dict[str, Any], rows: list[int], layers: list[int]
    ) -> dict[int, dict[int, torch.Tensor]]:
        """Per layer, per one of `rows`: the state at the row's last real token, from one pass of the base
        model (every edit off) over those rows, which stops at the highest of `layers`."""
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=ids.device)
        inputs = {"input_ids": ids.index_select(0, index)}
        for key in ("attention_mask", "position_ids"):
            value = kwargs.get(key)
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[0] == ids.shape[0]:
                inputs[key] = value.index_select(0, index.to(value.device))
        model = self.model_ref()
        assert model is not None  # the registry lives on its model
        with self.disabled():
            found = layer_states(model, layers, inputs.pop("attention_mask", None), **inputs)
        return {layer: dict(zip(rows, found[layer])) for layer in layers}

    def _after_pass(self, _module: Any, _args: Any, output: Any) -> None:
        cache = returned_cache(output) if self.pending is not None else None
        if cache is not None and hasattr(cache, "get_seq_length") and self.pending is not None:
            row_state(cache)[self.state_name] = self.pending

    def _look_back(self, entry: _Entry, before: _Before | None, kept: int) -> int:
        """Where `entry`'s own gate would see the text begin, in the joined row (the tail, then the ids)."""
        if before is None or entry.serial > before.written:
            return kept  # it went on after the state was written: its own gate had no state
        start = next(length for serial, length in before.since if serial >= entry.serial)
        return kept - min(entry.keep, before.length - start, kept)

    def _found(self, joined: list[int], kept: int, before: _Before | None) -> dict[int, set[int]]:
        """Per edit serial, the positions (from the first new id) of its whole-name occurrences."""
        found: dict[int, set[int]] = {}
        starts: dict[int, int] = {}
        for group in self.groups.values():
            for start, end, owners in group.trie.hits(joined, kept - group.trie.longest + 1):
                if end <= kept:
                    continue
                verdicts: dict[int, bool] = {}
                for serial in owners:
                    if serial not in starts:
                        starts[serial] = self._look_back(self.entries[serial], before, kept)
                    first = starts[serial]
                    if start < first:
                        continue
                    if group.flags and first not in verdicts:
                        verdicts[first] = whole_name(joined, start, end, group.flags, first)
                    if not group.flags or verdicts[first]:
                        found.setdefault(serial, set()).update(range(max(start, kept) - kept, end - kept))
        return found

    def _matched(
        self, index: int, ids: list[int], before: _Before | None, marks: dict[int, list[int]], closed: set[int]
    ) -> tuple[list[int], list[int]]:
        """One row: its edits' positions added to `marks` (flat), but for the `closed` serials; (the tail to
        keep, the serials whose sentence is still open after it)."""
        tail = before.tails[index] if before is not None else []
        joined = tail + ids
        found = self._found(joined, len(tail), before)
        was_open = {s for s in before.open[index] if s in self.entries} if before is not None else set()
        ends: dict[int, list[int]] = {}
        still_open: list[int] = []
        offset = index * len(ids)
        for serial in sorted((found.keys() | was_open) - closed):
            entry = self.entries[serial]
            subject = found.get(serial, set())
            positions = sorted(subject)
            if entry.edit.gate.reach in SENTENCE_REACHES:
                group = entry.group
                if id(group) not in ends:
                    ends[id(group)] = _sentence_ends(ids, group.flags)
                own_ends = [t for t in ends[id(group)] if t not in subject]
                positions, opened = rest_of_sentence(positions, own_ends, serial in was_open, len(ids))
                if entry.edit.gate.reach == "after-subject":
                    positions = [t for t in positions if t not in subject]
                if opened:
                    still_open.append(serial)
            if positions:
                marks.setdefault(serial, []).extend(offset + t for t in positions)
        keep = max(self.keeps, default=0)
        return joined[len(joined) - min(keep, len(joined)) :], still_open

    def _state(
        self,
        tails: list[list[int]],
        still_open: list[list[int]],
        before: _Before | None,
        tokens: int,
        device: torch.device,
        closed: list[set[int]],
    ) -> tuple[torch.Tensor, ...]:
        """(tails, open serials padded with -1, since serials, since lengths, length, written, closed serials
        padded with -1), batch first."""
        import torch

        length = (before.length if before is not None else 0) + tokens
        since = list(before.since) if before is not None else []
        if not since or since[-1][0] != self.latest:
            since.append((self.latest, length - tokens))
        keep = max(self.keeps, default=0)
        while len(since) > 1 and length - since[1][1] >= keep:  # every edit sees `keep` tokens back from both
            since.pop(0)
        rows = len(tails)
        values = [
            tails,
            _padded(still_open),
            [[s for s, _ in since]] * rows,
            [[n for _, n in since]] * rows,
            [[length]] * rows,
            [[self.latest]] * rows,
            _padded([sorted(c) for c in closed]),
        ]
        return tuple(torch.tensor(v, dtype=torch.long, device=device) for v in values)

    def _replan(self) -> None:
        """The current pass's steps per module, from its marks (after a pass, a seal or a removal)."""
        current = self.current
        if current is None:
            return
        current.steps = {}
        used: dict[ModuleKey, dict[int, int]] = {}  # per module: flat position -> layers of the open sealed step
        for serial in sorted(current.marks):
            entry = self.entries[serial]
            if not entry.edit.gate.enabled:
                continue
            for key in _module_keys(entry.edit):
                plan = current.steps.setdefault(key, [])
                if not entry.sealed:
                    plan.append(_Step(entry, [current.marks[serial]]))
                    continue
                slot = self.modules[key].slot_of.get(serial)
                if slot is None:
                    continue
                if not plan or plan[-1].live is not None:
                    plan.append(_Step(None))
                    used[key] = {}
                _layered(plan[-1], used[key], current.marks[serial], slot)

    def _scaled(self, key: ModuleKey, x: torch.Tensor) -> torch.Tensor:
        """x with every matched edit's factor applied at its positions (x itself when none matched, or when
        x is not the last pass's [rows, tokens, d] or [rows x tokens, d], or its first rows: a layer of a
        localization pass may compute only those, `first_rows_safe`)."""
        current = self.current
        plan = current.steps.get(key) if current is not None else None
        if not plan or current is None:
            return x
        rows = _pass_rows(x, current)
        if rows is None:
            return x
        end = rows * current.tokens  # flat positions below it are in the rows x holds
        for step in plan:
            x = self._gathered(key, step, x, end) if step.live is None else _applied_whole(key[0], step, x, end)
        return x

    def _gathered(self, key: ModuleKey, step: _Step, x: torch.Tensor, end: int) -> torch.Tensor:
        import torch

        table = self.modules[key].table(x.dtype, x.device, [s for layer in step.slots for s in layer])
        flat = x.reshape(-1, x.shape[-1])
        for positions, slots in _within(step.positions, step.slots, end):
            where = torch.tensor(positions, dtype=torch.long, device=x.device)
            factors = table.index_select(0, torch.tensor(slots, dtype=torch.long, device=x.device))
            flat = flat.index_put((where,), flat.index_select(0, where) * factors)
        return flat.reshape(x.shape)


@contextmanager
def unrouted(model: PreTrainedModel) -> Iterator[None]:
    """For the block, the edits kept on `model` act without their routers, as they did before routers: for
    localization, whose passes let decoder layers compute only some rows, or none (a router's own pass would
    read those), and which traces the model as the edit about to be made will be trained on."""
    registry = model.__dict__.get(REGISTRY_ATTRIBUTE)
    if not isinstance(registry, GateRegistry):
        yield
        return
    registry.unrouted += 1
    try:
        yield
    finally:
        registry.unrouted -= 1


@contextmanager
def router_states_served(model: PreTrainedModel, states: KnownStates | None) -> Iterator[None]:
    """For the block, the routers of the edits on `model` read the base model's last-token states from
    `states` where they are kept there, and keep there the ones their passes compute (saved when the
    block ends). The caller vouches that with every gated edit off, `model` is the model `states` are of
    (no edit merged into its weights). With None, or no gated edit on the model, nothing changes."""
    registry = model.__dict__.get(REGISTRY_ATTRIBUTE)
    if states is None or not isinstance(registry, GateRegistry):
        yield
        return
    before, registry.known_states = registry.known_states, states
    try:
        yield
    finally:
        registry.known_states = before
        states.save()


def _pass_rows(x: torch.Tensor, current: _Pass) -> int | None:
    """How many of the pass's first rows `x` holds: [rows, tokens, d] (or a layer's first rows of it), or
    [rows x tokens, d] whole; None when it is not the pass's."""
    if x.dim() == 3 and x.shape[1] == current.tokens and x.shape[0] <= current.rows:
        return int(x.shape[0])
    if x.dim() == 2 and x.shape[0] == current.rows * current.tokens:
        return current.rows
    return None


def _within(positions: list[list[int]], slots: list[list[int]], end: int) -> Iterator[tuple[list[int], list[int]]]:
    """Each layer's positions below `end`, with their slots (all of them when x holds every row)."""
    for layer_positions, layer_slots in zip(positions, slots):
        kept = [(p, s) for p, s in zip(layer_positions, layer_slots) if p < end]
        if kept:
            yield [p for p, _ in kept], [s for _, s in kept]


def _layered(step: _Step, used: dict[int, int], positions: list[int], slot: int) -> None:
    """One sealed edit's positions into `step`'s layers: the k-th edit on a position goes to layer k."""
    for position in positions:
        layer = used.get(position, 0)
        used[position] = layer + 1
        if layer == len(step.positions):
            step.positions.append([])
            step.slots.append([])
        step.positions[layer].append(position)
        step.slots[layer].append(slot)


def _applied_whole(name: str, step: _Step, x: torch.Tensor, end: int) -> torch.Tensor:
    """A training edit as its own hook applies it: x * (1 + mask * (g - 1)), with g read now (gradients
    reach the stage being trained); `end`: the flat positions x holds."""
    import torch

    assert step.live is not None
    gain = step.live.edit.product(name)
    if gain is None:
        return x
    mask = torch.zeros(x.shape[:-1].numel(), dtype=torch.bool, device=x.device)
    mask[torch.tensor([p for p in step.positions[0] if p < end], dtype=torch.long, device=x.device)] = True
    mask = mask.reshape(*x.shape[:-1], 1).to(x.dtype)
    return x * (1 + mask * (gain.to(x.dtype) - 1))


def _module_keys(edit: SubjectGainEdit) -> list[ModuleKey]:
    feedforward = set(edit.targets.feedforward)
    return [(name, name in feedforward) for name in edit.targets.modules]


def _sentence_ends(ids: Sequence[int], flags: bytes) -> list[int]:
    """The positions of tokens that end a sentence (edit/gate.py: rest_of_sentence, read on the host)."""
    if not flags:
        return []
    last = len(flags) - 1
    return [t for t, token in enumerate(ids) if token <= last and flags[max(token, 0)] & ENDS_SENTENCE]


def _padded(serials: list[list[int]]) -> list[list[int]]:
    """Each row's serials, padded with -1 to the longest row's count (a tensor's rows)."""
    width = max((len(row) for row in serials), default=0)
    return [row + [-1] * (width - len(row)) for row in serials]


def _read_state(kept: tuple[torch.Tensor, ...]) -> _Before:
    tails, still_open, since_serials, since_lengths, lengths, written, closed = (t.tolist() for t in kept)
    return _Before(
        tails,
        [{s for s in row if s >= 0} for row in still_open],
        list(zip(since_serials[0], since_lengths[0])),
        lengths[0][0],
        written[0][0],
        [{s for s in row if s >= 0} for row in closed],
    )
