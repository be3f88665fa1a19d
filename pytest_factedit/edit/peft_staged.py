"""Editors that train peft adapters stage by stage (unlearn, then learn) on the target modules only.

`PeftStageTrainer` does the training; `PeftStagedEditor` is the editor built on it (lora, and a plugin's
own adapter: examples/custom_editor/); the IA³ editors use the trainer for their every-token gains.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from ..model.precision import training_precision
from ..model.targets import TargetModules, lowest_layer
from .base import AppliedEdit, EditHandle, EditRequest, Scope
from .objectives import ObjectiveDecodes, Objectives, build_objectives
from .settings import EditSettings, TrainingLoopSettings, UnlearnStageSettings, changed_default, setting
from .training import train_stage

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

StagePenalty = Callable[[], "torch.Tensor"]  # a term added to every step's loss


def _stage_params(peft_model: PeftModel, adapter: str) -> list[torch.nn.Parameter]:
    """Make exactly the parameters of `adapter` trainable (peft names them `...ia3_l.<adapter>`,
    `...lora_A.<adapter>.weight`)."""
    params = []
    for name, param in peft_model.named_parameters():
        param.requires_grad_(f".{adapter}." in f"{name}.")
        if param.requires_grad:
            params.append(param)
    return params


class LearnPenalty(Protocol):
    """A term added to the learn stage's loss (IA³'s preservation), measured before any adapter exists."""

    def measured(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: TargetModules
    ) -> Callable[[PeftModel], StagePenalty]:
        """Measure on the base model; the callable gives the penalty of the learn stage's trainable adapter."""
        ...


@dataclass(frozen=True)
class PeftStageTrainer:
    """Train one fresh adapter per stage on the same modules; earlier adapters stay active and frozen."""

    method: str
    stages: tuple[str, ...]
    config: Callable[[], PeftConfig]  # a fresh adapter config for each stage
    learn_penalty: LearnPenalty | None = None

    def train(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request: EditRequest | Sequence[EditRequest],
        targets: TargetModules,
        settings: TrainingLoopSettings,
    ) -> AppliedEdit:
        import torch

        torch.manual_seed(settings.seed)
        started = time.perf_counter()
        applied: AppliedEdit | None = None
        try:
            with training_precision(model, settings.train_precision):
                goals = build_objectives(model, tokenizer, request, settings, lowest_layer(model, targets))
                penalty = self.learn_penalty.measured(model, tokenizer, targets) if self.learn_penalty else None
                for stage in self.stages:
                    applied = self._add_adapter(model, applied, stage, targets, settings)
                    self._train(applied, stage, goals, settings, penalty if stage == "learn" else None)
        except BaseException:
            if applied is not None:
                applied.remove()
            raise
        assert applied is not None, "an editor has at least one stage"
        applied.seconds = time.perf_counter() - started
        return applied

    def _add_adapter(
        self,
        model: PreTrainedModel,
        applied: AppliedEdit | None,
        stage: str,
        targets: TargetModules,
        settings: EditSettings,
    ) -> AppliedEdit:
        """A fresh adapter for `stage`, active on top of the earlier stages' ones."""
        from peft import get_peft_model
        from peft.tuners.tuners_utils import BaseTuner

        if applied is None:
            with warnings.catch_warnings():  # peft asks a deprecated property; nothing for our user to do
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                peft_model = get_peft_model(model, self.config(), adapter_name=stage)
            applied = AppliedEdit(
                method=self.method, peft_model=peft_model, model=model, targets=targets, settings=settings
            )
        else:
            applied.peft_model.add_adapter(stage, self.config())
        tuner = applied.peft_model.base_model
        assert isinstance(tuner, BaseTuner), "an adapter config wraps the model in a tuner"
        tuner.set_adapter(list(self.stages[: self.stages.index(stage) + 1]))
        return applied

    def _train(
        self,
        applied: AppliedEdit,
        stage: str,
        goals: Objectives,
        settings: TrainingLoopSettings,
        penalty_of: Callable[[PeftModel], StagePenalty] | None = None,
    ) -> None:
        """Train the `stage` adapter alone (earlier stages stay active and frozen), then freeze it."""
        params = _stage_params(applied.peft_model, stage)
        penalty = penalty_of(applied.peft_model) if penalty_of is not None else None
        applied.stages.append(train_stage(stage, applied.model, params, goals, settings, penalty))
        applied.trainable_parameters += sum(p.numel() for p in params)
        for param in params:
            param.requires_grad_(False)
        applied.peft_model.eval()


class PeftStagedEditor(ObjectiveDecodes):
    """An adapter editor: one adapter per stage (`PeftStageTrainer`) from the config a subclass gives."""

    name: ClassVar[str] = ""
    scope: ClassVar[Scope] = "localized"  # the runner gives localized targets
    stages: ClassVar[tuple[str, ...]] = ("unlearn", "learn")
    settings_class: ClassVar[type[TrainingLoopSettings]] = UnlearnStageSettings  # matches the stages above

    def config(self, targets: TargetModules, settings: TrainingLoopSettings) -> PeftConfig:
        raise NotImplementedError

    def apply(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request: EditRequest | Sequence[EditRequest],
        targets: TargetModules,
        settings: EditSettings,
    ) -> EditHandle:
        own = self.settings_class.of(settings)
        trainer = PeftStageTrainer(self.name, self.stages, lambda: self.config(targets, own))
        return trainer.train(model, tokenizer, request, targets, own)


@dataclass(frozen=True)
class LoraSettings(TrainingLoopSettings):
    """lora's settings: the rank of its adapter, and a learning rate of its own."""

    lr: float = changed_default(TrainingLoopSettings, "lr", 2e-3)
    lora_rank: int = setting(4, "count", "LoRA rank")


class LoraEditor(PeftStagedEditor):
    """A LoRA adapter (rank `lora_rank`) trained on the new answer, on the localized modules."""

    name = "lora"
    stages = ("learn",)
    settings_class = LoraSettings

    def config(self, targets: TargetModules, settings: TrainingLoopSettings) -> PeftConfig:
        from peft import LoraConfig

        rank = LoraSettings.of(settings).lora_rank
        return LoraConfig(
            target_modules=list(targets.modules),
            r=rank,
            lora_alpha=2 * rank,
            lora_dropout=0.0,
            init_lora_weights=True,
        )
