"""The one optimization loop every editor uses: same stopping rule, step cap, retention term and timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..infra.events import STAGE_END, STEP, emit
from .base import StageReport
from .batching import Row, kl_to_reference, tail_logprobs
from .objectives import Objectives
from .second_order import SecondOrderReference
from .settings import TrainingLoopSettings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def train_stage(
    stage: str,
    model: PreTrainedModel,
    params: Sequence[torch.Tensor],
    goals: Objectives,
    settings: TrainingLoopSettings,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> StageReport:
    """Adam on `params` until the stage's goal reports it is reached or its step cap is hit.

    Each step runs the decoder once over the stage's training rows and a rotating window of retention
    rows (`kl_rows_per_step`), whose KL to the base model is added with `kl_weight` (0 turns retention
    off); a picked row the edit cannot reach (no reference: `Objectives.kl_reference`) counts in the mean
    with its KL of 0 and is not run. A batch of facts (`goals.fact_sizes`: each fact's rows, in order) trains
    `batch_facts_per_step` facts per step, rotating through them; the cap is then the stage's step cap
    per fact's turn, and the goal is reached once every fact reached it on its last turn.

    `penalty`, when given, is added to every step's loss (the preservation term).

    Each optimizer step is told as a STEP event (steps taken of the cap), the stage's end as STAGE_END.
    """
    import torch

    rows, goal, max_steps = goals.stage(stage, settings)
    check_head_fixed(model, params, goals)
    sizes, per_step, weight = goals.fact_sizes, settings.batch_facts_per_step, settings.kl_weight
    rotate = len(sizes) > 1 and 0 < per_step < len(sizes)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    cap = max_steps * (-(-len(sizes) // per_step) if rotate else 1)
    reached = [False] * len(sizes)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    started = time.perf_counter()
    losses: list[float] = []
    done = False
    steps = 0
    for steps in range(cap + 1):
        facts = rotating_subset(len(sizes), per_step, steps) if rotate else None
        step_rows = [rows[i] for f in facts for i in range(starts[f], starts[f] + sizes[f])] if facts else rows
        picked = kl_picked(goals, settings.kl_rows_per_step, steps) if weight else []
        passed = [i for i in picked if goals.kl_reference[i] is not None]  # the others' KL stays 0
        logps = step_outputs(model, goals, step_rows, passed)
        loss, done = goal(logps[: len(step_rows)], facts)
        if facts:
            for fact in facts:
                reached[fact] = done
            done = all(reached)
        if done or steps == cap:
            losses.append(float(loss.detach()))
            break
        if passed:
            loss = loss + weight * retention_kl(goals, passed, logps[len(step_rows) :], len(picked))
        if penalty is not None:
            loss = loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        emit(STEP, stage, steps + 1, cap)
    emit(STAGE_END, stage, steps, cap)
    return StageReport(stage, steps, time.perf_counter() - started, done, losses)


def step_outputs(
    model: PreTrainedModel, goals: Objectives, step_rows: Sequence[Row], passed: Sequence[int]
) -> list[torch.Tensor]:
    """One step's pass: the goal's rows' log-probabilities, then each passed retention row's, or its final
    hidden states where its reference is the second-order form (no LM head for it)."""
    run = [*step_rows, *(goals.kl_rows[i] for i in passed)]
    heads = [True] * len(step_rows) + [not isinstance(goals.reference(i), SecondOrderReference) for i in passed]
    return tail_logprobs(model, run, goals.pad_id, goals.frozen, goals.prefixes, heads)


def retention_kl(
    goals: Objectives, passed: Sequence[int], outputs: Sequence[torch.Tensor], picked: int
) -> torch.Tensor:
    """The mean KL to the base model over the `picked` rows of a step, of which only those `passed` (run)
    can differ from it: the others add 0. `outputs`: each passed row's log-probabilities, or its final
    hidden states where its reference is the second-order form."""
    import torch

    kls = []
    for i, out in zip(passed, outputs):
        reference = goals.reference(i)
        if isinstance(reference, SecondOrderReference):
            kls.append(reference.kl(out))
        else:
            kls.append(kl_to_reference(reference, out))
    return torch.stack(kls).sum() / picked


def check_head_fixed(model: PreTrainedModel, params: Sequence[torch.Tensor], goals: Objectives) -> None:
    """A second-order reference reads the head's weight as it was: a stage that trains the head cannot use it."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or not any(p is weight for p in params):
        return
    if any(isinstance(r, SecondOrderReference) for r in goals.kl_reference):
        raise ValueError("kl_form: second-order holds retention rows through a fixed LM head, and this stage trains it")


def kl_picked(goals: Objectives, per_step: int, step: int) -> list[int]:
    """The KL rows of a step: the pinned ones (about the subject) and a rotating window of the others."""
    rest = rotating_subset(len(goals.kl_rows) - goals.pinned, per_step, step)
    return list(range(goals.pinned)) + [goals.pinned + i for i in rest]


def rotating_subset(total: int, per_step: int, step: int) -> list[int]:
    """Indices of the rows used at `step`: all of them, or a window that rotates through them."""
    if per_step <= 0 or per_step >= total:
        return list(range(total))
    return [(step * per_step + j) % total for j in range(per_step)]
