"""Many edits on one model: one after another (`sequential`) or as one adapter trained on all (`batch`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import metrics as m
from .cases import FactCase
from .edit import get_editor
from .edit.settings import EditSettings
from .models import LoadedModel, weights_fingerprint
from .probe import answer_token_budget, greedy_continuations
from .runner import (BaseAnswerCache, CaseOutcome, choose_targets, edit_request, held_out_texts, measure,
                     probe_base, probe_edit, run_case, save_adapters)
from .targets import TargetModules

SettingsFor = Callable[[FactCase], EditSettings]


@dataclass
class ManyOutcome:
    """Many edits on one model, and what was left of each once all of them were in place."""

    outcomes: list[CaseOutcome]
    edits_retained: m.MetricValue  # (case, prompt) pairs answering `new` with every edit in place
    controls_retained: m.MetricValue  # controls right before any edit and still right with all of them
    retained_by_case: dict[str, float]
    base_restored: bool
    seconds: float
    batch: dict[str, Any] = field(default_factory=dict)  # batch mode: the one adapter's facts


class _ControlCheck:
    """Every control of the cases, answered by the base model now and again whenever asked.

    With `cache` (batch mode), the base answers come from the cache the cases are probed with, so
    shared controls are generated once.
    """

    def __init__(self, lm: LoadedModel, cases: Sequence[FactCase], cache: BaseAnswerCache | None = None) -> None:
        self.lm = lm
        self.answers = {c.prompt: c.answer for case in cases for c in case.controls}
        self.chat = {c.prompt: case.chat for case in cases for c in case.controls}
        self.budgets = [answer_token_budget(lm.tokenizer, a) for a in self.answers.values()]
        base = self._answered(lambda prompts, budgets, chat: cache.get(lm, prompts, budgets, chat)) if cache \
            else self.current()
        self.base = dict(zip(self.answers, base))

    def current(self) -> list[str]:
        return self._answered(lambda prompts, budgets, chat: greedy_continuations(
            self.lm.model, self.lm.tokenizer, prompts, budgets, chat=chat))

    def _answered(self, answer: Callable[[list[str], list[int], bool], list[str]]) -> list[str]:
        prompts = list(self.answers)
        out: dict[int, str] = {}
        for flag in (False, True):
            picked = [i for i, p in enumerate(prompts) if self.chat[p] == flag]
            if picked:
                out.update(zip(picked, answer([prompts[i] for i in picked], [self.budgets[i] for i in picked], flag)))
        return [out[i] for i in range(len(prompts))]

    def retained(self, now: Sequence[str]) -> m.MetricValue:
        right = [p for p in self.answers if m.matches(self.base[p], self.answers[p])]
        after = dict(zip(self.answers, now))
        still = sum(m.matches(after[p], self.answers[p]) for p in right)
        return m.MetricValue("controls_retained", still / len(right) if right else None, len(right),
                             "controls right before any edit, still right with every edit in place")


def _edits_retained(ran: Sequence[CaseOutcome], answers_now: Callable[[CaseOutcome], list[str]]
                    ) -> tuple[m.MetricValue, dict[str, float]]:
    """Each edited case's prompts as answered with every edit in place (`answers_now` gives them)."""
    by_case: dict[str, float] = {}
    kept = total = 0
    for outcome in ran:
        hits = sum(m.matches(a, outcome.case.new) for a in answers_now(outcome))
        by_case[outcome.case.id] = hits / len(outcome.case.prompts)
        kept, total = kept + hits, total + len(outcome.case.prompts)
    value = m.MetricValue("edits_retained", kept / total if total else None, total,
                          "prompts of every edited case answering new, with every edit in place")
    return value, by_case


def _prompts_answered_now(lm: LoadedModel) -> Callable[[CaseOutcome], list[str]]:
    """Answers to a case's prompts from the model as it is now (after the last sequential edit)."""
    def answers(outcome: CaseOutcome) -> list[str]:
        prompts = list(outcome.case.prompts)
        budget = answer_token_budget(lm.tokenizer, outcome.case.old + outcome.case.new)
        return greedy_continuations(lm.model, lm.tokenizer, prompts, [budget] * len(prompts), chat=outcome.case.chat)
    return answers


def _prompts_as_probed(outcome: CaseOutcome) -> list[str]:
    """The edited answers `probe_edit` already recorded (batch: the adapter has not changed since)."""
    return [a.edited or "" for a in outcome.group("prompts")]


def _error(case: FactCase, settings: EditSettings | None, exc: BaseException | str) -> CaseOutcome:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return CaseOutcome(case=case, status="error", settings=settings or EditSettings(), reason=reason)


def run_sequence(lm: LoadedModel, cases: Sequence[FactCase], settings_for: SettingsFor) -> ManyOutcome:
    """Edit every case in order on one model, each merged before the next (`--factedit-mode sequential`).

    Each case is measured right after its own edit, against the model as the earlier edits left it.
    At the end every earlier edit and every control is checked again, then all weights are put back.
    """
    import torch

    started = time.perf_counter()
    params = list(lm.model.parameters())
    originals = [p.detach().clone() for p in params]
    before = weights_fingerprint(lm.model)
    controls = _ControlCheck(lm, cases)
    outcomes: list[CaseOutcome] = []
    try:
        for case in cases:
            settings = None
            try:
                settings = settings_for(case)
                outcomes.append(run_case(lm, case, settings, BaseAnswerCache(), keep=True))
            except Exception as exc:  # one broken case must not stop the others; its edit was not merged
                outcomes.append(_error(case, settings, exc))
        edits, by_case = _edits_retained([o for o in outcomes if o.status == "ran"], _prompts_answered_now(lm))
        kept_controls = controls.retained(controls.current())
    finally:
        with torch.no_grad():
            for param, original in zip(params, originals):
                param.copy_(original)
    return ManyOutcome(outcomes, edits, kept_controls, by_case, weights_fingerprint(lm.model) == before,
                       time.perf_counter() - started)


def merged_targets(targets: Sequence[TargetModules]) -> TargetModules:
    """One set of modules covering every case's targets (the batch adapter's `target_modules`)."""
    modules = tuple(dict.fromkeys(name for t in targets for name in t.modules))
    feedforward = tuple(dict.fromkeys(name for t in targets for name in t.feedforward))
    layers = tuple(sorted({layer for t in targets for layer in t.layers}))
    rules = list(dict.fromkeys(t.rule for t in targets))
    rule = rules[0] if len(rules) == 1 else f"union over {len(targets)} cases of: " + "; ".join(rules)
    return TargetModules(modules, feedforward, rule, layers, all_weights=any(t.all_weights for t in targets))


def run_batch(lm: LoadedModel, cases: Sequence[FactCase], settings_for: SettingsFor,
              save_dir: Path | None = None) -> ManyOutcome:
    """Train one adapter on every case at once (`--factedit-mode batch`), measure each case with it, remove it.

    The batch trains with the settings of its first case that runs; each case is localized with its own
    settings and the adapter covers the union of the chosen modules. A case asking for another method
    is an error record; one the base model does not know is skipped. No case's paraphrases or controls,
    and no other case's prompts, are ever used as retention rows.
    """
    started = time.perf_counter()
    before = weights_fingerprint(lm.model)
    cache = BaseAnswerCache()
    controls = _ControlCheck(lm, cases, cache)
    outcomes: list[CaseOutcome] = []
    live: list[CaseOutcome] = []
    settings: EditSettings | None = None
    for case in cases:
        case_settings = None
        try:
            case_settings = settings_for(case)
            outcome = probe_base(lm, case, case_settings, cache)
            if outcome.status == "ran":
                settings = settings or case_settings
                if case_settings.name != settings.name:
                    outcome = _error(case, case_settings, f"batch mode trains one adapter with one method: this case "
                                     f"asks for {case_settings.name!r}, the batch uses {settings.name!r}")
                else:
                    localize_started = time.perf_counter()
                    outcome.targets, outcome.localization = choose_targets(
                        lm, case, case_settings, get_editor(settings.name).scope)
                    outcome.timings["localize_seconds"] = time.perf_counter() - localize_started
                    live.append(outcome)
            outcomes.append(outcome)
        except Exception as exc:  # one broken case must not stop the others
            outcomes.append(_error(case, case_settings, exc))
    batch: dict[str, Any] = {"cases": [o.case.id for o in live]}
    edits, by_case = _edits_retained([], _prompts_as_probed)  # n/a until the batch edit is made
    kept_controls = m.MetricValue("controls_retained", None, 0, "no batch edit was made")
    if live and settings is not None:
        try:
            edits, by_case, controls_now = _edit_together(lm, live, settings, controls, batch, save_dir)
            kept_controls = controls.retained(controls_now)
        except Exception as exc:  # the one shared edit failed: every case in it is an error, the rest stand
            failed = {id(o) for o in live}
            outcomes = [_error(o.case, o.settings, exc) if id(o) in failed else o for o in outcomes]
            batch["error"] = f"{type(exc).__name__}: {exc}"
    return ManyOutcome(outcomes, edits, kept_controls, by_case, weights_fingerprint(lm.model) == before,
                       time.perf_counter() - started, batch)


def _edit_together(lm: LoadedModel, live: list[CaseOutcome], settings: EditSettings, controls: _ControlCheck,
                   batch: dict[str, Any], save_dir: Path | None) -> tuple[m.MetricValue, dict[str, float], list[str]]:
    """Train the batch adapter, probe every case with it, then remove it and check the base is back."""
    targets = merged_targets([o.targets for o in live])
    texts = {id(o): o.case.prompts + held_out_texts(o.case) for o in live}
    requests = [edit_request(o.case, [t for other in live if other is not o for t in texts[id(other)]]) for o in live]
    touched = None if targets.all_weights else targets.modules
    touched_before = weights_fingerprint(lm.model, touched)
    train_started = time.perf_counter()
    applied = get_editor(settings.name).apply(lm.model, lm.tokenizer, requests, targets, settings)
    try:
        train_seconds = time.perf_counter() - train_started
        batch.update(train_seconds=round(train_seconds, 3), target_modules=list(targets.modules),
                     feedforward_modules=list(targets.feedforward),
                     stages=[s.as_record() for s in applied.stages], trainable_parameters=applied.trainable_parameters)
        if save_dir is not None:
            batch["adapters"] = save_adapters(applied, save_dir)
        for outcome in live:
            outcome.targets = targets
            outcome.stages = batch["stages"]
            outcome.trainable_parameters = applied.trainable_parameters
            # this case's own localization plus its share of the one training run
            outcome.timings["edit_seconds"] = outcome.timings["localize_seconds"] + train_seconds / len(live)
            outcome.timings["batch_train_seconds"] = train_seconds
            probe_started = time.perf_counter()
            probe_edit(lm, outcome, applied)
            outcome.timings["probe_seconds"] = time.perf_counter() - probe_started
        edits, by_case = _edits_retained(live, _prompts_as_probed)
        controls_now = controls.current()
    finally:
        applied.remove()
        restored = weights_fingerprint(lm.model, touched) == touched_before
    for outcome in live:
        outcome.base_restored = restored
        measure(outcome)
    if not restored:
        raise RuntimeError("batch mode: the weights of the edited modules changed after removing the batch adapter")
    return edits, by_case, controls_now
