"""Editing settings: pure data from YAML `method:` and the command line, each field with its rule beside it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..errors import MethodError, did_you_mean, shown

TRACING_MODES = ("trace", "attribution")  # the modes that measure where the fact is (localize/localizer.py: METHODS)
LOCALIZE_MODES = (*TRACING_MODES, "none", "random")
TRAIN_PRECISIONS = ("model", "bfloat16")
GAIN_POSITIONS = ("every", "subject", "subject-sentence")
RuleKind = Literal["count", "positive", "non-negative", "probability", "text", "choice", "modules", "texts", "flag"]


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


@dataclass(frozen=True)
class EditSettings:
    """How a fact is localized and edited (YAML `method:` keys, `--factedit-*` options)."""

    name: str = setting("ia3-two-stage", "text", "editing method (see edit/__init__.py: EDITORS)")
    localize: str = setting(
        "trace", "choice", "trace | attribution | none (every layer) | random (ablation)", LOCALIZE_MODES
    )
    mlp_layers: int = setting(2, "count", "top-k MLP layers (effect at the subject's last token)")
    attention_layers: int = setting(2, "count", "top-k attention layers (effect at the last token)")
    noise_samples: int = setting(3, "count", "noise samples per prompt when tracing")
    noise_scale: float = setting(3.0, "positive", "noise std, x the embedding std")
    lr: float = setting(3e-2, "positive", "Adam learning rate")
    unlearn_max_steps: int = setting(25, "count", "step cap of the unlearn stage")
    learn_max_steps: int = setting(40, "count", "step cap of the learn stage")
    unlearn_stop_prob: float = setting(0.05, "probability", "unlearn stops once P(old) is below this on every row")
    learn_stop_prob: float = setting(0.6, "probability", "learn stops once P(new) reaches this on every row")
    kl_weight: float = setting(10.0, "non-negative", "weight of the KL retention term (0: off)")
    guard_weight: float = setting(1.0, "non-negative", "weight of the KL guard on the tokens after the answer")
    guard_tokens: int = setting(3, "count", "tokens after the answer the guard holds")
    neighbours_per_prompt: int = setting(4, "count", "derived neighbour prompts per training prompt (retention)")
    kl_rows_per_step: int = setting(12, "count", "retention rows per step, rotating")
    lora_rank: int = setting(4, "count", "LoRA rank (lora only)")
    batch_facts_per_step: int = setting(8, "count", "batch mode: facts trained per step, rotating (0 = every fact)")
    seed: int = setting(0, "count", "seed of localization noise and training")
    target_modules: tuple[str, ...] | None = setting(None, "modules", "put the adapter exactly here (no localization)")
    feedforward_modules: tuple[str, ...] = setting((), "modules", "target modules whose input IA³ scales")
    context_prefixes: tuple[str, ...] = setting(
        ("", "Here is a fact. "), "texts", "texts put before each training prompt, so the edit holds after text"
    )
    train_precision: str = setting("model", "choice", "model (its own dtype) | bfloat16 (autocast)", TRAIN_PRECISIONS)
    generated_prefixes: int = setting(0, "count", "prefixes the model writes itself, added to context_prefixes")
    append_eos: bool = setting(False, "flag", "train the answer followed by end-of-sequence (no guard tokens then)")
    gain_positions: str = setting(
        "every",
        "choice",
        "IA³ gains on every token, only on the subject's tokens, or on them and the rest of their sentence",
        GAIN_POSITIONS,
    )
    subject_rows: int = setting(
        0, "count", "retention rows: texts about the subject with the base model's continuation, held at every step"
    )
    preservation_weight: float = setting(
        0.0, "non-negative", "IA³ learn stage: weight of the output change on generated text (0: off)"
    )
    # the rank-one editors (rome, alphaedit): the value optimisation, and the key statistics
    value_steps: int = setting(25, "count", "rome/alphaedit: step cap of the value optimisation")
    value_lr: float = setting(1.0, "positive", "rome/alphaedit: Adam learning rate of the value")
    essence_weight: float = setting(0.0625, "non-negative", "rome/alphaedit: KL on '<subject> is a' (essence)")
    value_decay: float = setting(0.05, "non-negative", "rome/alphaedit: weight decay of the value change")
    clamp_norm: float = setting(4.0, "positive", "rome/alphaedit: value change at most this x the value's norm")
    key_positions_per_dim: int = setting(10, "count", "rome/alphaedit: generated token positions per key dimension")
    nullspace_threshold: float = setting(
        0.02, "probability", "alphaedit: the null space: key directions whose eigenvalue is below this x the largest"
    )
    update_ridge: float = setting(1.0, "non-negative", "alphaedit: ridge of the closed-form update")

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None or spec.default is not None:
                object.__setattr__(self, spec.name, spec.metadata["rule"].check(spec.name, value))
        if self.feedforward_modules and not self.target_modules:
            raise MethodError("feedforward_modules", "given without target_modules")
        if self.localize != "none" and self.mlp_layers + self.attention_layers == 0:
            raise MethodError("mlp_layers", "mlp_layers and attention_layers are both 0: nothing left to edit")
        if self.key_positions_per_dim == 0:
            raise MethodError("key_positions_per_dim", "expected at least 1 position per key dimension")
        if self.localize in TRACING_MODES and self.noise_samples == 0:
            raise MethodError("noise_samples", f"expected at least 1 noise sample for localize: {self.localize}")

    def as_record(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(EditSettings))


def settings_from(
    method: Mapping[str, Any],
    known_methods: tuple[str, ...],
    overrides: Mapping[str, Any] | None = None,
    method_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> EditSettings:
    """Validate a YAML `method:` mapping (plus command-line overrides, which win) into EditSettings.

    `method_defaults[name]` replaces the general defaults for that method (e.g. full fine-tuning's
    learning rate); anything given in YAML or on the command line still wins.
    """
    merged = {**dict(method), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    chosen = merged.get("name", EditSettings.name)
    merged = {**dict((method_defaults or {}).get(chosen, {})), **merged}
    for key in merged:
        if key not in SETTING_NAMES:
            raise MethodError(
                key, f"unknown setting; allowed: {', '.join(SETTING_NAMES)}" + did_you_mean(key, SETTING_NAMES)
            )
    settings = EditSettings(**merged)
    if settings.name not in known_methods:
        raise MethodError(
            "name",
            f"unknown method {settings.name!r}; known: {', '.join(known_methods)}"
            + did_you_mean(settings.name, known_methods),
        )
    return settings
