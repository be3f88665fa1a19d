"""Probing a case on the live model: the base model's answers, and the edited model's answers, scores and speed."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..metrics.answers import FACT_GROUPS, Group, ProbedAnswer, cut_answer
from ..metrics.measure import mean, ngram_entropy
from ..metrics.spec import thresholds_with
from ..model.probe import answer_logprobs, first_token_rank, greedy_continuations, pair_logprobs, seconds_per_token
from ..model.text import answer_token_budget
from .outcome import CaseOutcome

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..cases.schema import FactCase
    from ..edit.base import EditHandle
    from ..edit.settings import EditSettings
    from ..model.load import LoadedModel


@dataclass(frozen=True)
class ProbePlan:
    """How much probing a case gets beyond its answers: latency timing and the fluency generation."""

    latency_repeats: int = 3  # interleaved timings of the base and the edited model each; the minimum is kept
    latency_tokens: int = 6
    fluency_tokens: int = 16


DEFAULT_PLAN = ProbePlan()


class BaseAnswerCache:
    """Base-model greedy answers keyed by (prompt, budget, chat): shared controls are probed once per run."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, int, bool], str] = {}

    def get(self, lm: LoadedModel, prompts: Sequence[str], budgets: Sequence[int], chat: bool) -> list[str]:
        keys = [(p, b, chat) for p, b in zip(prompts, budgets)]
        missing = [k for k in dict.fromkeys(keys) if k not in self._answers]
        if missing:
            found = greedy_continuations(
                lm.model, lm.tokenizer, [k[0] for k in missing], [k[1] for k in missing], chat=chat
            )
            self._answers.update(zip(missing, found))
        return [self._answers[k] for k in keys]


@dataclass(frozen=True)
class ProbeRow:
    """One prompt to probe: its group, the answers expected, how many tokens to generate, and (a
    neighbour) whether its answer is the edited fact's old one."""

    group: Group
    prompt: str
    expected: tuple[str, ...]
    budget: int
    shares_old: bool = False


def shares_old(answer: Sequence[str], old: Sequence[str]) -> bool:
    """A neighbour whose answer is (an alias of) the edited fact's `old` answer."""
    return bool({a.strip().casefold() for a in answer} & {o.strip().casefold() for o in old})


def probe_rows(case: FactCase, tokenizer: PreTrainedTokenizerBase) -> list[ProbeRow]:
    """Every prompt of a case in group order: prompts, paraphrases (expecting `new`), neighbours, controls."""
    fact_budget = answer_token_budget(tokenizer, case.old + case.new)
    rows = [ProbeRow("prompts", p, case.new, fact_budget) for p in case.prompts]
    rows += [ProbeRow("paraphrases", p, case.new, fact_budget) for p in case.paraphrases]
    rows += [
        ProbeRow(
            "neighbours",
            n.prompt,
            n.answer,
            answer_token_budget(tokenizer, n.answer + case.new),
            shares_old(n.answer, case.old),
        )
        for n in case.neighbours
    ]
    rows += [ProbeRow("controls", c.prompt, c.answer, answer_token_budget(tokenizer, c.answer)) for c in case.controls]
    return rows


def probe_base(lm: LoadedModel, case: FactCase, settings: EditSettings, cache: BaseAnswerCache) -> CaseOutcome:
    """The base model's answers to every probe of `case`; status `skipped` when it does not give `old`."""
    outcome = CaseOutcome(case=case, status="ran", settings=settings, thresholds=thresholds_with(case.thresholds))
    rows = probe_rows(case, lm.tokenizer)
    started = time.perf_counter()
    base = cache.get(lm, [r.prompt for r in rows], [r.budget for r in rows], case.chat)
    outcome.timings["base_probe_seconds"] = time.perf_counter() - started
    outcome.answers = [
        ProbedAnswer(r.group, r.prompt, r.expected, b, shares_old=r.shares_old) for r, b in zip(rows, base)
    ]
    wrong = [(a.prompt, a.base) for a in outcome.group("prompts") if not outcome.evidence().base_said_old(a)]
    if wrong:
        outcome.status = "skipped"
        outcome.reason = (
            "the base model does not give the old answer "
            + repr(" / ".join(case.old))
            + ": "
            + "; ".join(f"{p!r} -> {cut_answer(b)!r}" for p, b in wrong)
        )
    return outcome


def candidate_logprobs(lm: LoadedModel, case: FactCase, answers: Sequence[ProbedAnswer]) -> list[dict[str, float]]:
    """Per answer, the mean log-probability per token of each candidate: `new` and `old` for prompts and
    paraphrases, their own answer (`expected`) and `new` for neighbours and controls."""
    wanted = []
    for a in answers:
        other = ("old", case.old[0]) if a.group in FACT_GROUPS else ("expected", a.expected[0])
        wanted.append((("new", case.new[0]), other))
    pairs = [(a.prompt, answer) for a, both in zip(answers, wanted) for _, answer in both]
    values = iter(pair_logprobs(lm.model, lm.tokenizer, pairs, case.chat))
    return [{name: next(values) for name, _ in both} for both in wanted]


def probe_edit(lm: LoadedModel, outcome: CaseOutcome, applied: EditHandle, plan: ProbePlan = DEFAULT_PLAN) -> None:
    """With the edit active: every probe's edited answer and candidate log-probabilities, the recorded
    scores, and the latency timings."""
    started = time.perf_counter()
    case = outcome.case
    rows = probe_rows(case, lm.tokenizer)
    edited = greedy_continuations(
        lm.model, lm.tokenizer, [r.prompt for r in rows], [r.budget for r in rows], chat=case.chat
    )
    logprobs = candidate_logprobs(lm, case, outcome.answers)
    outcome.answers = [
        dataclasses.replace(a, edited=e, logprobs=lp) for a, e, lp in zip(outcome.answers, edited, logprobs)
    ]
    outcome.scores = recorded_scores(lm, case, applied, plan)
    outcome.timings.update(latency_timings(lm, case, applied, plan))
    outcome.timings["probe_seconds"] = time.perf_counter() - started


def latency_timings(lm: LoadedModel, case: FactCase, applied: EditHandle, plan: ProbePlan) -> dict[str, float]:
    """Seconds per token of the base and the edited model, timed interleaved (base, edited, base, ...) on the
    same prompts, the minimum of each (the statistic another process's load cannot lower); and of the
    merged edit where the adapter can be merged."""
    prompts = list(case.prompts) + [c.prompt for c in case.controls]

    def timed() -> float:
        return seconds_per_token(lm.model, lm.tokenizer, prompts, plan.latency_tokens, case.chat)

    base, edited, merged = [], [], []
    for _ in range(plan.latency_repeats):
        with applied.disabled():
            base.append(timed())
        edited.append(timed())
    with applied.merged() as mergeable:
        if mergeable:
            merged = [timed() for _ in range(plan.latency_repeats)]
    out = {"base_seconds_per_token": min(base), "edited_seconds_per_token": min(edited)} if base else {}
    if merged and base:
        out["merged_seconds_per_token"] = min(merged)
    return out


def recorded_scores(
    lm: LoadedModel, case: FactCase, applied: EditHandle, plan: ProbePlan = DEFAULT_PLAN
) -> dict[str, float]:
    """Diagnostics recorded but not gated: the latent recall of `old` (its log-probability before and after
    the edit, its rank after) and fluency (the n-gram entropy of a free generation, before and after)."""
    tok, model = lm.tokenizer, lm.model
    prompts = list(case.prompts)
    out: dict[str, float] = {}
    out["old_answer_logprob_after"] = mean(answer_logprobs(model, tok, prompts, case.old[0], case.chat))
    out["old_answer_rank_after"] = mean(first_token_rank(model, tok, prompts, case.old[0], case.chat))
    after = greedy_continuations(model, tok, prompts, [plan.fluency_tokens] * len(prompts), chat=case.chat)
    with applied.disabled():
        out["old_answer_logprob_before"] = mean(answer_logprobs(model, tok, prompts, case.old[0], case.chat))
        before = greedy_continuations(model, tok, prompts, [plan.fluency_tokens] * len(prompts), chat=case.chat)
    out["fluency_ngram_entropy_before"] = mean([ngram_entropy(t) for t in before])
    out["fluency_ngram_entropy_after"] = mean([ngram_entropy(t) for t in after])
    return out
