"""The Editor interface: what an editor is given, and the applied edit it hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..targets import TargetModules
from .settings import EditSettings


@dataclass(frozen=True)
class EditRequest:
    """What to change: training prompts and answers, retention anchors, and the held-out texts to avoid."""

    subject: str
    prompts: tuple[str, ...]
    old: tuple[str, ...]
    new: tuple[str, ...]
    anchors: tuple[str, ...] = ()
    held_out: tuple[str, ...] = ()
    chat: bool = False


@dataclass
class StageReport:
    """One training stage: steps taken, seconds, whether its goal was reached early, loss per step."""

    name: str
    steps: int
    seconds: float
    reached_goal: bool
    losses: list[float]

    def as_record(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "seconds": round(self.seconds, 3),
                "reached_goal": self.reached_goal, "final_loss": self.losses[-1] if self.losses else None}


@dataclass
class AppliedEdit:
    """Adapters live on the model until `remove()`, which restores the base modules untouched."""

    method: str
    peft_model: Any
    targets: TargetModules
    settings: EditSettings
    stages: list[StageReport] = field(default_factory=list)
    trainable_parameters: int = 0
    seconds: float = 0.0
    removed: bool = False

    def disabled(self) -> Any:
        """Context manager: run the base model with the adapters switched off."""
        return self.peft_model.disable_adapter()

    def remove(self) -> Any:
        """Unload every adapter without merging; returns the base model."""
        if self.removed:
            return self.peft_model.base_model.model
        self.removed = True
        return self.peft_model.unload()


class Editor(Protocol):
    """An editing method: applies an edit to `model` in place and returns the handle that removes it."""

    name: str

    def apply(self, model: Any, tokenizer: Any, request: EditRequest, targets: TargetModules,
              settings: EditSettings) -> AppliedEdit: ...
