"""Many edits on one model: one after another (`sequential`) or as one adapter trained on all (`batch`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cases.ids import sequence_folder
from ..edit import get_editor
from ..edit.base import EditHandle, kept_edits_released
from ..edit.gate_memory import kept_edit_bytes
from ..edit.gate_registry import REGISTRY_ATTRIBUTE, GateRegistry, router_states_served
from ..edit.settings import EditSettings
from ..errors import RestoreError, explained
from ..metrics.answers import Group, ProbedAnswer
from ..metrics.measure import EditCheck, ManyEvidence, MetricValue, retained_by_case
from ..metrics.spec import MANY_METRICS
from ..model.decoding import MAX_BATCH_ROWS, DecodeRow, decode, prefill, token_batches
from ..model.probe import continuation_rows, continuation_texts
from ..model.probe_cache import base_decodes_served
from ..model.targets import TargetModules, merged_targets
from ..model.text import answer_token_budget, encode_prompt
from ..model.weights import restored_weights, verified_restore, weights_checksum
from .base_pass import probed_before_any_edit
from .case import edit_request, edited, held_out_texts, measure, place_edit, save_adapters
from .other_subjects import without_other_subjects
from .outcome import CaseOutcome
from .probing import (
    DEFAULT_PLAN,
    BaseAnswerCache,
    ProbePlan,
    ProbeRow,
    base_answer,
    held_requests,
    latency_timings,
    probe_base,
    probe_edit,
)
from .sequence_base import KeptEditReach, KeptEditsCache

if TYPE_CHECKING:
    from ..cases.schema import FactCase
    from ..model.load import LoadedModel
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
    memory: dict[str, int] = field(default_factory=dict)  # sequential: bytes the kept edits hold (edit/gate_memory.py)
    # held rows not counted at the end, per group: they name a subject another edited case rewrote
    set_aside: dict[str, int] = field(default_factory=dict)
    base_pass_seconds: float | None = None  # sequential: the base pass before the first edit (None: none ran)


def _measured(
    outcomes: list[CaseOutcome],
    evidence: ManyEvidence,
    base_restored: bool | None,
    started: float,
    batch: dict[str, Any] | None = None,
) -> ManyOutcome:
    edited_ids = {check.case_id for check in evidence.edits}
    checks, set_aside = without_other_subjects(evidence.edits, [o.case for o in outcomes if o.case.id in edited_ids])
    evidence = dataclasses.replace(evidence, edits=checks)
    return ManyOutcome(
        outcomes,
        {spec.name: spec.measure(evidence) for spec in MANY_METRICS},
        retained_by_case(evidence),
        base_restored,
        time.perf_counter() - started,
        batch or {},
        {check.case_id: list(check.answers_now) for check in evidence.edits},
        set_aside=set_aside,
    )


# each case's rows checked again after the last edit
END_GROUPS: tuple[Group, ...] = ("paraphrases", "neighbours", "same_subject")


def _answered_together(
    lm: LoadedModel, parts: Sequence[Sequence[DecodeRow]], cache: BaseAnswerCache | None = None
) -> list[list[str]]:
    """The greedy continuation of every row of every part, decoded in one batched run (chat formats mixed),
    split back into the parts; with `cache`, through it (the base model's decodes where it serves them)."""
    rows = [row for part in parts for row in part]
    texts = []
    if rows:
        decoded = cache.decoded(lm, rows) if cache is not None else decode(lm.model, lm.tokenizer, rows)
        texts = continuation_texts(lm.model, lm.tokenizer, decoded)
    out, start = [], 0
    for part in parts:
        out.append(texts[start : start + len(part)])
        start += len(part)
    return out


class _ControlCheck:
    """Every control of the cases, answered by the base model now and again whenever asked.

    With `cache` (batch mode), the base answers come from the cache the cases are probed with, so
    shared controls are generated once; without it, the caller decodes `rows()` (with other rows) and
    hands the answers to `answered_before`.
    """

    def __init__(self, lm: LoadedModel, cases: Sequence[FactCase], cache: BaseAnswerCache | None = None) -> None:
        self.lm = lm
        self.answers = {c.prompt: c.answer for case in cases for c in case.controls}
        self.chat = {c.prompt: case.chat_format for case in cases for c in case.controls}
        self.budgets = [answer_token_budget(lm.tokenizer, a, self.chat[p]) for p, a in self.answers.items()]
        self.base: dict[str, str] = {}
        if cache is not None:
            self.answered_before(self._from_cache(cache))

    def rows(self) -> list[DecodeRow]:
        """Each control decoded as `greedy_continuations` decodes it (in its own chat format)."""
        tokenizer = self.lm.tokenizer
        return [continuation_rows(tokenizer, [p], [b], self.chat[p])[0] for p, b in zip(self.answers, self.budgets)]

    def answered_before(self, base: Sequence[str]) -> None:
        self.base = dict(zip(self.answers, base))

    def current(self) -> list[str]:
        return _answered_together(self.lm, [self.rows()])[0]

    def _from_cache(self, cache: BaseAnswerCache) -> list[str]:
        prompts = list(self.answers)
        out: dict[int, str] = {}
        for flag in dict.fromkeys(self.chat.values()):  # plain text, and each chat format (system prompt)
            picked = [i for i, p in enumerate(prompts) if self.chat[p] == flag]
            if picked:
                answers = cache.answers(self.lm, [prompts[i] for i in picked], [self.budgets[i] for i in picked], flag)
                out.update(zip(picked, answers))
        return [out[i] for i in range(len(prompts))]

    def answers_now(self, now: Sequence[str]) -> tuple[ProbedAnswer, ...]:
        """Every control with its base answer and `now`'s answer (what `controls_retained` counts)."""
        return tuple(
            ProbedAnswer("controls", p, self.answers[p], self.base[p], after) for p, after in zip(self.answers, now)
        )


class _HeldRows:
    """Each case's paraphrases, neighbours and same-subject facts (END_GROUPS), answered by the base model
    before the first edit, to be answered again after the last. Each is decoded as the base probe decodes
    it (`held_requests`: its answer ends once settled), so the base pass's decode serves it."""

    def __init__(self, lm: LoadedModel, cases: Sequence[FactCase]) -> None:
        self.requests_by_case = {c.id: held_requests(lm, c, END_GROUPS) for c in cases}
        self.base: dict[str, list[ProbedAnswer]] = {}

    def rows(self, case_ids: Sequence[str]) -> list[list[DecodeRow]]:
        return [[request for _, request in self.requests_by_case[i]] for i in case_ids]

    def answered_before(self, case_ids: Sequence[str], base: Sequence[Sequence[str]]) -> None:
        for case_id, texts in zip(case_ids, base):
            rows: list[ProbeRow] = [row for row, _ in self.requests_by_case[case_id]]
            self.base[case_id] = [base_answer(r, text) for r, text in zip(rows, texts)]

    def answered_now(self, case_id: str, now: Sequence[str]) -> tuple[ProbedAnswer, ...]:
        return tuple(dataclasses.replace(a, edited=after) for a, after in zip(self.base[case_id], now))


def _answered_before_any_edit(
    lm: LoadedModel, cases: Sequence[FactCase], base: BaseAnswerCache
) -> tuple[_ControlCheck, _HeldRows]:
    """Every control and every case's END_GROUPS rows, answered by the base model in one batched run (through
    `base`, the run's cache of its decodes: the base pass's, or an earlier run's, serve)."""
    controls, held = _ControlCheck(lm, cases), _HeldRows(lm, cases)
    ids = [c.id for c in cases]
    answered = _answered_together(lm, [controls.rows(), *held.rows(ids)], base)
    controls.answered_before(answered[0])
    held.answered_before(ids, answered[1:])
    return controls, held


def _prompt_rows(lm: LoadedModel, case: FactCase) -> list[DecodeRow]:
    budget = answer_token_budget(lm.tokenizer, case.old + case.new, case.chat_format)
    return continuation_rows(lm.tokenizer, case.prompts, [budget] * len(case.prompts), case.chat_format)


def _answered_at_end(
    lm: LoadedModel, ran: Sequence[CaseOutcome], controls: _ControlCheck, held: _HeldRows, cache: KeptEditsCache
) -> ManyEvidence:
    """After the last sequential edit: every edited case's prompts and END_GROUPS rows and every control,
    answered in one batched run (`cache` serves the rows no kept edit reaches, as at a step), and the latency
    with every gated edit active."""
    ids = [o.case.id for o in ran]
    prompts = [_prompt_rows(lm, o.case) for o in ran]
    answered = _answered_together(lm, [controls.rows(), *prompts, *held.rows(ids)], cache)
    prompts_now, held_now = answered[1 : 1 + len(ran)], answered[1 + len(ran) :]
    edits = tuple(
        EditCheck(o.case.id, o.case.new, o.case.old, o.case.prompts, tuple(now), held.answered_now(o.case.id, rows))
        for o, now, rows in zip(ran, prompts_now, held_now)
    )
    registry = lm.model.__dict__.get(REGISTRY_ATTRIBUTE)
    timings, timed = _latency_with_every_edit(lm, ran, _every_gated_edit(registry)) if registry else ({}, 0)
    return ManyEvidence(edits, controls.answers_now(answered[0]), timings, timed)


@dataclass(kw_only=True)
class _EveryGatedEdit(EditHandle):
    """The edits kept behind the model's shared gate, as one handle to time: `disabled()` turns all of them
    off (edits merged into the weights stay on: they are part of the base timed against)."""

    registry: GateRegistry

    @contextmanager
    def disabled(self) -> Iterator[None]:
        with self.registry.disabled():
            yield


def _every_gated_edit(registry: GateRegistry) -> EditHandle:
    return _EveryGatedEdit(
        method="every kept edit",
        targets=TargetModules((), (), "the shared gate"),
        settings=EditSettings(),
        registry=registry,
    )


def _latency_with_every_edit(
    lm: LoadedModel, ran: Sequence[CaseOutcome], every: EditHandle
) -> tuple[dict[str, float], int]:
    """(base and edited seconds per token, rows timed): one greedy step over the edited cases' prompts, as
    many as one bounded pass holds, with `every` edit on against `every.disabled()`, timed as a case's is."""
    ids = [encode_prompt(lm.tokenizer, p, o.case.chat_format) for o in ran for p in o.case.prompts]
    if not ids:
        return {}, 0
    first = token_batches([(len(i), 1) for i in ids], MAX_BATCH_ROWS)[0]
    state = prefill(lm.model, ids[: first.stop], lm.tokenizer.pad_token_id)
    return latency_timings(lm, ran[0].case, every, DEFAULT_PLAN, state), first.stop


def _prompts_as_probed(outcome: CaseOutcome) -> EditCheck:
    """The edited answers `probe_edit` already recorded (batch: the adapter has not changed since)."""
    case = outcome.case
    now = tuple(a.edited or "" for a in outcome.group("prompts"))
    held = tuple(a for a in outcome.answers if a.group in END_GROUPS)
    return EditCheck(case.id, case.new, case.old, case.prompts, now, held)


def _error(case: FactCase, settings: EditSettings | None, exc: BaseException | str) -> CaseOutcome:
    reason = exc if isinstance(exc, str) else explained(exc)
    return CaseOutcome(case=case, status="error", settings=settings or EditSettings(), reason=reason)


def _edit_and_merge(
    lm: LoadedModel,
    case: FactCase,
    settings: EditSettings,
    base: KeptEditsCache,
    save_dir: Path | None = None,
    plan: ProbePlan = DEFAULT_PLAN,
) -> CaseOutcome:
    """One sequential step: probe, place, edit and measure `case` on the model the earlier edits left, then
    merge (`base` serves the probe, the trace and the editor what the base model computed, where no kept
    edit reaches); with `save_dir`, the edit is saved there before it is merged."""
    outcome = probe_base(lm, case, settings, base, plan)
    if outcome.status == "ran":
        place_edit(lm, outcome, get_editor(settings.name).scope, base)
        with edited(lm, outcome, save_dir, base) as applied:
            probe_edit(lm, outcome, applied, plan)
            applied.merge()
            base.reach.kept(applied)
        measure(outcome)
    return outcome


def _resumed(cases: Sequence[FactCase], resume: Callable[[], Sequence[CaseOutcome]]) -> list[CaseOutcome]:
    """What `resume()` put back, checked to be the outcomes of the first cases, in order."""
    done = list(resume())
    if len(done) > len(cases):
        raise ValueError(f"resume() gave back {len(done)} outcomes for a sequence of {len(cases)} cases")
    for position, (outcome, case) in enumerate(zip(done, cases)):
        if outcome.case.id != case.id:
            raise ValueError(f"resume() gave back case {outcome.case.id!r} at position {position}, not {case.id!r}")
    return done


def _resumed_on_base(
    lm: LoadedModel,
    cases: Sequence[FactCase],
    settings_for: SettingsFor,
    base: BaseAnswerCache,
    resume: Callable[[], Sequence[CaseOutcome]] | None,
    plan: ProbePlan = DEFAULT_PLAN,
) -> tuple[list[CaseOutcome], KeptEditsCache, float | None]:
    """The outcomes `resume` put back (none without it), what each step probes with: the base model's
    decodes of every case still to edit, made now with the kept gated edits off (the base model), and the
    seconds that pass took (None: no step could use it, so it did not run)."""
    step_base = KeptEditsCache(base, KeptEditReach(lm.model))
    done: list[CaseOutcome] = []
    seconds = None
    if resume is not None:
        loaded = weights_checksum(lm.model)
        done = _resumed(cases, resume)
        step_base.reach.everywhere = weights_checksum(lm.model) != loaded  # an edit put back into the weights
    if not step_base.reach.everywhere:  # else no step could take a base decode
        registry = lm.model.__dict__.get(REGISTRY_ATTRIBUTE)
        with registry.disabled() if registry is not None else nullcontext():
            seconds = probed_before_any_edit(lm, cases[len(done) :], settings_for, step_base.base, plan)
    return done, step_base, seconds


def run_sequence(
    lm: LoadedModel,
    cases: Sequence[FactCase],
    settings_for: SettingsFor,
    save_dir: Path | None = None,
    each_done: Callable[[int, CaseOutcome], None] | None = None,
    resume: Callable[[], Sequence[CaseOutcome]] | None = None,
    base: BaseAnswerCache | None = None,
    plan: ProbePlan = DEFAULT_PLAN,
) -> ManyOutcome:
    """Edit every case in order on one model, each merged before the next (`--factedit-mode sequential`).

    Each case is measured right after its own edit, against the model as the earlier edits left it. Its
    rows are decoded by the base model before the first edit, with every other case's (into `base`, which
    may already hold them from an earlier run), and a step decodes again only the rows its kept edits can
    reach (run/sequence_base.py).
    At the end every edit's prompts, paraphrases, neighbours and same-subject facts and every control are
    answered again in one batched run (their base answers were, before the first edit, served by the base
    pass; a row no kept edit reaches takes its base decode, as at a step), the latency with
    every gated edit on and off is timed and the bytes the kept edits hold are counted; then all weights
    are put back. With `save_dir`, each edit is saved before it is merged, to save_dir/<sequence_folder>/.
    `each_done(position, outcome)` hears of each case as soon as it is measured (a long run's progress).
    `resume()`, called once the base answers are in, goes on with an interrupted run: it puts back the kept
    edits of the first cases and returns their outcomes, in the order of `cases`; the sequence goes on
    from the next one. `plan` is how much each case's probes time and generate (its latency steps, its
    fluency tokens); the end's latency with every edit on is timed with the default plan.
    """
    started = time.perf_counter()
    outcomes: list[CaseOutcome] = []
    with (
        verified_restore(lm.model) as check,
        restored_weights(list(lm.model.parameters())),
        kept_edits_released(lm.model),
    ):
        base = base if base is not None else BaseAnswerCache()
        # before resume() puts edits back; else after the base pass, whose decodes then serve them
        answered_first = _answered_before_any_edit(lm, cases, base) if resume is not None else None
        done, step_base, pass_seconds = _resumed_on_base(lm, cases, settings_for, base, resume, plan)
        controls, held = answered_first or _answered_before_any_edit(lm, cases, base)
        outcomes += done
        for position, case in enumerate(cases[len(outcomes) :], start=len(outcomes)):
            settings = None
            try:
                settings = settings_for(case)
                folder = save_dir / sequence_folder(position, case.id) if save_dir is not None else None
                outcomes.append(_edit_and_merge(lm, case, settings, step_base, folder, plan))
            except Exception as exc:  # one broken case must not stop the others; its edit was not merged
                outcomes.append(_error(case, settings, exc))
            if each_done is not None:
                each_done(position, outcomes[-1])
        with router_states_served(lm.model, step_base.states(lm)):
            evidence = _answered_at_end(lm, [o for o in outcomes if o.status == "ran"], controls, held, step_base)
        memory = kept_edit_bytes(lm.model)
    result = _measured(outcomes, evidence, check.restored, started)
    result.memory = memory
    result.base_pass_seconds = pass_seconds
    return result


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
                    place_edit(lm, outcome, get_editor(settings.name).scope, cache)
                    live.append(outcome)
            outcomes.append(outcome)
        except Exception as exc:  # one broken case must not stop the others
            outcomes.append(_error(case, case_settings, exc))
    return outcomes, live, settings


def run_batch(
    lm: LoadedModel,
    cases: Sequence[FactCase],
    settings_for: SettingsFor,
    save_dir: Path | None = None,
    base: BaseAnswerCache | None = None,
) -> ManyOutcome:
    """Train one adapter on every case at once (`--factedit-mode batch`), measure each case with it, remove it.

    The batch trains with the settings of its first case that runs; each case is localized with its own
    settings and the adapter covers the union of the chosen modules. A case asking for another method
    is an error record; one the base model does not know is skipped. No case's paraphrases or controls,
    and no other case's prompts, are ever used as retention rows. Everything is probed, traced and decoded
    for the editor on the base model before the adapter exists: `base` (the run's cache) serves and keeps it.
    """
    started = time.perf_counter()
    with verified_restore(lm.model) as check:
        cache = base if base is not None else BaseAnswerCache()
        controls = _ControlCheck(lm, cases, cache)
        outcomes, live, settings = _place_batch(lm, cases, settings_for, cache)
        batch: dict[str, Any] = {"cases": [o.case.id for o in live]}
        evidence = ManyEvidence((), ())  # n/a until the batch edit is made
        if live and settings is not None:
            try:
                evidence = _edit_together(lm, live, settings, controls, batch, save_dir, cache)
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
    lm: LoadedModel,
    planned: Sequence[PlannedCase],
    mode: str,
    save_dir: Path | None = None,
    base: BaseAnswerCache | None = None,
) -> ManyOutcome:
    """`--factedit-mode sequential|batch` over the collected cases, each edited with the settings its
    collection resolved (`save_dir`: where batch mode saves its adapter, or sequential mode each edit;
    `base`: the run's cache of what the base model computed, which both modes read and fill)."""
    cases = [p.case for p in planned]
    settings = {p.case.id: p.settings for p in planned}
    if mode == "batch":
        return run_batch(lm, cases, lambda case: settings[case.id], save_dir, base)
    return run_sequence(lm, cases, lambda case: settings[case.id], save_dir, base=base)


def _edit_together(
    lm: LoadedModel,
    live: list[CaseOutcome],
    settings: EditSettings,
    controls: _ControlCheck,
    batch: dict[str, Any],
    save_dir: Path | None,
    base: BaseAnswerCache,
) -> ManyEvidence:
    """Train the batch adapter (the editor's decodes of the base model served by `base`), probe every case with
    it, then remove it and check the base is back."""
    targets = merged_targets([o.targets for o in live if o.targets is not None])
    texts = {id(o): o.case.prompts + held_out_texts(o.case) for o in live}
    requests = [edit_request(o.case, [t for other in live if other is not o for t in texts[id(other)]]) for o in live]
    train_started = time.perf_counter()
    with verified_restore(lm.model, targets.touched) as check, ExitStack() as stack:
        with base_decodes_served(base, lm):
            editor = get_editor(settings.name)
            applied = stack.enter_context(editor.apply(lm.model, lm.tokenizer, requests, targets, settings))
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
        timings, timed = _latency_with_every_edit(lm, live, applied)
        checks = tuple(_prompts_as_probed(o) for o in live)
        evidence = ManyEvidence(checks, controls.answers_now(controls.current()), timings, timed)
    for outcome in live:
        outcome.base_restored = check.restored
        measure(outcome)
    if not check.restored:
        raise RestoreError("batch mode: the weights of the edited modules changed after removing the batch adapter")
    return evidence
