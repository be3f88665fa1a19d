"""Editors that train peft adapters stage by stage (unlearn, then learn) on the target modules only."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import MethodError
from ..model.precision import training_precision
from ..model.targets import TargetModules, lowest_layer
from .base import AppliedEdit, EditHandle, EditRequest, Scope
from .objectives import Objectives, build_objectives
from .preservation import PreservedOutputs, preserved_outputs
from .settings import EditSettings
from .subject_gains import apply_subject_gains
from .training import train_stage

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _stage_params(peft_model: PeftModel, adapter: str) -> list[torch.nn.Parameter]:
    """Make exactly the parameters of `adapter` trainable (peft names them `...ia3_l.<adapter>`,
    `...lora_A.<adapter>.weight`)."""
    params = []
    for name, param in peft_model.named_parameters():
        param.requires_grad_(f".{adapter}." in f"{name}.")
        if param.requires_grad:
            params.append(param)
    return params


class PeftStagedEditor:
    """Train one fresh adapter per stage on the same modules; earlier adapters stay active and frozen."""

    name: ClassVar[str] = ""
    scope: ClassVar[Scope] = "localized"  # the runner gives localized targets
    defaults: ClassVar[Mapping[str, Any]] = {}
    stages: ClassVar[tuple[str, ...]] = ("unlearn", "learn")
    gated: ClassVar[bool] = False  # IA³ gains can be gated by the subject's positions (gain_positions)

    def config(self, targets: TargetModules, settings: EditSettings) -> PeftConfig:
        raise NotImplementedError

    def apply(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request: EditRequest | Sequence[EditRequest],
        targets: TargetModules,
        settings: EditSettings,
    ) -> EditHandle:
        import torch

        if settings.gain_positions != "every":
            if not self.gated:
                raise MethodError("gain_positions", f"method {self.name} has no gains to gate; only IA³ methods do")
            return apply_subject_gains(self.name, self.stages, model, tokenizer, request, targets, settings)
        torch.manual_seed(settings.seed)
        started = time.perf_counter()
        applied: AppliedEdit | None = None
        try:
            with training_precision(model, settings.train_precision):
                goals = build_objectives(model, tokenizer, request, settings, lowest_layer(model, targets))
                preserved = self._preserved(model, tokenizer, targets, settings)
                for stage in self.stages:
                    applied = self._add_adapter(model, applied, stage, targets, settings)
                    self._train(applied, stage, goals, settings, preserved if stage == "learn" else None)
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

        if applied is None:
            with warnings.catch_warnings():  # peft asks a deprecated property; nothing for our user to do
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                peft_model = get_peft_model(model, self.config(targets, settings), adapter_name=stage)
            applied = AppliedEdit(method=self.name, peft_model=peft_model, targets=targets, settings=settings)
        else:
            applied.peft_model.add_adapter(stage, self.config(targets, settings))
        applied.peft_model.base_model.set_adapter(list(self.stages[: self.stages.index(stage) + 1]))
        return applied

    def _preserved(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: TargetModules, settings: EditSettings
    ) -> PreservedOutputs | None:
        """The preservation term's forms (IA³ with `preservation_weight` > 0), measured before any adapter."""
        if settings.preservation_weight == 0:
            return None
        if not self.gated:
            raise MethodError("preservation_weight", f"method {self.name} has no gains to preserve; IA³ methods do")
        return preserved_outputs(model, tokenizer, targets, settings.key_positions_per_dim)

    def _train(
        self,
        applied: AppliedEdit,
        stage: str,
        goals: Objectives,
        settings: EditSettings,
        preserved: PreservedOutputs | None = None,
    ) -> None:
        """Train the `stage` adapter alone (earlier stages stay active and frozen), then freeze it."""
        params = _stage_params(applied.peft_model, stage)
        penalty = None
        if preserved is not None:
            gains = {
                name.removeprefix("base_model.model.").split(".ia3_l.")[0]: param
                for name, param in applied.peft_model.named_parameters()
                if param.requires_grad
            }

            def penalty() -> torch.Tensor:
                return settings.preservation_weight * preserved.penalty(gains)

        model = applied.peft_model.get_base_model()
        applied.stages.append(train_stage(stage, model, params, goals, settings, penalty))
        applied.trainable_parameters += sum(p.numel() for p in params)
        for param in params:
            param.requires_grad_(False)
        applied.peft_model.eval()


class IA3TwoStageEditor(PeftStagedEditor):
    """The default: IA³ `unlearn` (push the old answer down), then IA³ `learn` (the new one) on top."""

    name = "ia3-two-stage"
    gated = True
    # gains on the subject's tokens only: on 8 tuning facts the neighbours kept rose from 0.38 to 0.97
    # (docs/benchmarks.md, "the neighbour leak"); reaching on to the end of the subject's sentence, with the
    # subject's own other facts held (subject_rows), keeps those facts too (docs/benchmarks.md, "the
    # subject's other facts"); `gain_positions: every` is the peft IA³ adapter
    defaults = {"gain_positions": "subject-sentence", "subject_rows": 8}

    def config(self, targets: TargetModules, settings: EditSettings) -> PeftConfig:
        from peft import IA3Config

        return IA3Config(
            target_modules=list(targets.modules), feedforward_modules=list(targets.feedforward), init_ia3_weights=True
        )


class IA3SingleStageEditor(IA3TwoStageEditor):
    """IA³ learn stage only: the ablation of unlearning first."""

    name = "ia3"
    stages = ("learn",)


class IA3AllLayersEditor(IA3TwoStageEditor):
    """Two-stage IA³ on the MLP and attention modules of every layer: the ablation of localization."""

    name = "ia3-all-layers"
    scope = "all-layers"


class LoraEditor(PeftStagedEditor):
    """A LoRA adapter (rank `lora_rank`) trained on the new answer, on the localized modules."""

    name = "lora"
    stages = ("learn",)
    defaults = {"lr": 2e-3}

    def config(self, targets: TargetModules, settings: EditSettings) -> PeftConfig:
        from peft import LoraConfig

        return LoraConfig(
            target_modules=list(targets.modules),
            r=settings.lora_rank,
            lora_alpha=2 * settings.lora_rank,
            lora_dropout=0.0,
            init_lora_weights=True,
        )
