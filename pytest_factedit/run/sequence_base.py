"""The base model's decodes in a sequence: every case's probe rows decoded before the first edit, all cases
together, then served to each later step for the rows no kept edit can reach.

A subject-gated edit kept on the model multiplies by exactly 1 on a text that holds none of its gate's
patterns, so such a row (its prompt, its decode and its candidates) is answered by the model with every
kept edit as by the base model. An edit merged into the weights reaches every row: from then on, every
row is decoded on the model as it is, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..edit.gate_registry import REGISTRY_ATTRIBUTE
from ..infra.events import PROBE_BASE, PROBE_END, PROBE_START, emit
from ..model.decoding import Decoded, DecodeRow, Tokens, decode
from ..model.probe_cache import BaseAnswerCache
from ..model.trace_store import TraceStore
from .probing import base_requests, row_reached

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..cases.schema import FactCase
    from ..edit.base import EditHandle
    from ..edit.settings import EditSettings
    from ..model.load import LoadedModel

CASES_PER_PASS = 32  # cases whose rows share one batched decode before the first edit (memory stays bounded)


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


class KeptEditsCache(BaseAnswerCache):
    """`probe_base`'s cache at a step of a sequence: the base model's decode of a row no kept edit can reach
    (from `base`), else the row decoded now on the model as the kept edits leave it (never stored as the
    base model's); and the base model's stored trace of a fact whose prompts no kept edit reaches."""

    def __init__(self, base: BaseAnswerCache, reach: KeptEditReach) -> None:
        super().__init__()
        self.base = base
        self.reach = reach
        self.served = 0  # rows served from the base model's decodes, for the tests and the benchmark

    def decoded(self, lm: LoadedModel, rows: Sequence[DecodeRow]) -> list[Decoded]:
        out: list[Decoded | None] = []
        for row in rows:
            known = self.base.stored(lm, row)
            out.append(known if known is not None and not row_reached(self.reach, row, known.tokens) else None)
        missing = [i for i, d in enumerate(out) if d is None]
        self.served += len(rows) - len(missing)
        if missing:
            for i, found in zip(missing, decode(lm.model, lm.tokenizer, [rows[i] for i in missing])):
                out[i] = found
        return [d for d in out if d is not None]

    def traces(self, lm: LoadedModel, texts: Sequence[Tokens] = ()) -> TraceStore | None:
        """The base model's stored traces, read only, for a trace whose prompts no kept edit reaches (there
        the model traces as the base model does); else None: the trace is made on the model as it is."""
        store = self.base.traces(lm, texts)
        if store is None or not texts or any(self.reach(ids) for ids in texts):
            return None
        return ReadOnlyTraces(store.folder.parent, store.identity)


class ReadOnlyTraces(TraceStore):
    """A trace store that serves and keeps nothing new: a trace made under kept edits is not stored as the
    base model's (it is the same where it was served from, and may differ elsewhere)."""

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        return None


def probed_before_any_edit(
    lm: LoadedModel,
    cases: Sequence[FactCase],
    settings_for: Callable[[FactCase], EditSettings],
    base: BaseAnswerCache,
) -> None:
    """Every case's `probe_base` rows decoded by the base model into `base`, CASES_PER_PASS cases per batched
    decode; a case whose settings or rows fail is left to its own step (which reports it).

    The rows go longest budget first, then by prompt length: the prompts that run on to the fluency length
    share their greedy steps, the rows settled after a few tokens leave together, and little is padding.
    A display hears it as a base probe (PROBE_START, PROBE_END)."""
    emit(PROBE_START, PROBE_BASE)
    for start in range(0, len(cases), CASES_PER_PASS):
        requests: list[DecodeRow] = []
        for case in cases[start : start + CASES_PER_PASS]:
            try:
                requests += base_requests(lm, case, settings_for(case))
            except Exception:  # the step of this case meets the same error and records it
                continue
        if requests:
            base.decoded(lm, sorted(merged_rows(requests), key=lambda r: (-r.max_tokens, len(r.ids))))
    emit(PROBE_END, PROBE_BASE)


def merged_rows(requests: Sequence[DecodeRow]) -> list[DecodeRow]:
    """One row per prompt: cases that share a prompt (a control) ask it with their own candidates and stop
    rules, so it is decoded once with every candidate, to the longest budget and without a settle rule.
    A stored longer run serves each shorter request (BaseAnswerCache); one it does not cover is decoded at
    its own step."""
    rows: dict[Tokens, DecodeRow] = {}
    for row in requests:
        known = rows.get(row.ids)
        rows[row.ids] = (
            row
            if known is None
            else DecodeRow(
                row.ids,
                max(known.max_tokens, row.max_tokens),
                known.stop_at_newline and row.stop_at_newline,
                tuple(dict.fromkeys(known.candidates + row.candidates)),
            )
        )
    return list(rows.values())
