"""Probing a case on the live model: the base model's answers, and the edited model's answers, scores and speed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..metrics.answers import Group, ProbedAnswer, cut_answer, matches
from ..metrics.measure import mean, ngram_entropy
from ..metrics.spec import thresholds_with
from ..model.probe import (
    answer_logprobs,
    first_token_rank,
    greedy_continuations,
    next_token_logprobs,
    seconds_per_token,
)
from ..model.text import answer_token_budget, first_token_id
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

    latency_repeats: int = 2  # timed generations of base and edited model each; the best is kept
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
    """One prompt to probe: its group, the answers expected, and how many tokens to generate."""

    group: Group
    prompt: str
    expected: tuple[str, ...]
    budget: int


def probe_rows(case: FactCase, tokenizer: PreTrainedTokenizerBase) -> list[ProbeRow]:
    """Every prompt of a case in group order: prompts, paraphrases (expecting `new`), then controls."""
    fact_budget = answer_token_budget(tokenizer, case.old + case.new)
    rows = [ProbeRow("prompts", p, case.new, fact_budget) for p in case.prompts]
    rows += [ProbeRow("paraphrases", p, case.new, fact_budget) for p in case.paraphrases]
    rows += [ProbeRow("controls", c.prompt, c.answer, answer_token_budget(tokenizer, c.answer)) for c in case.controls]
    return rows


def probe_base(lm: LoadedModel, case: FactCase, settings: EditSettings, cache: BaseAnswerCache) -> CaseOutcome:
    """The base model's answers to every probe of `case`; status `skipped` when it does not give `old`."""
    outcome = CaseOutcome(case=case, status="ran", settings=settings, thresholds=thresholds_with(case.thresholds))
    rows = probe_rows(case, lm.tokenizer)
    started = time.perf_counter()
    base = cache.get(lm, [r.prompt for r in rows], [r.budget for r in rows], case.chat)
    outcome.timings["base_probe_seconds"] = time.perf_counter() - started
    outcome.answers = [ProbedAnswer(r.group, r.prompt, r.expected, b) for r, b in zip(rows, base)]
    wrong = [(a.prompt, a.base) for a in outcome.group("prompts") if not matches(a.base, case.old)]
    if wrong:
        outcome.status = "skipped"
        outcome.reason = (
            "the base model does not give the old answer "
            + repr(" / ".join(case.old))
            + ": "
            + "; ".join(f"{p!r} -> {cut_answer(b)!r}" for p, b in wrong)
        )
    return outcome


def probe_edit(lm: LoadedModel, outcome: CaseOutcome, applied: EditHandle, plan: ProbePlan = DEFAULT_PLAN) -> None:
    """With the edit active: every probe's edited answer, the recorded scores and the latency timings."""
    started = time.perf_counter()
    case = outcome.case
    rows = probe_rows(case, lm.tokenizer)
    edited = greedy_continuations(
        lm.model, lm.tokenizer, [r.prompt for r in rows], [r.budget for r in rows], chat=case.chat
    )
    outcome.answers = [ProbedAnswer(a.group, a.prompt, a.expected, a.base, e) for a, e in zip(outcome.answers, edited)]
    right = [(a.prompt, a.expected) for a in outcome.group("controls") if matches(a.base, a.expected)]
    outcome.scores = recorded_scores(lm, case, applied, right, plan)
    latency_prompts = list(case.prompts) + [c.prompt for c in case.controls]
    base_spt, edited_spt = [], []
    for _ in range(plan.latency_repeats):
        with applied.disabled():
            base_spt.append(seconds_per_token(lm.model, lm.tokenizer, latency_prompts, plan.latency_tokens, case.chat))
        edited_spt.append(seconds_per_token(lm.model, lm.tokenizer, latency_prompts, plan.latency_tokens, case.chat))
    outcome.timings["base_seconds_per_token"] = min(base_spt)
    outcome.timings["edited_seconds_per_token"] = min(edited_spt)
    outcome.timings["probe_seconds"] = time.perf_counter() - started


def recorded_scores(
    lm: LoadedModel,
    case: FactCase,
    applied: EditHandle,
    controls_base_right: Sequence[tuple[str, tuple[str, ...]]],
    plan: ProbePlan = DEFAULT_PLAN,
) -> dict[str, float]:
    """Scores recorded but not gated: CounterFact-style probabilities, latent recall of `old`, fluency."""
    tok, model = lm.tokenizer, lm.model
    out: dict[str, float] = {}
    old_logprobs: dict[str, list[float]] = {}
    for name, texts in (("efficacy", list(case.prompts)), ("generalization", list(case.paraphrases))):
        if texts:
            new_lp = answer_logprobs(model, tok, texts, case.new[0], case.chat)
            old_logprobs[name] = answer_logprobs(model, tok, texts, case.old[0], case.chat)
            out[name] = sum(n > o for n, o in zip(new_lp, old_logprobs[name])) / len(texts)
    if controls_base_right:  # first-token probabilities: one batched pass over the controls
        logp = next_token_logprobs(model, tok, [p for p, _ in controls_base_right], case.chat)
        new_id = first_token_id(tok, case.new[0], case.chat)
        kept = [
            float(row[first_token_id(tok, answer[0], case.chat)]) > float(row[new_id])
            for row, (_, answer) in zip(logp, controls_base_right)
        ]
        out["specificity_first_token"] = sum(kept) / len(kept)
    prompts = list(case.prompts)
    out["old_answer_logprob_after"] = mean(old_logprobs["efficacy"])  # prompts are never empty
    out["old_answer_rank_after"] = mean(first_token_rank(model, tok, prompts, case.old[0], case.chat))
    after = greedy_continuations(model, tok, prompts, [plan.fluency_tokens] * len(prompts), chat=case.chat)
    with applied.disabled():
        out["old_answer_logprob_before"] = mean(answer_logprobs(model, tok, prompts, case.old[0], case.chat))
        before = greedy_continuations(model, tok, prompts, [plan.fluency_tokens] * len(prompts), chat=case.chat)
    out["fluency_ngram_entropy_before"] = mean([ngram_entropy(t) for t in before])
    out["fluency_ngram_entropy_after"] = mean([ngram_entropy(t) for t in after])
    return out
