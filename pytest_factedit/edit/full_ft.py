"""Direct fine-tuning of every weight on the new answer: the paper's foil, restored bit for bit afterwards."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..targets import TargetModules
from .base import EditHandle, EditRequest
from .objectives import build_objectives
from .settings import EditSettings
from .training import train_stage


@dataclass(kw_only=True)
class WeightsEdit(EditHandle):
    """An edit made in the weights themselves; `remove()` copies the saved originals back."""

    model: Any
    params: list[Any]
    originals: list[Any]

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base weights for the block, then put the edited ones back."""
        import torch

        edited = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, original in zip(self.params, self.originals):
                param.copy_(original)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, edited):
                    param.copy_(value)

    def save(self, out_dir: Path) -> list[str]:
        raise NotImplementedError(f"method {self.method} changes every weight; it has no adapter to save "
                                  "(use an adapter method such as ia3-two-stage or lora to ship an edit)")

    def merge(self) -> Any:
        """Keep the fine-tuned weights (sequential editing) and drop the saved originals."""
        self.removed = True
        self.originals = []
        return self.model

    def remove(self) -> Any:
        import torch

        if not self.removed:
            with torch.no_grad():
                for param, original in zip(self.params, self.originals):
                    param.copy_(original)
            self.removed = True
            self.originals = []
        return self.model


class FullFineTuneEditor:
    """Adam on all weights, learn goal only; no retention term and no guard unless the settings add them."""

    name = "full-ft"
    scope = "all-weights"

    def apply(self, model: Any, tokenizer: Any, request: EditRequest | Sequence[EditRequest],
              targets: TargetModules, settings: EditSettings) -> WeightsEdit:
        import torch

        torch.manual_seed(settings.seed)
        started = time.perf_counter()
        goals = build_objectives(model, tokenizer, request, settings)
        params = list(model.parameters())
        edit = WeightsEdit(method=self.name, model=model, params=params,
                           originals=[p.detach().clone() for p in params], targets=targets, settings=settings)
        try:
            for param in params:
                param.requires_grad_(True)
            edit.stages.append(train_stage("learn", model, params, goals.learn_rows, goals.learn_goal,
                                           settings.learn_max_steps, goals.kl_rows, goals.kl_reference, settings,
                                           goals.pad_id, fact_sizes=goals.fact_sizes))
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
