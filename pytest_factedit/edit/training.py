"""The one optimization loop every editor uses: same stopping rule, step cap, retention term and timing."""

from __future__ import annotations

import time
from typing import Any, Sequence

from .base import StageReport
from .batching import Row, kl_to_reference, tail_logprobs
from .objectives import Goal
from .settings import EditSettings


def train_stage(name: str, model: Any, params: Sequence[Any], rows: list[Row], goal: Goal, max_steps: int,
                kl_rows: list[Row], kl_reference: list[Any], settings: EditSettings, pad_id: int,
                kl_weight: float | None = None, fact_sizes: Sequence[int] = ()) -> StageReport:
    """Adam on `params` until `goal` reports it is reached or the step cap is hit.

    Each step runs the decoder once over the training rows and a rotating window of retention rows
    (`kl_rows_per_step`), whose KL to the base model is added with `kl_weight` (settings.kl_weight
    unless given; 0 turns retention off). A batch of facts (`fact_sizes`: each fact's rows, in order)
    trains `batch_facts_per_step` facts per step, rotating through them; the cap is then `max_steps`
    per fact's turn, and the goal is reached once every fact reached it on its last turn.
    """
    import torch

    weight = settings.kl_weight if kl_weight is None else kl_weight
    per_step = settings.batch_facts_per_step
    rotate = len(fact_sizes) > 1 and 0 < per_step < len(fact_sizes)
    starts = [sum(fact_sizes[:i]) for i in range(len(fact_sizes))]
    cap = max_steps * (-(-len(fact_sizes) // per_step) if rotate else 1)
    reached = [False] * len(fact_sizes)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    started = time.perf_counter()
    losses: list[float] = []
    done = False
    steps = 0
    for steps in range(cap + 1):
        facts = rotating_subset(len(fact_sizes), per_step, steps) if rotate else None
        step_rows = [rows[i] for f in facts for i in range(starts[f], starts[f] + fact_sizes[f])] if facts else rows
        picked = rotating_subset(len(kl_rows), settings.kl_rows_per_step, steps) if weight else []
        logps = tail_logprobs(model, step_rows + [kl_rows[i] for i in picked], pad_id)
        loss, done = goal(logps[:len(step_rows)], facts)
        if facts:
            for fact in facts:
                reached[fact] = done
            done = all(reached)
        if done or steps == cap:
            losses.append(float(loss.detach()))
            break
        if picked:
            kl = torch.stack([kl_to_reference(kl_reference[i], lp) for i, lp in zip(picked, logps[len(step_rows):])])
            loss = loss + weight * kl.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return StageReport(name, steps, time.perf_counter() - started, done, losses)


def rotating_subset(total: int, per_step: int, step: int) -> list[int]:
    """Indices of the retention rows used at `step`: all of them, or a window that rotates through them."""
    if per_step <= 0 or per_step >= total:
        return list(range(total))
    return [(step * per_step + j) % total for j in range(per_step)]
