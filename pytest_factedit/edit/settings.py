"""Editing settings: pure data from YAML `method:` and the command line, each field with its rule beside it.

The parts editors share live here: where to edit (every editor), the training prompts, the training loop,
the unlearn stage and the key statistics. Each editor's own settings class derives from the parts it
reads and sits beside the editor (`settings_class`); a key the chosen class does not declare is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

from ..errors import MethodError, did_you_mean, shown
from ..model.targets import TRACING_MODES
from .retention import RELATION_TEMPLATES
from .second_order import KL_FORMS

DEFAULT_METHOD = "ia3-two-stage"
LOCALIZE_MODES = (*TRACING_MODES, "none", "random")
TRAIN_PRECISIONS = ("model", "bfloat16", "auto")
RuleKind = Literal["count", "positive", "non-negative", "probability", "text", "choice", "modules", "texts", "flag"]
SettingsT = TypeVar("SettingsT", bound="EditSettings")
RULE_WORDS: dict[RuleKind, str] = {
    "count": "an integer >= 0",
    "positive": "a number > 0",
    "non-negative": "a number >= 0",
    "probability": "a probability in (0, 1]",
    "text": "a non-empty string",
    "choice": "one of its choices",
    "modules": "a list of module names",
    "texts": "a non-empty list of strings",
    "flag": "true or false",
}


@dataclass(frozen=True)
class Rule:
    """What a setting accepts; `check` returns the value in its field's type or raises MethodError."""

    kind: RuleKind
    choices: tuple[str, ...] = ()

    def check(self, key: str, value: Any) -> Any:
        if self.kind in ("modules", "texts"):
            return self._strings(key, value)
        if self.kind == "flag":
            return self._flag(key, value)
        if self.kind in ("text", "choice"):
            if not isinstance(value, str) or not value:
                raise MethodError(key, f"expected a non-empty string, found {shown(value)}")
            if self.kind == "choice" and value not in self.choices:
                raise MethodError(
                    key,
                    f"expected one of {', '.join(self.choices)}, found {shown(value)}"
                    + did_you_mean(value, self.choices),
                )
            return value
        return self._number(key, value)

    def accepts(self) -> str:
        """What the rule accepts, in words (the settings page)."""
        if self.kind == "choice":
            return " \\| ".join(f"`{choice}`" for choice in self.choices)
        return RULE_WORDS[self.kind]

    def _number(self, key: str, value: Any) -> Any:
        if isinstance(value, bool):
            raise MethodError(key, f"expected a number, found {shown(value)}")
        if self.kind == "count":
            if not isinstance(value, int) or value < 0:
                raise MethodError(key, f"expected a non-negative integer, found {shown(value)}")
            return value
        positive = self.kind in ("positive", "probability")
        wanted = "a positive number" if positive else "a non-negative number"
        if not isinstance(value, (int, float)):
            raise MethodError(key, f"expected {wanted}, found {shown(value)}")
        if not math.isfinite(value):
            raise MethodError(key, f"expected a finite number, found {shown(value)}")
        if value < 0 or (positive and value <= 0):
            raise MethodError(key, f"expected {wanted}, found {shown(value)}")
        if self.kind == "probability" and value > 1:
            raise MethodError(key, f"expected a probability between 0 and 1, found {shown(value)}")
        return float(value)

    @staticmethod
    def _flag(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise MethodError(key, f"expected true or false, found {shown(value)}")
        return value

    def _strings(self, key: str, value: Any) -> tuple[str, ...]:
        """modules: non-empty names; texts: any strings (a context prefix may be ''), at least one."""
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        if self.kind == "modules" and not (ok and all(value)):
            raise MethodError(key, f"expected a list of module names, found {shown(value)}")
        if self.kind == "texts" and not (ok and value):
            raise MethodError(key, f"expected a non-empty list of strings, found {shown(value)}")
        return tuple(value)


def setting(default: Any, kind: RuleKind, help: str = "", choices: tuple[str, ...] = ()) -> Any:
    """A settings field whose rule (and a line of help) lives next to it."""
    return field(default=default, metadata={"rule": Rule(kind, choices), "help": help})


def changed_default(part: type[EditSettings], key: str, default: Any) -> Any:
    """The setting `key` of `part` with an editor's own default; its rule and help stay `part`'s."""
    inherited = next(spec for spec in fields(part) if spec.name == key)
    return field(default=default, metadata=inherited.metadata)


@dataclass(frozen=True)
class EditSettings:
    """Where to edit, for every editor: its name and seed, and how the fact is localized or the modules named."""

    name: str = setting(DEFAULT_METHOD, "text", "the editor: a built-in one (below) or one a plugin registers")
    seed: int = setting(0, "count", "seed of localization noise and training")
    localize: str = setting(
        "trace", "choice", "trace | attribution | none (every layer) | random (ablation)", LOCALIZE_MODES
    )
    mlp_layers: int = setting(
        2, "count", "top-k MLP layers (effect at the subject's last token); with attention_layers, at least 1"
    )
    attention_layers: int = setting(2, "count", "top-k attention layers (effect at the last token)")
    noise_samples: int = setting(3, "count", "noise samples per prompt when tracing (at least 1 then)")
    noise_scale: float = setting(3.0, "positive", "noise std, x the embedding std")
    target_modules: tuple[str, ...] | None = setting(None, "modules", "put the adapter exactly here (no localization)")
    feedforward_modules: tuple[str, ...] = setting((), "modules", "target modules whose input IA³ scales")

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None or spec.default is not None:
                object.__setattr__(self, spec.name, spec.metadata["rule"].check(spec.name, value))
        if self.feedforward_modules and not self.target_modules:
            raise MethodError("feedforward_modules", "given without target_modules")
        if self.localize != "none" and self.mlp_layers + self.attention_layers == 0:
            raise MethodError("mlp_layers", "mlp_layers and attention_layers are both 0: nothing left to edit")
        if self.localize in TRACING_MODES and self.noise_samples == 0:
            raise MethodError("noise_samples", f"expected at least 1 noise sample for localize: {self.localize}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The `method:` keys this class declares."""
        return tuple(spec.name for spec in fields(cls))

    @classmethod
    def checked(cls, key: str, value: Any) -> Any:
        """`value` checked by the rule of this class's setting `key` (the method's name before its class is known)."""
        return next(spec for spec in fields(cls) if spec.name == key).metadata["rule"].check(key, value)

    @classmethod
    def of(cls: type[SettingsT], settings: EditSettings) -> SettingsT:
        """`settings` as this class, for the editor that reads it: another editor's settings are refused."""
        if not isinstance(settings, cls):
            raise MethodError(
                "name",
                f"an editor reading {cls.__name__} was given the settings of {settings.name!r} "
                f"({type(settings).__name__}): resolve them with that editor's name",
            )
        return settings

    @property
    def trained_prefixes(self) -> tuple[str, ...]:
        """The texts put before each trained prompt (the length check reads it for every editor): none here."""
        return ()

    @property
    def tokens_after_answer(self) -> int:
        """Tokens trained after the answer (the length check reads it for every editor): none here."""
        return 0

    def as_record(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PromptSettings(EditSettings):
    """The training prompts: each put behind the context prefixes, given and written by the model."""

    context_prefixes: tuple[str, ...] = setting(
        ("", "Here is a fact. "), "texts", "texts put before each training prompt, so the edit holds after text"
    )
    generated_prefixes: int = setting(0, "count", "prefixes the model writes itself, added to context_prefixes")

    @property
    def trained_prefixes(self) -> tuple[str, ...]:
        return self.context_prefixes


@dataclass(frozen=True)
class TrainingLoopSettings(PromptSettings):
    """The shared training loop of the gradient editors: the learn stage, its retention and guard terms."""

    lr: float = setting(3e-2, "positive", "Adam learning rate")
    learn_max_steps: int = setting(40, "count", "step cap of the learn stage")
    learn_stop_prob: float = setting(0.6, "probability", "learn stops once P(new) reaches this on every row")
    kl_weight: float = setting(10.0, "non-negative", "weight of the KL retention term (0: off)")
    kl_form: str = setting(
        "full",
        "choice",
        "full (each retention row's KL over the vocabulary, through the LM head, at every step) | second-order "
        "(its second-order expansion in the row's final hidden state, from the base distribution's top tokens: "
        "no head product for retention rows; full where the head is not one frozen linear map)",
        KL_FORMS,
    )
    guard_weight: float = setting(1.0, "non-negative", "weight of the KL guard on the tokens after the answer")
    guard_tokens: int = setting(3, "count", "tokens after the answer the guard holds")
    neighbours_per_prompt: int = setting(4, "count", "derived neighbour prompts per training prompt (retention)")
    kl_rows_per_step: int = setting(12, "count", "retention rows per step, rotating")
    batch_facts_per_step: int = setting(8, "count", "batch mode: facts trained per step, rotating (0 = every fact)")
    train_precision: str = setting(
        "model",
        "choice",
        "model (its own dtype) | bfloat16 (autocast; localization in bf16 too) | auto (bfloat16 where the CPU "
        "has bf16 units, AVX-512 BF16 or AMX, or on CUDA; else model)",
        TRAIN_PRECISIONS,
    )
    append_eos: bool = setting(False, "flag", "train the answer followed by end-of-sequence (no guard tokens then)")
    subject_rows: int = setting(
        0, "count", "retention rows: texts about the subject with the base model's continuation, held at every step"
    )
    relation_rows: int = setting(
        0,
        "count",
        f"retention rows: the subject asked for up to {len(RELATION_TEMPLATES)} common relations (CounterFact's "
        "wordings), the base model's answers held at every step; the one that answers the old fact is dropped",
    )

    @property
    def tokens_after_answer(self) -> int:
        return self.guard_tokens

    def stage_limits(self, stage: str) -> tuple[int, float]:
        """(step cap, stop probability) of a training stage: `learn` here (UnlearnStageSettings adds `unlearn`)."""
        if stage == "learn":
            return self.learn_max_steps, self.learn_stop_prob
        raise MethodError(
            "name",
            f"method {self.name} trains a {stage!r} stage, but its settings ({type(self).__name__}) declare none"
            + (": derive them from UnlearnStageSettings" if stage == "unlearn" else ""),
        )


@dataclass(frozen=True)
class UnlearnStageSettings(TrainingLoopSettings):
    """The unlearn stage before the learn stage (pushing the old answer down first)."""

    unlearn_max_steps: int = setting(25, "count", "step cap of the unlearn stage")
    unlearn_stop_prob: float = setting(0.05, "probability", "unlearn stops once P(old) is below this on every row")

    def stage_limits(self, stage: str) -> tuple[int, float]:
        if stage == "unlearn":
            return self.unlearn_max_steps, self.unlearn_stop_prob
        return super().stage_limits(stage)


@dataclass(frozen=True)
class KeyStatisticsSettings(EditSettings):
    """The key statistics: the second moment of a module's inputs over text the model writes itself."""

    key_positions_per_dim: int = setting(10, "count", "generated token positions per key dimension (at least 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.key_positions_per_dim == 0:
            raise MethodError("key_positions_per_dim", "expected at least 1 position per key dimension")


def unknown_key(key: str, method: str, declared: tuple[str, ...], readers: tuple[str, ...]) -> MethodError:
    """The error for a `method:` key the chosen editor does not declare, naming the editors that read it."""
    if readers:
        why = f"{key} is read by {', '.join(readers)}; {method} does not read it"
    else:
        why = f"unknown setting; {method} reads: {', '.join(declared)}"
    return MethodError(key, why + did_you_mean(key, declared))
