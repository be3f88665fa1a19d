"""Direct fine-tuning of every weight on the new answer: the paper's foil, restored bit for bit afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..errors import MethodError
from ..model.introspect import weight_of
from ..model.precision import training_precision
from ..model.targets import TargetModules, lowest_layer
from ..model.weights import copy_into, restored_weights, snapshot
from .base import EditHandle, EditRequest, Scope
from .objectives import ObjectiveDecodes, build_objectives
from .settings import EditSettings, TrainingLoopSettings, changed_default
from .training import train_stage

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(kw_only=True)
class WeightsEdit(EditHandle):
    """An edit made in the weights themselves; `remove()` copies the saved originals back."""

    model: PreTrainedModel
    params: list[torch.Tensor]  # the weights trained in place
    originals: list[torch.Tensor]
    on_merge: Callable[[], None] | None = None  # what an editor keeps once the edit is kept (alphaedit's keys)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base weights for the block, then put the edited ones back."""
        with restored_weights(self.params):
            copy_into(self.params, self.originals)
            yield

    def save(self, out_dir: Path) -> list[str]:
        raise NotImplementedError(
            f"method {self.method} changes the weights in place; it has no adapter to save "
            "(use an adapter method such as ia3-two-stage or lora to ship an edit)"
        )

    def merge(self) -> PreTrainedModel:
        """Keep the fine-tuned weights (sequential editing) and drop the saved originals."""
        self.removed = True
        self.originals = []
        if self.on_merge is not None:
            self.on_merge()
        return self.model

    def remove(self) -> PreTrainedModel:
        if not self.removed:
            copy_into(self.params, self.originals)
            self.removed = True
            self.originals = []
        return self.model


@dataclass(frozen=True)
class FullFineTuneSettings(TrainingLoopSettings):
    """full-ft's settings: the paper's foil, plain fine-tuning of every weight on the new answer, with a
    small learning rate and without retention or guard."""

    lr: float = changed_default(TrainingLoopSettings, "lr", 2e-5)
    kl_weight: float = changed_default(TrainingLoopSettings, "kl_weight", 0.0)
    guard_weight: float = changed_default(TrainingLoopSettings, "guard_weight", 0.0)


class FullFineTuneEditor(ObjectiveDecodes):
    """Full fine-tuning: Adam on all weights, learn goal only; no retention term and no guard unless the
    settings add them."""

    name: ClassVar[str] = "full-ft"
    scope: ClassVar[Scope] = "all-weights"
    settings_class: ClassVar[type[FullFineTuneSettings]] = FullFineTuneSettings

    def apply(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request: EditRequest | Sequence[EditRequest],
        targets: TargetModules,
        settings: EditSettings,
    ) -> WeightsEdit:
        import torch

        own = self.settings_class.of(settings)
        torch.manual_seed(own.seed)
        started = time.perf_counter()
        params = self.trained_parameters(model, targets)
        edit = WeightsEdit(
            method=self.name, model=model, params=params, originals=snapshot(params), targets=targets, settings=own
        )
        try:
            with training_precision(model, own.train_precision, cast_weights=False):
                goals = build_objectives(model, tokenizer, request, own, lowest_layer(model, targets))
                for param in params:
                    param.requires_grad_(True)
                edit.stages.append(train_stage("learn", model, params, goals, own))
        except BaseException:
            edit.remove()
            raise
        finally:
            for param in params:
                param.requires_grad_(False)
                param.grad = None
            model.eval()
        edit.trainable_parameters = sum(p.numel() for p in params)
        edit.seconds = time.perf_counter() - started
        return edit

    def trained_parameters(self, model: PreTrainedModel, targets: TargetModules) -> list[torch.Tensor]:
        return list(model.parameters())


@dataclass(frozen=True)
class MlpFineTuneSettings(FullFineTuneSettings):
    """ft-m's settings: one MLP layer, the answer followed by end-of-sequence, fewer steps to a surer stop."""

    lr: float = changed_default(TrainingLoopSettings, "lr", 5e-4)
    mlp_layers: int = changed_default(TrainingLoopSettings, "mlp_layers", 1)
    attention_layers: int = changed_default(TrainingLoopSettings, "attention_layers", 0)
    append_eos: bool = changed_default(TrainingLoopSettings, "append_eos", True)
    learn_max_steps: int = changed_default(TrainingLoopSettings, "learn_max_steps", 25)
    learn_stop_prob: float = changed_default(TrainingLoopSettings, "learn_stop_prob", 0.9)


class MlpFineTuneEditor(FullFineTuneEditor):
    """FT-M (LocFT-BF): fine-tune one MLP output projection, the loss on the answer and an end-of-sequence
    token only; the layer is the one localization ranks first."""

    name = "ft-m"
    scope = "localized"
    settings_class = MlpFineTuneSettings

    def trained_parameters(self, model: PreTrainedModel, targets: TargetModules) -> list[torch.Tensor]:
        if not targets.feedforward:
            raise MethodError(
                "mlp_layers",
                f"ft-m fine-tunes an MLP output projection: give mlp_layers >= 1 (targets: {targets.rule})",
            )
        return [weight_of(model.get_submodule(targets.feedforward[0]))]
