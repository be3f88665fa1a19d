"""Run one fact case on a loaded model: probe the base, edit, probe the edit, restore, measure."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import metrics as m
from .cases import FactCase
from .edit import get_editor
from .edit.base import EditHandle, EditRequest
from .edit.settings import EditSettings
from .localize import Localization, localize
from .metricspec import DEFAULT_THRESHOLDS
from .models import LoadedModel, weights_fingerprint
from .probe import (answer_logprobs, answer_token_budget, first_token_id, first_token_rank, greedy_continuations,
                    next_token_logprobs, render_prompts, seconds_per_token)
from .targets import (TargetModules, all_layer_targets, all_weight_targets, explicit_targets, layer_targets,
                      random_layer_targets)

LATENCY_REPEATS = 2
LATENCY_TOKENS = 6
FLUENCY_TOKENS = 16


@dataclass(frozen=True)
class ProbedAnswer:
    """One prompt's expected answer and the greedy continuations before and after the edit."""

    group: str  # prompts | paraphrases | controls
    prompt: str
    expected: tuple[str, ...]
    base: str
    edited: str | None = None


@dataclass
class CaseOutcome:
    """Everything measured for one case; `status` is ran, skipped or error."""

    case: FactCase
    status: str
    settings: EditSettings
    reason: str = ""
    answers: list[ProbedAnswer] = field(default_factory=list)
    metrics: dict[str, m.MetricValue] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    targets: TargetModules | None = None
    localization: Localization | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0
    base_restored: bool | None = None

    def group(self, name: str) -> list[ProbedAnswer]:
        return [a for a in self.answers if a.group == name]


class BaseAnswerCache:
    """Base-model greedy answers keyed by (prompt, budget, chat): shared controls are probed once per run."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, int, bool], str] = {}

    def get(self, lm: LoadedModel, prompts: Sequence[str], budgets: Sequence[int], chat: bool) -> list[str]:
        keys = [(p, b, chat) for p, b in zip(prompts, budgets)]
        missing = [k for k in dict.fromkeys(keys) if k not in self._answers]
        if missing:
            found = greedy_continuations(lm.model, lm.tokenizer, [k[0] for k in missing], [k[1] for k in missing],
                                         chat=chat)
            self._answers.update(zip(missing, found))
        return [self._answers[k] for k in keys]


def thresholds_for(case: FactCase) -> dict[str, float]:
    """Suite defaults overridden by `_defaults.yaml` and then the case (already merged into case.thresholds)."""
    return {**DEFAULT_THRESHOLDS, **case.thresholds}


def localize_case(lm: LoadedModel, case: FactCase, settings: EditSettings, method: str | None = None,
                  precision: str = "auto") -> Localization:
    """Trace where the case's old answer is stored (`method` defaults to settings.localize)."""
    return localize(lm.model, lm.tokenizer, render_prompts(lm.tokenizer, case.prompts, case.chat), case.subject,
                    case.old[0], first_token_id(lm.tokenizer, case.old[0], case.chat),
                    method=method or settings.localize, mlp_layers=settings.mlp_layers,
                    attention_layers=settings.attention_layers, noise_samples=settings.noise_samples,
                    noise_scale=settings.noise_scale, seed=settings.seed, add_special_tokens=not case.chat,
                    precision=precision)


def choose_targets(lm: LoadedModel, case: FactCase, settings: EditSettings, scope: str = "localized"
                   ) -> tuple[TargetModules, Localization | None]:
    """The targets: every weight or every layer when the editor's scope says so; else named in YAML,
    every layer, random layers, or the localized ones."""
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
    found = localize_case(lm, case, settings)
    rule = (f"{found.method}: MLP of layers {list(found.mlp_layers)} (subject's last token), "
            f"attention of layers {list(found.attention_layers)} (last token)")
    return layer_targets(lm.model, found.mlp_layers, found.attention_layers, rule), found


def _probe_groups(case: FactCase, tokenizer: Any) -> list[tuple[str, str, tuple[str, ...], int]]:
    old_budget = answer_token_budget(tokenizer, case.old + case.new)
    rows = [("prompts", p, case.new, old_budget) for p in case.prompts]
    rows += [("paraphrases", p, case.new, old_budget) for p in case.paraphrases]
    rows += [("controls", c.prompt, c.answer, answer_token_budget(tokenizer, c.answer)) for c in case.controls]
    return rows


def probe_base(lm: LoadedModel, case: FactCase, settings: EditSettings, cache: BaseAnswerCache) -> CaseOutcome:
    """The base model's answers to every probe of `case`; status `skipped` when it does not give `old`."""
    outcome = CaseOutcome(case=case, status="ran", settings=settings, thresholds=thresholds_for(case))
    rows = _probe_groups(case, lm.tokenizer)
    started = time.perf_counter()
    base = cache.get(lm, [r[1] for r in rows], [r[3] for r in rows], case.chat)
    outcome.timings["base_probe_seconds"] = time.perf_counter() - started
    outcome.answers = [ProbedAnswer(g, p, exp, b) for (g, p, exp, _), b in zip(rows, base)]
    wrong = [(a.prompt, a.base) for a in outcome.group("prompts") if not m.matches(a.base, case.old)]
    if wrong:
        outcome.status = "skipped"
        outcome.reason = ("the base model does not give the old answer " + repr(" / ".join(case.old)) + ": "
                          + "; ".join(f"{p!r} -> {m.cut_answer(b)!r}" for p, b in wrong))
    return outcome


def held_out_texts(case: FactCase) -> tuple[str, ...]:
    """The texts of `case` an editor must never train on: its paraphrases and controls."""
    return case.paraphrases + tuple(c.prompt for c in case.controls)


def edit_request(case: FactCase, also_held_out: Sequence[str] = ()) -> EditRequest:
    """What the editor is asked to change for `case` (plus texts of other cases it must not train on)."""
    return EditRequest(subject=case.subject, prompts=case.prompts, old=case.old, new=case.new, anchors=case.anchors,
                       held_out=held_out_texts(case) + tuple(also_held_out), chat=case.chat)


def probe_edit(lm: LoadedModel, outcome: CaseOutcome, applied: EditHandle) -> None:
    """With the edit active: every probe's edited answer, the recorded scores and the latency timings."""
    case = outcome.case
    rows = _probe_groups(case, lm.tokenizer)
    edited = greedy_continuations(lm.model, lm.tokenizer, [r[1] for r in rows], [r[3] for r in rows], chat=case.chat)
    outcome.answers = [ProbedAnswer(a.group, a.prompt, a.expected, a.base, e) for a, e in zip(outcome.answers, edited)]
    right = [(a.prompt, a.expected) for a in outcome.group("controls") if m.matches(a.base, a.expected)]
    outcome.extra["scores"] = _recorded_scores(lm, case, applied, right)
    latency_prompts = list(case.prompts) + [c.prompt for c in case.controls]
    base_spt, edited_spt = [], []
    for _ in range(LATENCY_REPEATS):
        with applied.disabled():
            base_spt.append(seconds_per_token(lm.model, lm.tokenizer, latency_prompts, LATENCY_TOKENS, case.chat))
        edited_spt.append(seconds_per_token(lm.model, lm.tokenizer, latency_prompts, LATENCY_TOKENS, case.chat))
    outcome.timings["base_seconds_per_token"] = min(base_spt)
    outcome.timings["edited_seconds_per_token"] = min(edited_spt)


def save_adapters(applied: EditHandle, save_dir: Path) -> dict[str, Any]:
    """Write the edit's adapters to `save_dir` (peft format); what was written, or why nothing was."""
    try:
        return {"dir": str(save_dir), "names": applied.save(save_dir)}
    except NotImplementedError as exc:
        return {"dir": None, "names": [], "error": str(exc)}


def run_case(lm: LoadedModel, case: FactCase, settings: EditSettings, cache: BaseAnswerCache,
             save_dir: Path | None = None, keep: bool = False) -> CaseOutcome:
    """Probe, edit, probe again and restore; the base model is verified unchanged afterwards.

    With `save_dir`, the edit's adapters are written there (peft format) before they are removed.
    With `keep` (sequential editing), a completed edit is merged into the weights instead of removed,
    and restoring the base is the caller's job.
    """
    outcome = probe_base(lm, case, settings, cache)
    if outcome.status != "ran":
        return outcome
    editor = get_editor(settings.name)
    edit_started = time.perf_counter()
    outcome.targets, outcome.localization = choose_targets(lm, case, settings, editor.scope)
    outcome.timings["localize_seconds"] = time.perf_counter() - edit_started
    touched = None if outcome.targets.all_weights else outcome.targets.modules
    touched_before = weights_fingerprint(lm.model, touched)
    applied: EditHandle = editor.apply(lm.model, lm.tokenizer, edit_request(case), outcome.targets, settings)
    completed = False
    try:
        outcome.timings["edit_seconds"] = time.perf_counter() - edit_started  # localization + both stages
        outcome.stages = [s.as_record() for s in applied.stages]
        outcome.trainable_parameters = applied.trainable_parameters
        probe_started = time.perf_counter()
        if save_dir is not None:
            outcome.extra["adapters"] = save_adapters(applied, save_dir)
        probe_edit(lm, outcome, applied)
        outcome.timings["probe_seconds"] = time.perf_counter() - probe_started
        completed = True
    finally:
        if keep and completed:
            applied.merge()
        else:
            applied.remove()
            outcome.base_restored = weights_fingerprint(lm.model, touched) == touched_before
    if keep:
        measure(outcome)
        return outcome
    if not outcome.base_restored:
        raise RuntimeError(f"case {case.id}: the weights of the edited modules changed after removing the edit "
                           "(expected bit-identical weights); later cases would be invalid")
    measure(outcome)
    return outcome


def _recorded_scores(lm: LoadedModel, case: FactCase, applied: EditHandle,
                     controls_base_right: Sequence[tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
    """Scores recorded but not gated: CounterFact-style probabilities, latent recall of `old`, fluency."""
    tok, model = lm.tokenizer, lm.model
    out: dict[str, Any] = {}
    old_logprobs: dict[str, list[float]] = {}
    for name, texts in (("efficacy", list(case.prompts)), ("generalization", list(case.paraphrases))):
        if texts:
            new_lp = answer_logprobs(model, tok, texts, case.new[0], case.chat)
            old_logprobs[name] = answer_logprobs(model, tok, texts, case.old[0], case.chat)
            out[name] = sum(n > o for n, o in zip(new_lp, old_logprobs[name])) / len(texts)
    if controls_base_right:  # first-token probabilities: one batched pass over the controls
        logp = next_token_logprobs(model, tok, [p for p, _ in controls_base_right], case.chat)
        new_id = first_token_id(tok, case.new[0], case.chat)
        kept = [float(row[first_token_id(tok, answer[0], case.chat)]) > float(row[new_id])
                for row, (_, answer) in zip(logp, controls_base_right)]
        out["specificity_first_token"] = sum(kept) / len(kept)
    prompts = list(case.prompts)
    out["old_answer_logprob_after"] = _mean(old_logprobs["efficacy"])  # prompts are never empty
    out["old_answer_rank_after"] = _mean(first_token_rank(model, tok, prompts, case.old[0], case.chat))
    after = greedy_continuations(model, tok, prompts, [FLUENCY_TOKENS] * len(prompts), chat=case.chat)
    with applied.disabled():
        out["old_answer_logprob_before"] = _mean(answer_logprobs(model, tok, prompts, case.old[0], case.chat))
        before = greedy_continuations(model, tok, prompts, [FLUENCY_TOKENS] * len(prompts), chat=case.chat)
    out["fluency_ngram_entropy_before"] = _mean([m.ngram_entropy(t) for t in before])
    out["fluency_ngram_entropy_after"] = _mean([m.ngram_entropy(t) for t in after])
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def measure(outcome: CaseOutcome) -> None:
    """The gated metrics of a probed outcome, from its answers and latency timings."""
    case = outcome.case
    prompts, paraphrases, controls = (outcome.group(g) for g in ("prompts", "paraphrases", "controls"))
    outcome.metrics = {
        "new_fact_accuracy": m.new_fact_accuracy([a.edited for a in prompts], case.new),
        "forget_rate": m.forget_rate([a.edited for a in prompts + paraphrases], case.old),
        "paraphrase_accuracy": m.paraphrase_accuracy([a.edited for a in paraphrases], case.new),
        "control_retention": m.control_retention([a.base for a in controls], [a.edited for a in controls],
                                                 [a.expected for a in controls]),
        "latency_overhead": m.latency_overhead(outcome.timings["base_seconds_per_token"],
                                               outcome.timings["edited_seconds_per_token"],
                                               len(case.prompts) + len(case.controls)),
    }
