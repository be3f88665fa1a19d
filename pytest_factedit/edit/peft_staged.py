"""Editors that train peft adapters stage by stage (unlearn, then learn) on the target modules only."""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..targets import TargetModules
from .base import AppliedEdit, EditRequest
from .objectives import build_objectives
from .settings import EditSettings
from .training import train_stage


def _stage_params(peft_model: Any, adapter: str) -> list[Any]:
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

    name = ""
    scope = "localized"  # the runner gives localized targets
    stages: tuple[str, ...] = ("unlearn", "learn")

    def config(self, targets: TargetModules, settings: EditSettings) -> Any:
        raise NotImplementedError

    def apply(self, model: Any, tokenizer: Any, request: EditRequest | Sequence[EditRequest],
              targets: TargetModules, settings: EditSettings) -> AppliedEdit:
        import torch
        from peft import get_peft_model

        torch.manual_seed(settings.seed)
        started = time.perf_counter()
        goals = build_objectives(model, tokenizer, request, settings)
        plan = {"unlearn": (goals.unlearn_rows, goals.unlearn_goal, settings.unlearn_max_steps),
                "learn": (goals.learn_rows, goals.learn_goal, settings.learn_max_steps)}
        applied: AppliedEdit | None = None
        try:
            for index, stage in enumerate(self.stages):
                if applied is None:
                    peft_model = get_peft_model(model, self.config(targets, settings), adapter_name=stage)
                    applied = AppliedEdit(method=self.name, peft_model=peft_model, targets=targets, settings=settings)
                else:
                    applied.peft_model.add_adapter(stage, self.config(targets, settings))
                applied.peft_model.base_model.set_adapter(list(self.stages[:index + 1]))
                params = _stage_params(applied.peft_model, stage)
                rows, goal, max_steps = plan[stage]
                applied.stages.append(train_stage(stage, applied.peft_model.get_base_model(), params, rows, goal,
                                                  max_steps, goals.kl_rows, goals.kl_reference, settings,
                                                  goals.pad_id, fact_sizes=goals.fact_sizes))
                applied.trainable_parameters += sum(p.numel() for p in params)
                for param in params:
                    param.requires_grad_(False)
                applied.peft_model.eval()
        except BaseException:
            if applied is not None:
                applied.remove()
            raise
        applied.seconds = time.perf_counter() - started
        return applied


class IA3TwoStageEditor(PeftStagedEditor):
    """The default: IA³ `unlearn` (push the old answer down), then IA³ `learn` (the new one) on top."""

    name = "ia3-two-stage"

    def config(self, targets: TargetModules, settings: EditSettings) -> Any:
        from peft import IA3Config

        return IA3Config(target_modules=list(targets.modules), feedforward_modules=list(targets.feedforward),
                         init_ia3_weights=True)


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

    def config(self, targets: TargetModules, settings: EditSettings) -> Any:
        from peft import LoraConfig

        return LoraConfig(target_modules=list(targets.modules), r=settings.lora_rank,
                          lora_alpha=2 * settings.lora_rank, lora_dropout=0.0, init_lora_weights=True)
