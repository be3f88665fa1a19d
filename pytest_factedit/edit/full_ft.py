"""Direct fine-tuning of every weight on the new answer: the paper's foil, restored bit for bit afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import MethodError
from ..model.precision import training_precision
from ..model.targets import TargetModules, lowest_layer
from ..model.weights import copy_into, restored_weights, snapshot
from .base import EditHandle, EditRequest, Scope
from .objectives import build_objectives
from .settings import EditSettings
from .training import train_stage

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(kw_only=True)
class WeightsEdit(EditHandle):
    """An edit made in the weights themselves; `remove()` copies the saved originals back."""

    model: PreTrainedModel
    params: list[torch.nn.Parameter]
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


class FullFineTuneEditor:
    """Adam on all weights, learn goal only; no retention term and no guard unless the settings add them."""

    name: ClassVar[str] = "full-ft"
    scope: ClassVar[Scope] = "all-weights"
    # The paper's foil: plain fine-tuning of every weight on the new answer, without retention or guard.
    defaults: ClassVar[Mapping[str, Any]] = {"lr": 2e-5, "kl_weight": 0.0, "guard_weight": 0.0}

    def apply(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request: EditRequest | Sequence[EditRequest],
        targets: TargetModules,
        settings: EditSettings,
    ) -> WeightsEdit:
        import torch

        torch.manual_seed(settings.seed)
        started = time.perf_counter()
        params = self.trained_parameters(model, targets)
        edit = WeightsEdit(
            method=self.name, model=model, params=params, originals=snapshot(params), targets=targets, settings=settings
        )
        try:
            with training_precision(model, settings.train_precision, cast_weights=False):
                goals = build_objectives(model, tokenizer, request, settings, lowest_layer(model, targets))
                for param in params:
                    param.requires_grad_(True)
                edit.stages.append(train_stage("learn", model, params, goals, settings))
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

    def trained_parameters(self, model: PreTrainedModel, targets: TargetModules) -> list[torch.nn.Parameter]:
        return list(model.parameters())


class MlpFineTuneEditor(FullFineTuneEditor):
    """FT-M (LocFT-BF): fine-tune one MLP output projection, the loss on the answer and an end-of-sequence
    token only; the layer is the one localization ranks first."""

    name = "ft-m"
    scope = "localized"
    defaults = {
        "lr": 5e-4,
        "mlp_layers": 1,
        "attention_layers": 0,
        "kl_weight": 0.0,
        "guard_weight": 0.0,
        "append_eos": True,
        "learn_max_steps": 25,
        "learn_stop_prob": 0.9,
    }

    def trained_parameters(self, model: PreTrainedModel, targets: TargetModules) -> list[torch.nn.Parameter]:
        if not targets.feedforward:
            raise MethodError(
                "mlp_layers",
                f"ft-m fine-tunes an MLP output projection: give mlp_layers >= 1 (targets: {targets.rule})",
            )
        return [model.get_submodule(targets.feedforward[0]).weight]
