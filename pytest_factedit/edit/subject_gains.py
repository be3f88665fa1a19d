"""IA³ gains that act only where the subject is read (`gain_positions: subject`, `subject-sentence`,
`after-subject`).

The same per-channel gains as peft's IA³ on the same modules (the input of a feed-forward output
projection, the output of the others), one vector per stage, multiplied; but applied only at the
positions `SubjectGate` marks. A prompt that does not name the subject runs the base model exactly,
which is what keeps the other subjects of a relation (the neighbours) as they were. Every gated edit on a
model sits behind one shared gate (edit/gate_registry.py): a pass costs the same however many kept edits
there are whose subjects it does not name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..infra.files import write_atomic
from ..model.precision import training_precision
from ..model.probe_cache import served_base_states
from ..model.targets import TargetModules, lowest_layer
from .base import EditHandle, EditRequest, keep_until_released
from .gate import SubjectGate
from .gate_registry import GateRegistry
from .objectives import build_objectives
from .router import RelationRouter, build_router, router_layer
from .saved_gains import (
    GAINS_FILE,
    GATE_FILE,
    ROUTER_KEY,
    SAVED_FOLDER,
    SAVED_FORMAT,
    WORD_FLAGS_KEY,
    checked_gains,
    checked_gate,
    gain_width,
)
from .settings import EditSettings, TrainingLoopSettings
from .subject import subject_patterns, subject_span
from .training import train_stage
from .words import word_flags

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(kw_only=True)
class SubjectGainEdit(EditHandle):
    """Gains on the targeted modules behind a subject gate; `remove()` takes every hook off."""

    model: PreTrainedModel
    gate: SubjectGate
    gains: dict[str, dict[str, torch.nn.Parameter]] = field(default_factory=dict)  # stage -> module -> gain
    hooks: ExitStack = field(default_factory=ExitStack)
    registry: GateRegistry | None = None  # the model's shared gate, once the edit is on it
    router: RelationRouter | None = None  # set once trained: the gate then opens only on the edited relation

    def product(self, module: str) -> torch.Tensor | None:
        """Every stage's gain on `module`, multiplied (None before the first stage exists)."""
        total: torch.Tensor | None = None
        for stage in self.gains.values():
            if module in stage:
                total = stage[module] if total is None else total * stage[module]
        return total

    def reaches(self, ids: Sequence[int]) -> bool:
        """Only a text that holds one of the gate's patterns: elsewhere every gain multiplies by exactly 1."""
        return self.gate.may_open(ids)

    def reaches_row(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> bool:
        """As `reaches`, less a row whose prompt the router surely turns down on its prefill (the verdict holds
        for the row: edit/router.py), as told by the base model's states the registry is served."""
        if not super().reaches_row(prompt, continuations):
            return False
        registry = self.registry
        serial = registry.serial(self) if registry is not None and self.router is not None else None
        if registry is None or serial is None:
            return True
        return serial not in registry.routed_away(prompt, registry.known_states, {serial})

    @contextmanager
    def disabled(self) -> Iterator[None]:
        self.gate.enabled = False
        try:
            yield
        finally:
            self.gate.enabled = True

    def save(self, out_dir: Path) -> list[str]:
        """Write the gains and the gate to out_dir/subject-gains/ (a peft adapter cannot gate by position);
        `load_subject_gains` puts them back on a base model."""
        import torch
        from safetensors.torch import save_file

        folder = out_dir / SAVED_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{stage}|{module}": g.detach().cpu().contiguous()
            for stage, gains in self.gains.items()
            for module, g in gains.items()
        }
        if self.gate.word_flags:
            tensors[WORD_FLAGS_KEY] = torch.frombuffer(bytearray(self.gate.word_flags), dtype=torch.uint8)
        if self.router is not None:
            tensors[ROUTER_KEY] = self.router.references.detach().cpu().contiguous()
        save_file(tensors, str(folder / GAINS_FILE))
        gate = {
            "format": SAVED_FORMAT,
            "method": self.method,
            "stages": list(self.gains),
            "modules": list(self.targets.modules),
            "feedforward": list(self.targets.feedforward),
            "patterns": [list(p) for p in self.gate.patterns],
            "reach": self.gate.reach,
        }
        if self.router is not None:
            references = len(self.router.references)
            gate["router"] = {"layer": self.router.layer, "threshold": self.router.threshold, "references": references}
        write_atomic(folder / GATE_FILE, json.dumps(gate, indent=1) + "\n")
        return [SAVED_FOLDER]

    def merge(self) -> PreTrainedModel:
        """Sequential editing: the gains stay on the model, gated by their own subject, until the run
        that keeps them releases them (`base.kept_edits_released`)."""
        self.removed = True
        keep_until_released(self.model, self)
        return self.model

    def remove(self) -> PreTrainedModel:
        self.removed = True
        self.hooks.close()
        return self.model


@dataclass(frozen=True)
class Gating:
    """Where an edit's gains act: the gate's `reach` (edit/gate.py), and its relation router, built once the
    edit is trained (edit/router.py; `router_from_end` 0: none): the hidden state it reads, counted from the
    end, and the margin under the subject's general texts' similarity."""

    reach: str
    router_from_end: int = 0
    router_margin: float = 0.0

    def router(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        requests: Sequence[EditRequest],
        prefixes: Sequence[str],
    ) -> RelationRouter | None:
        if not (layers := self.router_layers(model)):
            return None
        known = served_base_states(model)  # inside a run: what its base probe kept of the same texts
        return build_router(model, tokenizer, requests, prefixes, layers[0], self.router_margin, known)

    def router_layers(self, model: PreTrainedModel) -> tuple[int, ...]:
        """The decoder layer whose output the router reads at a text's last token; none without a router."""
        return (router_layer(model, self.router_from_end),) if self.router_from_end else ()


def _hooked(edit: SubjectGainEdit, sealed: bool = False) -> SubjectGainEdit:
    """`edit` behind its model's shared gate (`sealed`: its gains are final); undone by `remove()`."""
    try:
        edit.registry = GateRegistry.of(edit.model)
        edit.hooks.callback(edit.registry.add(edit))
        if sealed:
            edit.registry.seal(edit)
    except BaseException:
        edit.remove()
        raise
    return edit


def load_subject_gains(model: PreTrainedModel, folder: Path | str) -> SubjectGainEdit:
    """A saved subject-gated edit put back on the base `model`, behind its shared gate (`remove()` takes it off).

    gate.json and gains.safetensors are checked whole against `model` first (edit/saved_gains.py): a
    tampered file raises SavedEditError and no hook goes on.
    """
    import torch

    folder = Path(folder)
    gate = checked_gate(folder / GATE_FILE, model)
    tensors = checked_gains(folder / GAINS_FILE, gate, model)
    flags = tensors.pop(WORD_FLAGS_KEY, None)
    references = tensors.pop(ROUTER_KEY, None)
    subject_gate = SubjectGate(gate["patterns"], gate["reach"], bytes(flags.tolist()) if flags is not None else b"")
    targets = TargetModules(tuple(gate["modules"]), tuple(gate["feedforward"]), "saved")
    edit = SubjectGainEdit(
        method=gate["method"], model=model, gate=subject_gate, targets=targets, settings=EditSettings()
    )
    if references is not None:
        unit = torch.nn.functional.normalize(references.float(), dim=-1)
        edit.router = RelationRouter(gate["router"]["layer"], unit, float(gate["router"]["threshold"]))
    device = next(model.parameters()).device
    for stage in gate["stages"]:  # in training order, so the product is the one the edit was measured with
        edit.gains[stage] = {
            module: torch.nn.Parameter(tensors[f"{stage}|{module}"].to(device), requires_grad=False)
            for module in gate["modules"]
        }
    return _hooked(edit, sealed=True)


def subject_gate_for(
    tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], reach: str = "subject"
) -> SubjectGate:
    """A gate on every request's subject and aliases, in every spelling (edit/subject.py), as whole names."""
    patterns: list[tuple[int, ...]] = []
    for request in requests:
        spans = [subject_span(tokenizer, p, request.subject, request.chat) for p in request.prompts]
        patterns += subject_patterns(tokenizer, request.subject, spans, request.aliases)
    return SubjectGate(list(dict.fromkeys(patterns)), reach, word_flags(tokenizer))


def apply_subject_gains(
    method: str,
    stages: Sequence[str],
    gating: Gating,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest | Sequence[EditRequest],
    targets: TargetModules,
    settings: TrainingLoopSettings,
) -> SubjectGainEdit:
    """Train one gain vector per stage and module (earlier stages frozen), behind the subject gate (`gating`:
    the subject's tokens, or on to the end of its sentence), then its relation router where `gating` has one."""
    import torch

    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    requests = [request] if isinstance(request, EditRequest) else list(request)
    if gating.router_from_end:
        router_layer(model, gating.router_from_end)  # a depth the model lacks is refused before training
    gate = subject_gate_for(tokenizer, requests, gating.reach)
    edit = _hooked(SubjectGainEdit(method=method, model=model, gate=gate, targets=targets, settings=settings))
    feedforward = set(targets.feedforward)
    try:
        with training_precision(model, settings.train_precision):
            goals = build_objectives(model, tokenizer, request, settings, lowest_layer(model, targets), gate.untouched)
            for stage in stages:
                edit.gains[stage] = {
                    name: torch.nn.Parameter(
                        torch.ones(gain_width(model.get_submodule(name), name in feedforward), device=model.device)
                    )
                    for name in targets.modules
                }
                params = list(edit.gains[stage].values())
                edit.stages.append(train_stage(stage, model, params, goals, settings))
                edit.trainable_parameters += sum(p.numel() for p in params)
                for param in params:
                    param.requires_grad_(False)
        model.eval()
        if edit.registry is not None:
            with edit.registry.disabled():
                edit.router = gating.router(model, tokenizer, requests, settings.context_prefixes)
            edit.registry.seal(edit)
    except BaseException:
        edit.remove()
        raise
    edit.seconds = time.perf_counter() - started
    return edit
