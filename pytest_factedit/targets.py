"""Where an edit may go: per-architecture module names and the layer-band rule used before localization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class ArchModules:
    """Module names (relative to one decoder layer) of an architecture family."""

    layers: str  # attribute path of the decoder layer list
    mlp: tuple[str, ...]  # MLP modules that get IA³ vectors
    attention: tuple[str, ...]  # attention modules that get IA³ vectors
    feedforward: tuple[str, ...]  # those whose *input* is scaled (peft's feedforward_modules)


_LLAMA_LIKE = ArchModules("model.layers", ("mlp.up_proj", "mlp.down_proj"),
                          ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.down_proj",))
ARCHITECTURES: dict[str, ArchModules] = {
    **{name: _LLAMA_LIKE for name in ("gemma", "gemma2", "gemma3", "gemma3_text", "llama", "mistral",
                                      "qwen2", "qwen3")},
    "phi3": ArchModules("model.layers", ("mlp.gate_up_proj", "mlp.down_proj"),
                        ("self_attn.qkv_proj", "self_attn.o_proj"), ("mlp.down_proj",)),
    "gpt2": ArchModules("transformer.h", ("mlp.c_fc", "mlp.c_proj"), ("attn.c_attn", "attn.c_proj"),
                        ("mlp.c_proj",)),
}


class UnsupportedArchitecture(Exception):
    """No module table for this model; the message shows how to name modules in YAML instead."""


@dataclass(frozen=True)
class TargetModules:
    """Full module names for IA³ (peft `target_modules`) and the feed-forward subset; how they were chosen."""

    modules: tuple[str, ...]
    feedforward: tuple[str, ...]
    rule: str
    layers: tuple[int, ...] = ()


def arch_modules(model: Any) -> ArchModules:
    """The module table entry for a Hugging Face model, by its config.model_type."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"no IA³ module table for {type(model).__name__} (model_type {model_type!r}); supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. Name the modules yourself in the case or _defaults.yaml:\n"
            "method:\n  target_modules: [model.layers.4.mlp.down_proj, ...]\n"
            "  feedforward_modules: [model.layers.4.mlp.down_proj]")
    return ARCHITECTURES[model_type]


def num_layers(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def middle_band(num_hidden_layers: int) -> tuple[int, ...]:
    """The layer band used until localization: layers from L//4 up to (not including) L//2, at least one.

    Factual associations are stored in early-middle MLP layers (ROME, causal tracing); this band
    covers them for every depth without looking at the fact.
    """
    start = num_hidden_layers // 4
    stop = max(start + 1, num_hidden_layers // 2)
    return tuple(range(start, stop))


def mlp_targets(model: Any, layers: Sequence[int], rule: str) -> TargetModules:
    """IA³ targets on the MLP modules of the given layers."""
    arch = arch_modules(model)
    modules = tuple(f"{arch.layers}.{i}.{m}" for i in layers for m in arch.mlp)
    feedforward = tuple(f"{arch.layers}.{i}.{m}" for i in layers for m in arch.feedforward if m in arch.mlp)
    return TargetModules(modules, feedforward, rule, tuple(layers))


def band_targets(model: Any) -> TargetModules:
    """The default targets before localization: MLP modules of the middle layer band."""
    layers = middle_band(num_layers(model))
    return mlp_targets(model, layers, f"middle band: MLP of layers {layers[0]}..{layers[-1]} (L//4 .. L//2-1)")


def explicit_targets(model: Any, modules: Sequence[str], feedforward: Sequence[str]) -> TargetModules:
    """Targets named by the user (YAML `method.target_modules`); each must exist in the model."""
    names = {name for name, _ in model.named_modules()}
    missing = [m for m in list(modules) + list(feedforward) if m not in names]
    if missing:
        raise UnsupportedArchitecture(f"method.target_modules names modules the model does not have: {missing}")
    extra = [m for m in feedforward if m not in modules]
    if extra:
        raise UnsupportedArchitecture(f"method.feedforward_modules must be a subset of target_modules: {extra}")
    return TargetModules(tuple(modules), tuple(feedforward), "named in YAML (method.target_modules)")
