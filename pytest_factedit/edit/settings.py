"""Editing settings: pure, validated data built from YAML `method:` and command-line options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ..cases import did_you_mean


class MethodError(ValueError):
    """A `method:` mapping is invalid: names the key, what was expected and what was found."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"key 'method.{key}': {message}")


@dataclass(frozen=True)
class EditSettings:
    """How a fact is localized and edited (YAML `method:` keys, `--factedit-*` options)."""

    name: str = "ia3-two-stage"
    localize: str = "trace"  # trace | attribution | none (every layer) | random (ablation)
    mlp_layers: int = 2  # top-k MLP layers (effect at the subject's last token)
    attention_layers: int = 2  # top-k attention layers (effect at the last token)
    noise_samples: int = 3
    noise_scale: float = 3.0  # x the embedding std
    lr: float = 3e-2
    unlearn_max_steps: int = 25
    learn_max_steps: int = 40
    unlearn_stop_prob: float = 0.05
    learn_stop_prob: float = 0.6
    kl_weight: float = 10.0
    guard_weight: float = 1.0
    guard_tokens: int = 3
    neighbours_per_prompt: int = 4
    kl_rows_per_step: int = 12
    lora_rank: int = 4
    batch_facts_per_step: int = 8  # batch mode: facts trained per step, rotating (0 = every fact each step)
    seed: int = 0
    target_modules: tuple[str, ...] | None = None
    feedforward_modules: tuple[str, ...] = ()

    def as_record(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


_FIELD_TYPES = {f.name: f.type for f in fields(EditSettings)}
_POSITIVE = {"lr", "unlearn_stop_prob", "learn_stop_prob", "noise_scale"}
LOCALIZE_MODES = ("trace", "attribution", "none", "random")


def _check(key: str, value: Any) -> Any:
    default = getattr(EditSettings(), key)
    if key in ("target_modules", "feedforward_modules"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise MethodError(key, f"expected a list of module names, found {value!r}")
        return tuple(value)
    if isinstance(default, bool) or isinstance(value, bool):
        raise MethodError(key, f"expected a number, found {value!r}")
    if isinstance(default, int):
        if not isinstance(value, int) or value < 0:
            raise MethodError(key, f"expected a non-negative integer, found {type(value).__name__} {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or value < 0 or (key in _POSITIVE and value <= 0):
            raise MethodError(key, f"expected a positive number, found {type(value).__name__} {value!r}")
        if key.endswith("_prob") and value > 1:
            raise MethodError(key, f"expected a probability between 0 and 1, found {value!r}")
        return float(value)
    if not isinstance(value, str) or not value:
        raise MethodError(key, f"expected a non-empty string, found {value!r}")
    if key == "localize" and value not in LOCALIZE_MODES:
        raise MethodError(key, f"expected one of {', '.join(LOCALIZE_MODES)}, found {value!r}"
                          + did_you_mean(value, LOCALIZE_MODES))
    return value


def settings_from(method: Mapping[str, Any], known_methods: tuple[str, ...],
                  overrides: Mapping[str, Any] | None = None,
                  method_defaults: Mapping[str, Mapping[str, Any]] | None = None) -> EditSettings:
    """Validate a YAML `method:` mapping (plus command-line overrides, which win) into EditSettings.

    `method_defaults[name]` replaces the general defaults for that method (e.g. full fine-tuning's
    learning rate); anything given in YAML or on the command line still wins.
    """
    merged = {**dict(method), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    chosen = merged.get("name", EditSettings.name)
    merged = {**dict((method_defaults or {}).get(chosen, {})), **merged}
    values = {}
    for key, value in merged.items():
        if key not in _FIELD_TYPES:
            raise MethodError(key, f"unknown setting; allowed: {', '.join(_FIELD_TYPES)}"
                              + did_you_mean(key, _FIELD_TYPES))
        values[key] = _check(key, value)
    name = values.get("name", EditSettings.name)
    if name not in known_methods:
        raise MethodError("name", f"unknown method {name!r}; known: {', '.join(known_methods)}"
                          + did_you_mean(name, known_methods))
    if values.get("feedforward_modules") and not values.get("target_modules"):
        raise MethodError("feedforward_modules", "given without target_modules")
    settings = EditSettings(**values)
    if settings.localize in ("trace", "attribution", "random") and settings.mlp_layers + settings.attention_layers == 0:
        raise MethodError("mlp_layers", "mlp_layers and attention_layers are both 0: nothing left to edit")
    if settings.localize in ("trace", "attribution") and settings.noise_samples == 0:
        raise MethodError("noise_samples", f"expected at least 1 noise sample for localize: {settings.localize}")
    return settings
