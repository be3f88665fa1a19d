"""Many edits on one model: one after another (`sequential`) or as one adapter trained on all (`batch`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cases.ids import sequence_folder
from ..edit import get_editor
from ..edit.base import kept_edits_released
from ..edit.settings import EditSettings
from ..errors import RestoreError, explained
from ..metrics.answers import ProbedAnswer
from ..metrics.measure import EditCheck, ManyEvidence, MetricValue, retained_by_case
from ..metrics.spec import MANY_METRICS
from ..model.probe import greedy_continuations
from ..model.targets import merged_targets
from ..model.text import answer_token_budget
from ..model.weights import restored_weights, verified_restore
from .case import edit_request, edited, held_out_texts, measure, place_edit, save_adapters
from .outcome import CaseOutcome
from .probing import BaseAnswerCache, probe_base, probe_edit

if TYPE_CHECKING:
    from ..cases.schema import FactCase
    from ..model.load import LoadedModel
    from ..model.text import Chat
    from .planned import PlannedCase

SettingsFor = Callable[["FactCase"], EditSettings]


@dataclass
class ManyOutcome:
    """Many edits on one model, and what was left of each once all of them were in place."""

    outcomes: list[CaseOutcome]
    metrics: dict[str, MetricValue]  # MANY_METRICS, measured with every edit in place
    retained_by_case: dict[str, float]
    base_restored: bool | None
    seconds: float
    batch: dict[str, Any] = field(default_factory=dict)  # batch mode: the one adapter's facts
    # per edited case: its prompts' answers with every edit in place (what a saved sequence must give back)
    answers_at_end: dict[str, list[str]] = field(default_factory=dict)


def _measured(
    outcomes: list[CaseOutcome],
    evidence: ManyEvidence,
    base_restored: bool | None,
    started: float,
    batch: dict[str, Any] | None = None,
) -> ManyOutcome:
    return ManyOutcome(
        outcomes,
        {spec.name: spec.measure(evidence) for spec in MANY_METRICS},
        retained_by_case(evidence),
        base_restored,
        time.perf_counter() - started,
        batch or {},
        {check.case_id: list(check.answers_now) for check in evidence.edits},
    )


class _ControlCheck:
    """Every control of the cases, answered by the base model now and again whenever asked.

    With `cache` (batch mode), the base answers come from the cache the cases are probed with, so
    shared controls are generated once.
    """

    def __init__(self, lm: LoadedModel, cases: Sequence[FactCase], cache: BaseAnswerCache | None = None) -> None:
        self.lm = lm
        self.answers = {c.prompt: c.answer for case in cases for c in case.controls}
        self.chat = {c.prompt: case.chat_format for case in cases for c in case.controls}
        self.budgets = [answer_token_budget(lm.tokenizer, a, self.chat[p]) for p, a in self.answers.items()]
        base = (
            self._answered(lambda prompts, budgets, chat: cache.answers(lm, prompts, budgets, chat))
            if cache
            else self.current()
        )
        self.base = dict(zip(self.answers, base))

    def current(self) -> list[str]:
        return self._answered(
            lambda prompts, budgets, chat: greedy_continuations(
                self.lm.model, self.lm.tokenizer, prompts, budgets, chat=chat
            )
        )

    def _answered(self, answer: Callable[[list[str], list[int], Chat], list[str]]) -> list[str]:
        prompts = list(self.answers)
        out: dict[int, str] = {}
        for flag in dict.fromkeys(self.chat.values()):  # plain text, and each chat format (system prompt)
            picked = [i for i, p in enumerate(prompts) if self.chat[p] == flag]
            if picked:
                out.update(zip(picked, answer([prompts[i] for i in picked], [self.budgets[i] for i in picked], flag)))
        return [out[i] for i in range(len(prompts))]

    def answers_now(self, now: Sequence[str]) -> tuple[ProbedAnswer, ...]:
        """Every control with its base answer and `now`'s answer (what `controls_retained` counts)."""
        return tuple(
            ProbedAnswer("controls", p, self.answers[p], self.base[p], after) for p, after in zip(self.answers, now)
        )


def _prompts_answered_now(lm: LoadedModel, outcome: CaseOutcome) -> EditCheck:
    """A case's prompts answered by the model as it is now (after the last sequential edit)."""
    case = outcome.case
    budget = answer_token_budget(lm.tokenizer, case.old + case.new, case.chat_format)
    now = greedy_continuations(
        lm.model, lm.tokenizer, list(case.prompts), [budget] * len(case.prompts), chat=case.chat_format
    )
    return EditCheck(case.id, case.new, case.old, case.prompts, tuple(now))


def _prompts_as_probed(outcome: CaseOutcome) -> EditCheck:
    """The edited answers `probe_edit` already recorded (batch: the adapter has not changed since)."""
    case = outcome.case
    return EditCheck(case.id, case.new, case.old, case.prompts, tuple(a.edited or "" for a in outcome.group("prompts")))


def _error(case: FactCase, settings: EditSettings | None, exc: BaseException | str) -> CaseOutcome:
    reason = exc if isinstance(exc, str) else explained(exc)
    return CaseOutcome(case=case, status="error", settings=settings or EditSettings(), reason=reason)


def _edit_and_merge(
    lm: LoadedModel, case: FactCase, settings: EditSettings, save_dir: Path | None = None
) -> CaseOutcome:
    """One sequential step: probe, place, edit and measure `case` on the model the earlier edits left, then
    merge; with `save_dir`, the edit is saved there before it is merged."""
    outcome = probe_base(lm, case, settings, BaseAnswerCache())
    if outcome.status == "ran":
        place_edit(lm, outcome, get_editor(settings.name).scope)
        with edited(lm, outcome, save_dir) as applied:
            probe_edit(lm, outcome, applied)
            applied.merge()
        measure(outcome)
    return outcome


def run_sequence(
    lm: LoadedModel, cases: Sequence[FactCase], settings_for: SettingsFor, save_dir: Path | None = None
) -> ManyOutcome:
    """Edit every case in order on one model, each merged before the next (`--factedit-mode sequential`).

    Each case is measured right after its own edit, against the model as the earlier edits left it.
    At the end every earlier edit and every control is checked again, then all weights are put back.
    With `save_dir`, each edit is saved before it is merged, to save_dir/<sequence_folder>/.
    """
    started = time.perf_counter()
    outcomes: list[CaseOutcome] = []
    with (
        verified_restore(lm.model) as check,
        restored_weights(list(lm.model.parameters())),
        kept_edits_released(lm.model),
    ):
        controls = _ControlCheck(lm, cases)
        for position, case in enumerate(cases):
            settings = None
            try:
                settings = settings_for(case)
                folder = save_dir / sequence_folder(position, case.id) if save_dir is not None else None
                outcomes.append(_edit_and_merge(lm, case, settings, folder))
            except Exception as exc:  # one broken case must not stop the others; its edit was not merged
                outcomes.append(_error(case, settings, exc))
        edits = tuple(_prompts_answered_now(lm, o) for o in outcomes if o.status == "ran")
        evidence = ManyEvidence(edits, controls.answers_now(controls.current()))
    return _measured(outcomes, evidence, check.restored, started)


def _place_batch(
    lm: LoadedModel, cases: Sequence[FactCase], settings_for: SettingsFor, cache: BaseAnswerCache
) -> tuple[list[CaseOutcome], list[CaseOutcome], EditSettings | None]:
    """Probe and localize every case for the batch: (all outcomes, the ones the batch edits, its settings)."""
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
                    outcome = _error(
                        case,
                        case_settings,
                        f"batch mode trains one adapter with one method: this case "
                        f"asks for {case_settings.name!r}, the batch uses {settings.name!r}",
                    )
                else:
                    place_edit(lm, outcome, get_editor(settings.name).scope)
                    live.append(outcome)
            outcomes.append(outcome)
        except Exception as exc:  # one broken case must not stop the others
            outcomes.append(_error(case, case_settings, exc))
    return outcomes, live, settings


def run_batch(
    lm: LoadedModel, cases: Sequence[FactCase], settings_for: SettingsFor, save_dir: Path | None = None
) -> ManyOutcome:
    """Train one adapter on every case at once (`--factedit-mode batch`), measure each case with it, remove it.

    The batch trains with the settings of its first case that runs; each case is localized with its own
    settings and the adapter covers the union of the chosen modules. A case asking for another method
    is an error record; one the base model does not know is skipped. No case's paraphrases or controls,
    and no other case's prompts, are ever used as retention rows.
    """
    started = time.perf_counter()
    with verified_restore(lm.model) as check:
        cache = BaseAnswerCache()
        controls = _ControlCheck(lm, cases, cache)
        outcomes, live, settings = _place_batch(lm, cases, settings_for, cache)
        batch: dict[str, Any] = {"cases": [o.case.id for o in live]}
        evidence = ManyEvidence((), ())  # n/a until the batch edit is made
        if live and settings is not None:
            try:
                evidence = _edit_together(lm, live, settings, controls, batch, save_dir)
            except Exception as exc:  # the one shared edit failed: every case in it is an error, the rest stand
                failed = {id(o) for o in live}
                outcomes = [_error(o.case, o.settings, exc) if id(o) in failed else o for o in outcomes]
                batch["error"] = f"{type(exc).__name__}: {exc}"
    result = _measured(outcomes, evidence, check.restored, started, batch)
    if not evidence.edits:  # nothing was measured: the protocol says why
        result.metrics = {
            name: dataclasses.replace(v, protocol="no batch edit was made") for name, v in result.metrics.items()
        }
    return result


def run_planned(
    lm: LoadedModel, planned: Sequence[PlannedCase], mode: str, save_dir: Path | None = None
) -> ManyOutcome:
    """`--factedit-mode sequential|batch` over the collected cases, each edited with the settings its
    collection resolved (`save_dir`: where batch mode saves its adapter, or sequential mode each edit)."""
    cases = [p.case for p in planned]
    settings = {p.case.id: p.settings for p in planned}
    if mode == "batch":
        return run_batch(lm, cases, lambda case: settings[case.id], save_dir)
    return run_sequence(lm, cases, lambda case: settings[case.id], save_dir)


def _edit_together(
    lm: LoadedModel,
    live: list[CaseOutcome],
    settings: EditSettings,
    controls: _ControlCheck,
    batch: dict[str, Any],
    save_dir: Path | None,
) -> ManyEvidence:
    """Train the batch adapter, probe every case with it, then remove it and check the base is back."""
    targets = merged_targets([o.targets for o in live if o.targets is not None])
    texts = {id(o): o.case.prompts + held_out_texts(o.case) for o in live}
    requests = [edit_request(o.case, [t for other in live if other is not o for t in texts[id(other)]]) for o in live]
    train_started = time.perf_counter()
    with (
        verified_restore(lm.model, targets.touched) as check,
        get_editor(settings.name).apply(lm.model, lm.tokenizer, requests, targets, settings) as applied,
    ):
        train_seconds = time.perf_counter() - train_started
        batch.update(
            train_seconds=round(train_seconds, 3),
            target_modules=list(targets.modules),
            feedforward_modules=list(targets.feedforward),
            stages=[s.as_record() for s in applied.stages],
            trainable_parameters=applied.trainable_parameters,
        )
        if save_dir is not None:
            batch["adapters"] = save_adapters(applied, save_dir)
        for outcome in live:
            outcome.targets, outcome.stages = targets, batch["stages"]
            outcome.trainable_parameters = applied.trainable_parameters
            # this case's own localization plus its share of the one training run
            outcome.timings["edit_seconds"] = outcome.timings["localize_seconds"] + train_seconds / len(live)
            outcome.timings["batch_train_seconds"] = train_seconds
            probe_edit(lm, outcome, applied)
        evidence = ManyEvidence(tuple(_prompts_as_probed(o) for o in live), controls.answers_now(controls.current()))
    for outcome in live:
        outcome.base_restored = check.restored
        measure(outcome)
    if not check.restored:
        raise RestoreError("batch mode: the weights of the edited modules changed after removing the batch adapter")
    return evidence
