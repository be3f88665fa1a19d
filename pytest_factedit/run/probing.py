"""Probing a case on the live model: the base model's answers, and the edited model's answers, scores and speed.

Every prompt of a case is decoded in one batched pass (model/decoding.py). The prompts run on to the
fluency length; every other row stops once its answer is decided (`settled`), at a line break, or at
its token budget. The base model's pass is cached (model/probe_cache.py); the edited model's pass also
gives the candidates' log-probabilities and the old answer's rank, for the rows the edit can reach (the
others take the base decode: `edited_decodes`). Latency is a few timed single greedy steps over the
prompts, base and edited interleaved (the LM head timed once, on the last edited step, where the edit leaves it
as it is).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cases.derived import case_alias_prompts, context_facts
from ..edit.router import settings_router_layers
from ..infra.events import PROBE_BASE, PROBE_EDITED, PROBE_END, PROBE_START, emit
from ..metrics.answers import FACT_GROUPS, Group, ProbedAnswer, cut_answer, first_words, settled
from ..metrics.measure import mean, ngram_entropy
from ..metrics.spec import thresholds_with
from ..model.decoding import (
    MAX_BATCH_ROWS,
    Decoded,
    DecodeRow,
    Prefilled,
    Tokens,
    context_positions,
    decode_keeping,
    prefill,
    row_shape,
    timed_step,
    token_batches,
)
from ..model.probe_cache import BaseAnswerCache
from ..model.text import answer_text, answer_token_budget, answer_token_ids, decoding_sets, encode_prompt
from .outcome import CaseOutcome

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..cases.schema import Control, FactCase
    from ..edit.base import EditHandle
    from ..edit.settings import EditSettings
    from ..model.load import LoadedModel

__all__ = ["DEFAULT_PLAN", "BaseAnswerCache", "ProbePlan", "base_requests", "probe_base", "probe_edit", "row_reached"]


@dataclass(frozen=True)
class ProbePlan:
    """How much probing a case gets beyond its answers: latency timing and the fluency generation."""

    latency_repeats: int = 3  # interleaved timed steps of the base and the edited model each; the minimum is kept
    fluency_tokens: int = 16  # 0: the prompts stop at their answer, and no fluency score is recorded


DEFAULT_PLAN = ProbePlan()


@dataclass(frozen=True)
class ProbeRow:
    """One prompt to probe: its group, the answers expected, how many tokens its answer is judged on, and
    (a neighbour) whether its answer is the edited fact's old one."""

    group: Group
    prompt: str
    expected: tuple[str, ...]
    budget: int
    shares_old: bool = False
    unchanged: bool = False  # a same-subject fact without `answer:`: `expected` becomes the base's first words


def shares_old(answer: Sequence[str], old: Sequence[str]) -> bool:
    """A neighbour whose answer is (an alias of) the edited fact's `old` answer."""
    return bool({a.strip().casefold() for a in answer} & {o.strip().casefold() for o in old})


UNCHANGED_BUDGET = 8  # tokens decoded for a same-subject fact without `answer:` (its first words are kept)


def _held_rows(
    group: Group, facts: Sequence[Control], case: FactCase, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]
) -> list[ProbeRow]:
    """Rows of facts judged against their own answer and `new` (`prompts`: the text each is asked as)."""
    return [
        ProbeRow(
            group,
            prompt,
            fact.answer,
            answer_token_budget(tokenizer, fact.answer + case.new, case.chat_format)
            if fact.answer
            else UNCHANGED_BUDGET,
            group == "neighbours" and shares_old(fact.answer, case.old),
            unchanged=not fact.answer,
        )
        for prompt, fact in zip(prompts, facts)
    ]


def probe_rows(case: FactCase, tokenizer: PreTrainedTokenizerBase) -> list[ProbeRow]:
    """Every prompt of a case in group order: prompts, paraphrases and alias prompts (expecting `new`), then
    neighbours, controls, same-subject facts, the neighbours and controls behind a sentence naming the
    subject, and implications (each expecting its own answer)."""
    fact_budget = answer_token_budget(tokenizer, case.old + case.new, case.chat_format)
    rows = [ProbeRow("prompts", p, case.new, fact_budget) for p in case.prompts]
    rows += [ProbeRow("paraphrases", p, case.new, fact_budget) for p in case.paraphrases]
    rows += [ProbeRow("aliases", p, case.new, fact_budget) for p in case_alias_prompts(case)]
    held: tuple[tuple[Group, Sequence[Control]], ...] = (
        ("neighbours", case.neighbours),
        ("controls", case.controls),
        ("same_subject", case.same_subject),
        ("implications", case.implications),
    )
    for group, facts in held:
        rows += _held_rows(group, facts, case, tokenizer, [f.prompt for f in facts])
    context = context_facts(case)
    rows += _held_rows("context", [f for _, f in context], case, tokenizer, [p for p, _ in context])
    return rows


@dataclass(frozen=True)
class _Decoding:
    """How the rows of one case are decoded: the tokenizer's view of them, and the fluency length."""

    case: FactCase
    tokenizer: PreTrainedTokenizerBase
    stops: frozenset[int]
    hidden: frozenset[int]
    fluency_tokens: int

    def text(self, tokens: Sequence[int]) -> str:
        return answer_text(self.tokenizer, tokens, self.stops, self.hidden)

    def ids(self, answer: str) -> Tokens:
        return tuple(answer_token_ids(self.tokenizer, answer, self.case.chat_format))

    def candidates(self, row: ProbeRow) -> dict[str, Tokens]:
        """The answers whose log-probability is recorded: `new` and `old` for prompts, paraphrases and alias
        prompts, `new` and their own (`expected`) for the others (`new` only when a fact has no answer)."""
        found = {"new": self.ids(self.case.new[0])}
        if row.group in FACT_GROUPS:
            found["old"] = self.ids(self.case.old[0])
        elif row.expected and row.expected[0] and not row.unchanged:
            found["expected"] = self.ids(row.expected[0])
        return found

    def settle_rule(self, row: ProbeRow) -> Callable[[Tokens], bool] | None:
        """Stop once the answer so far decides which of the aliases it is judged against comes first (a fact
        kept as the base model words it runs to its budget)."""
        if row.unchanged:
            return None
        case = self.case
        aliases = case.new + case.old if row.group in FACT_GROUPS else row.expected + case.new
        return lambda tokens: settled(self.text(tokens), aliases)

    def request(self, row: ProbeRow, candidates: tuple[Tokens, ...]) -> DecodeRow:
        ids = encode_prompt(self.tokenizer, row.prompt, self.case.chat_format)
        if row.group == "prompts":  # run on to the fluency length, never cut: the free generation is scored
            return DecodeRow(ids, max(row.budget, self.fluency_tokens), False, candidates)
        return DecodeRow(ids, row.budget, True, candidates, self.settle_rule(row))

    def answer(self, row: ProbeRow, decoded: Decoded) -> str:
        return self.text(decoded.tokens[: row.budget])

    def fluency(self, decoded: Decoded) -> float:
        return ngram_entropy(self.text(decoded.tokens[: self.fluency_tokens]))


def _decoding(lm: LoadedModel, case: FactCase, plan: ProbePlan) -> _Decoding:
    stops, hidden = decoding_sets(lm.model, lm.tokenizer)
    return _Decoding(case, lm.tokenizer, stops, hidden, plan.fluency_tokens)


def base_answer(row: ProbeRow, base: str) -> ProbedAnswer:
    """The base model's answer to `row`; a fact kept as the base words it expects those first words."""
    expected = (first_words(base),) if row.unchanged else row.expected
    return ProbedAnswer(row.group, row.prompt, expected, base, shares_old=row.shares_old, unchanged=row.unchanged)


def base_candidates(how: _Decoding, row: ProbeRow, old: Tokens, routed: bool = False) -> tuple[Tokens, ...]:
    """The candidates the base probe scores: `old` for a prompt (the forget score's before); and, for a row
    that does not name the subject or an alias, every candidate the edited probe scores, since a gated edit
    will likely not reach it and the edited probe then takes the base decode whole (`edited_decodes`). With
    `routed` (the edit will have a relation router), so for a row that names them but asks another question
    than the fact's (not a prompt, paraphrase or alias prompt): the router will likely send it away."""
    if row.group == "prompts":
        return (old,)
    names = [n.casefold() for n in (how.case.subject, *how.case.aliases)]
    if any(n in row.prompt.casefold() for n in names) and not (routed and row.group not in FACT_GROUPS):
        return ()
    return tuple(how.candidates(row).values())


def too_long(lm: LoadedModel, case: FactCase, settings: EditSettings, requests: Sequence[DecodeRow]) -> str:
    """Why `case` cannot run on this model: its longest row (the longest prompt, behind the longest training
    context prefix, before the longest answer, in tokens) needs more positions than the model has; '' when
    it fits, or when the model's config names no context length."""
    positions = context_positions(lm.model)
    if positions is None:
        return ""
    prompt = max(len(r.ids) for r in requests)
    prefixes = () if case.chat else settings.trained_prefixes  # chat prompts are trained without one
    prefix = max((len(lm.tokenizer(p, add_special_tokens=False).input_ids) for p in prefixes), default=0)
    after = settings.tokens_after_answer
    answers = [len(answer_token_ids(lm.tokenizer, a, case.chat_format)) + after for a in case.new]
    answer = max([row_shape(r)[1] for r in requests] + answers)
    if prompt + prefix + answer <= positions:
        return ""
    return (
        f"the case's longest row needs {prompt + prefix + answer:,} tokens (prompt {prompt:,} + context prefix "
        f"{prefix:,} + answer {answer:,}), more than the {positions:,} positions of the model: shorten its prompts"
    )


def _base_requests(
    lm: LoadedModel, case: FactCase, settings: EditSettings, plan: ProbePlan
) -> tuple[list[ProbeRow], _Decoding, list[DecodeRow]]:
    rows = probe_rows(case, lm.tokenizer)
    how = _decoding(lm, case, plan)
    old = how.ids(case.old[0])
    routed = bool(settings_router_layers(lm.model, settings))
    return rows, how, [how.request(r, base_candidates(how, r, old, routed)) for r in rows]


def base_requests(
    lm: LoadedModel, case: FactCase, settings: EditSettings, plan: ProbePlan = DEFAULT_PLAN
) -> list[DecodeRow]:
    """What `probe_base` asks the base model to decode for `case` (none when a row is too long for the model):
    a sequence decodes every case's rows together before its first edit (run/sequence_base.py)."""
    requests = _base_requests(lm, case, settings, plan)[2]
    return [] if too_long(lm, case, settings, requests) else requests


def held_requests(lm: LoadedModel, case: FactCase, groups: Sequence[Group]) -> list[tuple[ProbeRow, DecodeRow]]:
    """`case`'s rows of `groups`, each with the decode the base probe asks of it less its candidates: the same
    stop rules (an answer ends once settled, as it is judged), so the base probe's decode serves the row."""
    how = _decoding(lm, case, DEFAULT_PLAN)
    return [(r, how.request(r, ())) for r in probe_rows(case, lm.tokenizer) if r.group in groups]


def probe_base(
    lm: LoadedModel,
    case: FactCase,
    settings: EditSettings,
    cache: BaseAnswerCache,
    plan: ProbePlan = DEFAULT_PLAN,
    also: Sequence[DecodeRow] = (),
) -> CaseOutcome:
    """The base model's answers to every probe of `case`; status `skipped` when it does not give `old`, or
    when a row of it is longer than the model's context (then nothing reaches the model). `also`: more rows
    for `cache`, decoded in the same batch (the decodes the case's editor will ask of the base model)."""
    outcome = CaseOutcome(case=case, status="ran", settings=settings, thresholds=thresholds_with(case.thresholds))
    rows, how, requests = _base_requests(lm, case, settings, plan)
    old = how.ids(case.old[0])
    outcome.reason = too_long(lm, case, settings, requests)
    if outcome.reason:
        outcome.status = "skipped"
        return outcome
    emit(PROBE_START, PROBE_BASE)
    started = time.perf_counter()
    layers = settings_router_layers(lm.model, settings)  # the prompts' states there serve the edit's router
    base = outcome.base_decoded = cache.decoded(lm, [*requests, *also], layers)[: len(requests)]
    outcome.timings["base_probe_seconds"] = time.perf_counter() - started
    outcome.answers = [base_answer(r, how.answer(r, d)) for r, d in zip(rows, base)]
    prompts = [d for r, d in zip(rows, base) if r.group == "prompts"]
    outcome.base_scores = {"old_answer_logprob_before": mean([d.scores[old].logprob for d in prompts])}
    if plan.fluency_tokens:
        outcome.base_scores["fluency_ngram_entropy_before"] = mean([how.fluency(d) for d in prompts])
    emit(PROBE_END, PROBE_BASE)
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


def probe_edit(lm: LoadedModel, outcome: CaseOutcome, applied: EditHandle, plan: ProbePlan = DEFAULT_PLAN) -> None:
    """With the edit active: every probe's edited answer and candidate log-probabilities (mean per token),
    the recorded scores, and the latency timings."""
    emit(PROBE_START, PROBE_EDITED)
    started = time.perf_counter()
    case = outcome.case
    rows = [
        dataclasses.replace(r, expected=a.expected) for r, a in zip(probe_rows(case, lm.tokenizer), outcome.answers)
    ]
    how = _decoding(lm, case, plan)
    wanted = [how.candidates(r) for r in rows]
    requests = [how.request(r, tuple(w.values())) for r, w in zip(rows, wanted)]
    edited, state = edited_decodes(lm, outcome.base_decoded, applied, requests, [r.group == "prompts" for r in rows])
    outcome.base_decoded = []  # handed over: a long sequential run keeps every outcome, not its decodes
    outcome.answers = [
        dataclasses.replace(a, edited=how.answer(r, d), logprobs={k: d.scores[c].mean for k, c in w.items()})
        for a, r, d, w in zip(outcome.answers, rows, edited, wanted)
    ]
    old = how.ids(case.old[0])
    prompts = [d for r, d in zip(rows, edited) if r.group == "prompts"]
    outcome.scores = {
        "old_answer_logprob_after": mean([d.scores[old].logprob for d in prompts]),
        "old_answer_rank_after": mean([float(d.scores[old].first_rank) for d in prompts]),
        **outcome.base_scores,
    }
    if plan.fluency_tokens:
        outcome.scores["fluency_ngram_entropy_after"] = mean([how.fluency(d) for d in prompts])
    outcome.timings.update(latency_timings(lm, case, applied, plan, state))
    outcome.timings["probe_seconds"] = time.perf_counter() - started
    emit(PROBE_END, PROBE_EDITED)


def row_reached(reaches_row: Callable[[Tokens, Sequence[Tokens]], bool], row: DecodeRow, tokens: Tokens) -> bool:
    """Can an edit change `row`'s decode (`tokens`) or the score of one of its candidates? `reaches_row` is
    asked of the prompt and those continuations (`EditHandle.reaches_row`)."""
    return reaches_row(row.ids, (tokens, *row.candidates))


def edited_decodes(
    lm: LoadedModel,
    base: Sequence[Decoded],
    applied: EditHandle,
    requests: Sequence[DecodeRow],
    prompts: Sequence[bool],
) -> tuple[list[Decoded], Prefilled | None]:
    """Every row decoded with the edit on, and the prompts' prefilled state for the latency steps (None
    unless every prompt was decoded). A row the edit cannot reach (`row_reached` by `EditHandle.reaches_row`)
    is answered by the edited model as by the base model: it takes its base decode (`base`, the same rows)
    where that scored every candidate; the others are decoded again."""
    if len(base) != len(requests):  # no base decode of these rows: every one is decoded
        return decode_keeping(lm.model, lm.tokenizer, requests, [i for i, prompt in enumerate(prompts) if prompt])
    reached = [
        i
        for i, r in enumerate(requests)
        if row_reached(applied.reaches_row, r, base[i].tokens) or any(c not in base[i].scores for c in r.candidates)
    ]
    again_at = set(reached)
    every_prompt = all(i in again_at for i, prompt in enumerate(prompts) if prompt)
    keep = [k for k, i in enumerate(reached) if prompts[i]] if every_prompt else []
    again, state = decode_keeping(lm.model, lm.tokenizer, [requests[i] for i in reached], keep)
    decoded = list(base)
    for i, found in zip(reached, again):
        decoded[i] = found
    return decoded, state


def head_may_change(model: PreTrainedModel, applied: EditHandle) -> bool:
    """May the edit change the LM head module (every weight, or the head among its targets, which match by
    name suffix as peft's do)? Then its head is timed on the base steps too."""
    touched = applied.targets.touched
    if touched is None:
        return True
    head = model.get_output_embeddings()
    names = [name for name, module in model.named_modules() if module is head]
    return any(name == t or name.endswith("." + t) for name in names for t in touched)


def latency_timings(
    lm: LoadedModel, case: FactCase, applied: EditHandle, plan: ProbePlan, state: Prefilled | None = None
) -> dict[str, float]:
    """Seconds per token of one greedy step over the case's prompts (`state`: their prompts run already),
    timed with the base and the edited model interleaved (base, edited, base, ...), the minimum of each: the
    statistic another process's load cannot lower; and of the merged edit where the adapter can be merged.
    An edit that leaves the LM head as it is leaves its cost as it is: the head is then timed once, on the
    last edited step, and added to each side's minimum decoder pass. That time is in both sides' figures, so
    the noise it carries barely moves their ratio, and without bf16 units the head is most of a step."""
    if plan.latency_repeats <= 0:
        return {}
    if state is None:  # as many prompts as one bounded pass holds
        ids = [encode_prompt(lm.tokenizer, p, case.chat_format) for p in case.prompts]
        first = token_batches([(len(i), 1) for i in ids], MAX_BATCH_ROWS)[0]
        state = prefill(lm.model, ids[: first.stop], lm.tokenizer.pad_token_id)
    apart = not head_may_change(lm.model, applied)
    base, edited, merged = [], [], []
    last = plan.latency_repeats - 1
    for repeat in range(plan.latency_repeats):
        with applied.disabled():
            base.append(timed_step(lm.model, state, head=not apart).total)
        step = timed_step(lm.model, state, head=not apart or repeat == last)
        edited.append(step.decoder if apart else step.total)
    head = step.head if apart else 0.0  # the last edited step's
    with applied.merged() as mergeable:
        if mergeable:
            merged = [timed_step(lm.model, state, head=not apart).total for _ in range(plan.latency_repeats)]
    rows = len(state.lengths)
    out = {"base_seconds_per_token": (min(base) + head) / rows, "edited_seconds_per_token": (min(edited) + head) / rows}
    if merged:
        out["merged_seconds_per_token"] = (min(merged) + head) / rows
    return out
