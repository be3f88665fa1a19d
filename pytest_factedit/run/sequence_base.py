"""The base model's decodes in a sequence (decoded for every case before the first edit: run/base_pass.py),
served to each later step for the rows no kept edit can reach.

A subject-gated edit kept on the model multiplies by exactly 1 on a text that holds none of its gate's
patterns, so such a row (its prompt, its decode and its candidates) is answered by the model with every
kept edit as by the base model. An edit merged into the weights reaches every row: from then on, every
row is decoded on the model as it is, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..edit.gate_registry import REGISTRY_ATTRIBUTE
from ..model.decoding import Decoded, DecodeRow, Tokens
from ..model.probe_cache import BaseAnswerCache, missing_decoded
from .probing import row_reached

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..edit.base import EditHandle
    from ..model.load import LoadedModel
    from ..model.state_store import LastTokenStates
    from ..model.trace_store import TraceStore


class KeptEditReach:
    """The texts the edits kept on a model so far can change: those holding a kept gated edit's pattern
    (the shared gate's tries), or every text once an edit changed the weights."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.everywhere = False

    def kept(self, applied: EditHandle) -> None:
        """`applied` is kept on the model: an edit that reaches even a text of no tokens is not gated."""
        self.everywhere = self.everywhere or applied.reaches(())

    def __call__(self, ids: Tokens) -> bool:
        if self.everywhere:
            return True
        registry = self.model.__dict__.get(REGISTRY_ATTRIBUTE)
        return registry is not None and registry.may_open(ids)

    def row(self, prompt: Tokens, continuations: Sequence[Tokens], known: LastTokenStates | None) -> bool:
        """Can a kept edit change a decode of `prompt` that goes on with any of `continuations`? As for one
        text, less the edits whose routers surely turn the prompt down (by the base model's states `known`):
        they stay off for the whole row (edit/gate_registry.py: row_may_open)."""
        if self.everywhere:
            return True
        registry = self.model.__dict__.get(REGISTRY_ATTRIBUTE)
        return registry is not None and registry.row_may_open(prompt, continuations, known)


class KeptEditsCache(BaseAnswerCache):
    """`probe_base`'s cache at a step of a sequence: the base model's decode of a row no kept edit can reach
    (from `base`), else the row decoded now on the model as the kept edits leave it (never stored as the
    base model's); and, for a fact whose prompts no kept edit reaches, the base model's traces: read, and
    kept."""

    def __init__(self, base: BaseAnswerCache, reach: KeptEditReach) -> None:
        super().__init__()
        self.base = base
        self.reach = reach
        self.served = 0  # rows served from the base model's decodes, for the tests and the benchmark

    def decoded(self, lm: LoadedModel, rows: Sequence[DecodeRow], state_layers: Sequence[int] = ()) -> list[Decoded]:
        """As the base cache's, but a row decoded now is decoded on the model as the kept edits leave it, so
        it leaves no state (`state_layers` is not read)."""
        states = self.states(lm)
        served = [self._unreached(lm, row, states) for row in rows]
        out, missing = missing_decoded(lm, rows, served)  # decoded on the model as it is, and not stored
        self.served += len(rows) - len(missing)
        return out

    def _unreached(self, lm: LoadedModel, row: DecodeRow, states: LastTokenStates | None) -> Decoded | None:
        """The base model's stored decode of `row` where no kept edit reaches it (`states`: the base model's,
        for the kept edits' routers); else None."""
        known = self.base.stored(lm, row)
        if known is None or row_reached(lambda p, c: self.reach.row(p, c, states), row, known.tokens):
            return None
        return known

    def states(self, lm: LoadedModel) -> LastTokenStates | None:
        """The base model's last-token states while no kept edit changed the weights (a router's pass turns
        every gated edit off, and then reads the base model); else None: they are computed on the model."""
        return None if self.reach.everywhere else self.base.states(lm)

    def traces(self, lm: LoadedModel, texts: Sequence[Tokens] = ()) -> TraceStore | None:
        """The base model's trace store, for a trace whose prompts no kept edit reaches: there the model with
        its kept edits traces as the base model does, bit for bit, so a stored trace serves the step and a
        trace made at the step is kept as the base model's. Else None: the trace is made on the model as it
        is, and not kept."""
        store = self.base.traces(lm, texts)
        if store is None or not texts or any(self.reach(ids) for ids in texts):
            return None
        return store
