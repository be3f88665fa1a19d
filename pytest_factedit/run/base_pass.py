"""Every case's base-model rows decoded before any edit, many cases per batched decode.

Probing one case at a time runs a greedy loop per case, as long as its longest row (the prompts run on to
the fluency length), over a batch padded to its longest prompt. Decoding the rows of many cases together
shares those greedy steps, pads rows of like length together and decodes a prompt several cases ask (a
shared control) once. A case's rows are its probe's and the base-model decodes its editor will ask for (the
subject rows' and the guard's continuations: `case.editor_base_rows`). The decodes go into the run's
cache of base decodes, where each case's probe and edit find them: a sequence before its first edit, an
isolated run of several cases before its first case.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..edit.router import settings_router_layers
from ..infra.events import PROBE_END, PROBE_PASS, PROBE_START, PROBED, emit
from ..model.decoding import DecodeRow, Tokens
from .case import editor_base_rows
from .probing import DEFAULT_PLAN, ProbePlan, base_requests

if TYPE_CHECKING:
    from ..cases.schema import FactCase
    from ..edit.settings import EditSettings
    from ..model.load import LoadedModel
    from ..model.probe_cache import BaseAnswerCache

CASES_PER_PASS = 32  # cases whose rows share one batched decode (memory stays bounded)


def probed_before_any_edit(
    lm: LoadedModel,
    cases: Sequence[FactCase],
    settings_for: Callable[[FactCase], EditSettings],
    base: BaseAnswerCache,
    plan: ProbePlan = DEFAULT_PLAN,
) -> float:
    """Every case's `probe_base` rows (under `plan`, as each case's probe asks them) decoded by the base model
    into `base`, CASES_PER_PASS cases per batched decode; a case whose settings or rows fail is left to its
    own probe (which reports it). Returns the seconds it took: no case's own timings hold them.

    The rows go longest budget first, then by prompt length: the prompts that run on to the fluency length
    share their greedy steps, the rows settled after a few tokens leave together, and little is padding.
    A display hears it as the base pass (PROBE_START, then PROBED after each batched decode, PROBE_END)."""
    started = time.perf_counter()
    emit(PROBE_START, PROBE_PASS)
    for start in range(0, len(cases), CASES_PER_PASS):
        requests: list[DecodeRow] = []
        layers: set[int] = set()
        for case in cases[start : start + CASES_PER_PASS]:
            try:
                settings = settings_for(case)
                requests += case_requests(lm, case, settings, plan)
                layers.update(settings_router_layers(lm.model, settings))
            except Exception:  # the case's own probe meets the same error and records it
                continue
        if requests:
            rows = sorted(merged_rows(requests), key=lambda r: (-r.max_tokens, len(r.ids)))
            base.decoded(lm, rows, sorted(layers))
        emit(PROBED, PROBE_PASS, min(start + CASES_PER_PASS, len(cases)), len(cases))
    emit(PROBE_END, PROBE_PASS)
    return time.perf_counter() - started


def case_requests(
    lm: LoadedModel, case: FactCase, settings: EditSettings, plan: ProbePlan = DEFAULT_PLAN
) -> list[DecodeRow]:
    """A case's rows of the pass: its base probe's, then the decodes of the base model its editor will ask for
    (they are read back when it edits; none when the case cannot be probed)."""
    probe = base_requests(lm, case, settings, plan)
    return probe + editor_base_rows(lm, case, settings) if probe else []


def merged_rows(requests: Sequence[DecodeRow]) -> list[DecodeRow]:
    """One row per prompt: cases that share a prompt (a control) ask it with their own candidates and stop
    rules, so it is decoded once with every candidate, to the longest budget and without a settle rule.
    A stored longer run serves each shorter request (BaseAnswerCache); one it does not cover is decoded at
    its own probe."""
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
