"""The isolated-case protocol: probe the base, choose where the edit goes, edit, probe, undo, verify, measure."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cases.derived import derived_held_out
from ..edit import get_editor, planned_base_decodes
from ..edit.base import EditHandle, EditRequest, Scope
from ..edit.gate_registry import router_states_served, unrouted
from ..errors import RestoreError
from ..infra.events import CASE_END, LOCALIZE_END, LOCALIZE_START, emit
from ..infra.files import umask_modes
from ..localize import FactPrompts, Localization, LocalizeSettings, localize, stored_localization, trace_key
from ..metrics.spec import METRICS
from ..model.arch import num_layers
from ..model.precision import precision_context, trains_in_bf16
from ..model.probe_cache import base_decodes_served
from ..model.targets import (
    TargetModules,
    all_layer_targets,
    all_weight_targets,
    explicit_targets,
    layer_targets,
    random_layer_targets,
)
from ..model.text import first_token_id, render_prompts
from ..model.weights import verified_restore
from .outcome import CaseOutcome
from .probing import DEFAULT_PLAN, BaseAnswerCache, ProbePlan, probe_base, probe_edit

if TYPE_CHECKING:
    from ..cases.schema import FactCase
    from ..edit.settings import EditSettings
    from ..model.decoding import DecodeRow
    from ..model.load import LoadedModel
    from ..model.trace_store import TraceStore


def fact_prompts(lm: LoadedModel, case: FactCase) -> FactPrompts:
    """What a trace of `case` reads: its prompts as the model sees them, its subject and old answer."""
    return FactPrompts(
        tuple(render_prompts(lm.tokenizer, case.prompts, case.chat_format)),
        case.subject,
        case.old[0],
        first_token_id(lm.tokenizer, case.old[0], case.chat_format),
        add_special_tokens=not case.chat,
    )


def traced_ids(lm: LoadedModel, case: FactCase) -> list[tuple[int, ...]]:
    """The token ids of the prompts a trace of `case` runs (noise changes their embeddings, not their ids)."""
    fact = fact_prompts(lm, case)
    return [tuple(lm.tokenizer(t, add_special_tokens=fact.add_special_tokens).input_ids) for t in fact.texts]


def localize_case(
    lm: LoadedModel,
    case: FactCase,
    settings: EditSettings,
    method: str | None = None,
    precision: str | None = None,
    traces: TraceStore | None = None,
) -> Localization:
    """Trace where the case's old answer is stored (`method` defaults to settings.localize; `precision` to
    bf16 for an editor that trains in bf16, else auto); with `traces`, an earlier run's trace of the same
    fact, settings and model is read back instead, and a new one kept."""
    fact = fact_prompts(lm, case)
    if precision is None:
        precision = "bfloat16" if trains_in_bf16(lm.model, getattr(settings, "train_precision", "model")) else "auto"
    how = LocalizeSettings(
        method=method or settings.localize,
        mlp_layers=settings.mlp_layers,
        attention_layers=settings.attention_layers,
        noise_samples=settings.noise_samples,
        noise_scale=settings.noise_scale,
        seed=settings.seed,
        precision=precision,
    )
    if traces is None:
        return traced(lm, fact, how)
    key = trace_key(fact, how, precision_context(lm.model, precision)[1])
    record = traces.get(key)
    if record is not None:
        try:
            return stored_localization(record, num_layers(lm.model))
        except ValueError as exc:
            traces.note(traces.path_of(key), exc)
    found = traced(lm, fact, how)
    traces.put(key, found.as_record())
    return found


def traced(lm: LoadedModel, fact: FactPrompts, how: LocalizeSettings) -> Localization:
    """The fact localized on the model as it is, with any edits kept on it acting without their routers."""
    with unrouted(lm.model):
        return localize(lm.model, lm.tokenizer, fact, how)


def choose_targets(
    lm: LoadedModel,
    case: FactCase,
    settings: EditSettings,
    scope: Scope = "localized",
    traces: TraceStore | None = None,
) -> tuple[TargetModules, Localization | None]:
    """The targets: every weight or every layer when the editor's scope says so; else named in YAML,
    every layer, random layers, or the localized ones (read from `traces` when an earlier run traced them)."""
    if scope == "all-weights":
        return all_weight_targets(lm.model), None
    if scope == "all-layers":
        return all_layer_targets(lm.model), None
    if settings.target_modules:
        return explicit_targets(lm.model, settings.target_modules, settings.feedforward_modules), None
    if settings.localize == "none":
        return all_layer_targets(lm.model), None
    if settings.localize == "random":  # seeded per case, so that different facts get different layers
        seed = settings.seed * 1_000_003 + zlib.crc32(case.id.encode())
        return random_layer_targets(lm.model, settings.mlp_layers, settings.attention_layers, seed), None
    found = localize_case(lm, case, settings, traces=traces)
    rule = (
        f"{found.method}: MLP of layers {list(found.mlp_layers)} (subject's last token), "
        f"attention of layers {list(found.attention_layers)} (last token)"
    )
    return layer_targets(lm.model, found.mlp_layers, found.attention_layers, rule), found


def place_edit(
    lm: LoadedModel, outcome: CaseOutcome, scope: Scope, base: BaseAnswerCache | None = None
) -> TargetModules:
    """Choose the outcome's targets (localizing when that is the rule) and time it (told as LOCALIZE events).
    With `base`, a trace an earlier run stored is read back (on a model with kept edits, a KeptEditsCache
    gives one only where none of them reaches the traced prompts)."""
    emit(LOCALIZE_START, outcome.settings.localize)
    started = time.perf_counter()
    traces = base.traces(lm, traced_ids(lm, outcome.case)) if base is not None else None
    outcome.targets, outcome.localization = choose_targets(lm, outcome.case, outcome.settings, scope, traces)
    outcome.timings["localize_seconds"] = time.perf_counter() - started
    emit(LOCALIZE_END, outcome.settings.localize)
    return outcome.targets


def held_out_texts(case: FactCase) -> tuple[str, ...]:
    """The texts of `case` an editor must never train on: its paraphrases, neighbours, same-subject facts,
    implications and controls, and the prompts it derives (alias prompts, facts behind a context sentence)."""
    facts = case.neighbours + case.same_subject + case.implications + case.controls
    return case.paraphrases + tuple(f.prompt for f in facts) + derived_held_out(case)


def edit_request(case: FactCase, also_held_out: Sequence[str] = ()) -> EditRequest:
    """What the editor is asked to change for `case` (plus texts of other cases it must not train on)."""
    return EditRequest(
        subject=case.subject,
        prompts=case.prompts,
        old=case.old,
        new=case.new,
        anchors=case.anchors,
        held_out=held_out_texts(case) + tuple(also_held_out),
        chat=case.chat_format,
        aliases=case.aliases,
    )


def editor_base_rows(lm: LoadedModel, case: FactCase, settings: EditSettings) -> list[DecodeRow]:
    """The decodes of the base model the case's editor will ask for when `edited` applies it (the same
    request), for a run to decode beforehand with the base rows and serve back."""
    return planned_base_decodes(lm.tokenizer, edit_request(case), settings)


def save_adapters(applied: EditHandle, save_dir: Path) -> dict[str, Any]:
    """Write the edit's adapters to `save_dir` (peft format), with the modes the umask gives; what was
    written, or why nothing was."""
    try:
        with umask_modes(save_dir):
            return {"dir": str(save_dir), "names": applied.save(save_dir)}
    except NotImplementedError as exc:
        return {"dir": None, "names": [], "error": str(exc)}


@contextmanager
def edited(
    lm: LoadedModel, outcome: CaseOutcome, save_dir: Path | None = None, base: BaseAnswerCache | None = None
) -> Iterator[EditHandle]:
    """The placed outcome's edit, applied for the block: how it was made goes into the outcome, and
    with `save_dir` its adapters are written there. Leaving the block removes it unless it was merged.
    With `base`, the editor's own decodes of the base model are served from there (on a model with kept
    edits, a KeptEditsCache: only the rows none of them reaches), and so are the base model's states that
    a router reads in the block (while no edit changed the weights)."""
    assert outcome.targets is not None, "place_edit() chooses the targets first"
    started = time.perf_counter()
    editor = get_editor(outcome.settings.name)
    with ExitStack() as stack:
        with base_decodes_served(base, lm) if base is not None else nullcontext():
            applied = stack.enter_context(
                editor.apply(lm.model, lm.tokenizer, edit_request(outcome.case), outcome.targets, outcome.settings)
            )
        # localization + both stages
        outcome.timings["edit_seconds"] = outcome.timings["localize_seconds"] + time.perf_counter() - started
        outcome.stages = [s.as_record() for s in applied.stages]
        outcome.trainable_parameters = applied.trainable_parameters
        if save_dir is not None:
            outcome.adapters = save_adapters(applied, save_dir)
        with router_states_served(lm.model, base.states(lm)) if base is not None else nullcontext():
            yield applied


def measure(outcome: CaseOutcome) -> None:
    """Every gated metric of a probed outcome, from the metric table."""
    evidence = outcome.evidence()
    outcome.metrics = {spec.name: spec.measure(evidence) for spec in METRICS}


def run_case(
    lm: LoadedModel,
    case: FactCase,
    settings: EditSettings,
    cache: BaseAnswerCache,
    save_dir: Path | None = None,
    plan: ProbePlan = DEFAULT_PLAN,
) -> CaseOutcome:
    """Probe, edit, probe again and undo the edit; the edited modules are verified bit-identical afterwards.

    With `save_dir`, the edit's adapters are written there (peft format) before they are removed.
    A CASE_END event tells the case's status once it is measured (or skipped).
    """
    outcome = probe_base(lm, case, settings, cache, plan, editor_base_rows(lm, case, settings))  # one batch
    if outcome.status != "ran":
        emit(CASE_END, outcome.status)
        return outcome
    # the model is the base one as loaded here (each case is undone and verified), so what it computed for an
    # earlier run of the same fact serves: its trace, and the editor's decodes of it
    targets = place_edit(lm, outcome, get_editor(settings.name).scope, cache)
    with verified_restore(lm.model, targets.touched) as check, edited(lm, outcome, save_dir, cache) as applied:
        probe_edit(lm, outcome, applied, plan)
    outcome.base_restored = check.restored
    if not check.restored:
        raise RestoreError(
            f"case {case.id}: the weights of the edited modules changed after removing the edit "
            "(expected bit-identical weights); later cases would be invalid"
        )
    measure(outcome)
    emit(CASE_END, outcome.status)
    return outcome
