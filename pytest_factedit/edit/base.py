"""The Editor interface: what an editor is given, and the applied edit it hands back."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ..model.targets import TargetModules
from ..model.weights import restored_weights
from .settings import EditSettings

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..model.text import Chat

Scope = Literal["localized", "all-layers", "all-weights"]


@dataclass(frozen=True)
class EditRequest:
    """What to change: training prompts and answers, retention anchors, and the held-out texts to avoid."""

    subject: str
    prompts: tuple[str, ...]
    old: tuple[str, ...]
    new: tuple[str, ...]
    anchors: tuple[str, ...] = ()
    held_out: tuple[str, ...] = ()
    chat: Chat = False  # False: plain text; True or a ChatFormat: the chat template
    aliases: tuple[str, ...] = ()  # other names of the subject (a gate keyed on the subject also reads them)


@dataclass
class StageReport:
    """One training stage: steps taken, seconds, whether its goal was reached early, loss per step."""

    name: str
    steps: int
    seconds: float
    reached_goal: bool
    losses: list[float]

    def as_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "reached_goal": self.reached_goal,
            "final_loss": self.losses[-1] if self.losses else None,
        }


@dataclass(kw_only=True)
class EditHandle:
    """What every editor hands back: how the edit was made, and how to switch it off, keep it or undo it.

    A handle is a context manager: leaving the block removes the edit, unless `merge()` kept it.
    Subclasses provide disabled() (a context with the base behaviour), save(), merge() and remove().
    """

    method: str
    targets: TargetModules
    settings: EditSettings
    stages: list[StageReport] = field(default_factory=list)
    trainable_parameters: int = 0
    seconds: float = 0.0
    removed: bool = False  # removed or merged: nothing left to undo

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self.removed:
            self.remove()

    def disabled(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def reaches(self, ids: Sequence[int]) -> bool:
        """Can the edit change what the model computes on a text of these token ids? Yes, unless the editor
        knows it cannot (a gated edit on a text without its subject): the edited model is then the base
        model there, and its answers are the base model's."""
        return True

    def reaches_row(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> bool:
        """Can the edit change a decode of `prompt` that goes on with any of `continuations` (the tokens it
        generated, the candidates it scores)? `reaches` of each, unless the editor knows more of how a decode
        starts (a relation router that turns the prompt down keeps the edit off for the whole row)."""
        return any(self.reaches(tuple(prompt) + tuple(c)) for c in continuations)

    @contextmanager
    def merged(self) -> Iterator[bool]:
        """The edit folded into the weights for the block, when it can be (True), to time a shipped, merged
        edit; the weights are put back bit for bit afterwards. False: this edit has nothing to merge."""
        yield False

    def save(self, out_dir: Path) -> list[str]:
        raise NotImplementedError

    def merge(self) -> PreTrainedModel:
        raise NotImplementedError

    def remove(self) -> PreTrainedModel:
        raise NotImplementedError


@dataclass(kw_only=True)
class AppliedEdit(EditHandle):
    """Adapters live on the model until `remove()`, which restores the base modules untouched."""

    peft_model: PeftModel
    model: PreTrainedModel  # the model the adapters wrap, kept as given: peft hands it back typed as a Module

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model with the adapters switched off for the block.

        peft marks the active adapters trainable again when it re-enables them; they are frozen back.
        """
        try:
            with self.peft_model.disable_adapter():
                yield
        finally:
            for param in self.peft_model.parameters():
                param.requires_grad_(False)

    @contextmanager
    def merged(self) -> Iterator[bool]:
        """Every stage merged into the targeted weights for the block; the weights are copied back after."""
        names = [stage.name for stage in self.stages]
        params = [p for n, p in self.peft_model.named_parameters() if ".base_layer." in n]
        with restored_weights(params), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unmerge result can be inaccurate")  # the copy-back is exact
            self.peft_model.merge_adapter(adapter_names=names)
            try:
                yield True
            finally:
                self.peft_model.unmerge_adapter()

    def save(self, out_dir: Path) -> list[str]:
        """Write each stage's adapter in peft's format to out_dir/<stage>/; returns the names in load order."""
        names = [stage.name for stage in self.stages]
        self.peft_model.save_pretrained(str(out_dir), selected_adapters=names)
        return names

    def merge(self) -> PreTrainedModel:
        """Fold every stage into the base weights (sequential editing); returns the base model."""
        self.removed = True
        self.peft_model.merge_and_unload(adapter_names=[stage.name for stage in self.stages])
        return self.model

    def remove(self) -> PreTrainedModel:
        """Unload every adapter without merging; returns the base model."""
        if not self.removed:
            self.removed = True
            self.peft_model.unload()
        return self.model


# model -> edits a sequential run keeps as hooks rather than folded weights, until the run releases them
_KEPT: weakref.WeakKeyDictionary[Any, list[EditHandle]] = weakref.WeakKeyDictionary()


def keep_until_released(model: PreTrainedModel, handle: EditHandle) -> None:
    """A merged edit that cannot live in the weights (a gated one) stays on the model until released."""
    _KEPT.setdefault(model, []).append(handle)


@contextmanager
def kept_edits_released(model: PreTrainedModel) -> Iterator[None]:
    """Edits kept during the block by `keep_until_released` are taken off the model when it ends."""
    try:
        yield
    finally:
        for handle in reversed(_KEPT.pop(model, [])):
            handle.removed = False
            handle.remove()


class Editor(Protocol):
    """An editing method: applies an edit to `model` in place and returns the handle that removes it.

    `request` is one fact, or several trained together into one edit (batch mode). `scope` says which
    targets the runner gives it. `settings_class` is the frozen dataclass of its `method:` keys, derived
    from the shared parts it reads (edit/settings.py), its own defaults written as the fields' defaults;
    `apply` is given an instance of it. A class may leave it out: it then reads TrainingLoopSettings.
    An editor may also say, in a `base_decodes(tokenizer, request, settings)` method, which greedy decodes
    of the base model its `apply` will ask for (`model.probe_cache.base_decode`): a run decodes them in one
    batch with the case's base probe (with every case's, in a run of several), and `apply` reads them back.
    """

    name: ClassVar[str]
    scope: ClassVar[Scope]

    @property
    def settings_class(self) -> type[EditSettings]: ...

    def apply(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request: EditRequest | Sequence[EditRequest],
        targets: TargetModules,
        settings: EditSettings,
    ) -> EditHandle: ...
