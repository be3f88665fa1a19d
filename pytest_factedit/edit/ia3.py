"""The IA³ editors, the default among them: per-channel gains on the targeted modules, one set per stage.

Their own `gain_positions` chooses where the gains act: on the subject's tokens (and the rest of their
sentence, or that rest alone) as gated hooks (`subject_gains.py`), or on every token as a peft IA³
adapter trained by `PeftStageTrainer`, where the preservation term may hold the modules' outputs on
generated text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..model.targets import TargetModules
from .base import EditHandle, EditRequest, Scope
from .gate import REACHES
from .objectives import ObjectiveDecodes
from .peft_staged import PeftStageTrainer, StagePenalty
from .preservation import preserved_outputs
from .settings import (
    EditSettings,
    KeyStatisticsSettings,
    TrainingLoopSettings,
    UnlearnStageSettings,
    changed_default,
    setting,
)
from .subject_gains import Gating, apply_subject_gains

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GAIN_POSITIONS = ("every", *REACHES)  # gains on every token need no gate


@dataclass(frozen=True)
class IA3Settings(TrainingLoopSettings, KeyStatisticsSettings):
    """ia3's settings: where the gains act, the subject's other facts held, and the preservation term."""

    # gains on the subject's tokens only: on 8 tuning facts the neighbours kept rose from 0.38 to 0.97
    # (docs/benchmarks.md, "the neighbour leak"); reaching on to the end of the subject's sentence, with the
    # subject's own other facts held (subject_rows), keeps those facts too (docs/benchmarks.md, "the
    # subject's other facts"); `gain_positions: every` is the peft IA³ adapter
    gain_positions: str = setting(
        "subject-sentence",
        "choice",
        "IA³ gains on every token, only on the subject's tokens, on them and the rest of their sentence, "
        "or on the rest of the sentence alone (after-subject: the subject's own states stay the base model's)",
        GAIN_POSITIONS,
    )
    subject_rows: int = changed_default(TrainingLoopSettings, "subject_rows", 8)
    # learning further reaches more rewordings (forget and paraphrases of the CounterFact facts: 0.957 and 0.750
    # at 0.6, 0.971 and 0.850 at 0.8), and the router keeps the subject's other facts it would move (docs/benchmarks.md)
    learn_stop_prob: float = changed_default(TrainingLoopSettings, "learn_stop_prob", 0.8)
    router_layer_from_end: int = setting(
        2,
        "count",
        "relation router of subject-gated gains (0: off; gain_positions: every has no gate): the edit acts on a "
        "text only where the base model's state at the text's last token, at the output of the decoder layer this "
        "many from the end (2: the second-to-last; the first where the model has fewer), is as close "
        "to the edit's prompts as the threshold",
    )
    # 0.014: the largest margin that keeps 0.90 of the same-subject benchmark's other facts; 0.013 fails a
    # shipped case whose rewordings speak of the subject in general (docs/benchmarks.md, "The relation router")
    router_margin: float = setting(
        0.014,
        "non-negative",
        "the router's threshold: the highest cosine similarity of the subject's general texts to the edit's "
        "prompts, less this",
    )
    preservation_weight: float = setting(
        0.0,
        "non-negative",
        "weight of the learn stage's penalty on how far the gains move the modules' outputs on generated text "
        "(gain_positions: every only; 0: off)",
    )

    def gating(self) -> Gating | None:
        """Where the gains act and their router; None for gains on every token (peft's IA³ adapter: no gate)."""
        if self.gain_positions == "every":
            return None
        return Gating(self.gain_positions, self.router_layer_from_end, self.router_margin)


@dataclass(frozen=True)
class IA3TwoStageSettings(IA3Settings, UnlearnStageSettings):
    """ia3-two-stage's settings: IA³'s, with the unlearn stage before the learn stage."""


def ia3_config(targets: TargetModules) -> PeftConfig:
    """peft's IA³ adapter on the targets: the feed-forward ones scaled at their input."""
    from peft import IA3Config

    return IA3Config(
        target_modules=list(targets.modules), feedforward_modules=list(targets.feedforward), init_ia3_weights=True
    )


@dataclass(frozen=True)
class GainPreservation:
    """The preservation term of peft IA³ gains: `weight` x how far the learn stage's gains move the adapted
    modules' outputs on text the model writes itself (`preservation.py`)."""

    weight: float
    positions_per_dim: int

    def measured(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: TargetModules
    ) -> Callable[[PeftModel], StagePenalty]:
        preserved = preserved_outputs(model, tokenizer, targets, self.positions_per_dim)

        def penalty_of(peft_model: PeftModel) -> StagePenalty:
            gains = {
                name.removeprefix("base_model.model.").split(".ia3_l.")[0]: param
                for name, param in peft_model.named_parameters()
                if param.requires_grad
            }
            return lambda: self.weight * preserved.penalty(gains)

        return penalty_of


class IA3TwoStageEditor(ObjectiveDecodes):
    """The default: IA³ `unlearn` (push the old answer down), then IA³ `learn` (the new one) on top."""

    name: ClassVar[str] = "ia3-two-stage"
    scope: ClassVar[Scope] = "localized"  # the runner gives localized targets
    stages: ClassVar[tuple[str, ...]] = ("unlearn", "learn")
    settings_class: ClassVar[type[IA3Settings]] = IA3TwoStageSettings

    def apply(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request: EditRequest | Sequence[EditRequest],
        targets: TargetModules,
        settings: EditSettings,
    ) -> EditHandle:
        own = self.settings_class.of(settings)
        gating = own.gating()
        if gating is not None:
            return apply_subject_gains(self.name, self.stages, gating, model, tokenizer, request, targets, own)
        weight = own.preservation_weight
        preservation = GainPreservation(weight, own.key_positions_per_dim) if weight else None
        trainer = PeftStageTrainer(self.name, self.stages, lambda: ia3_config(targets), preservation)
        return trainer.train(model, tokenizer, request, targets, own)


class IA3SingleStageEditor(IA3TwoStageEditor):
    """IA³ learn stage only: the ablation of unlearning first."""

    name = "ia3"
    stages = ("learn",)
    settings_class = IA3Settings


class IA3AllLayersEditor(IA3TwoStageEditor):
    """Two-stage IA³ on the MLP and attention modules of every layer: the ablation of localization."""

    name = "ia3-all-layers"
    scope = "all-layers"
