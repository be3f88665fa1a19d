"""Where an edit may go: per-architecture module names, and layer choices turned into IA³ target modules."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class ArchModules:
    """Module names (relative to one decoder layer) of an architecture family."""

    layers: str  # attribute path of the decoder layer list
    mlp: tuple[str, ...]  # MLP modules that get IA³ vectors
    attention: tuple[str, ...]  # attention modules that get IA³ vectors
    feedforward: tuple[str, ...]  # those whose *input* is scaled (peft's feedforward_modules)
    mlp_block: str = "mlp"  # the block whose output is the MLP's contribution (traced)
    attention_block: str = "self_attn"  # the block whose output is the attention's contribution (traced)


_LLAMA_LIKE = ArchModules("model.layers", ("mlp.up_proj", "mlp.down_proj"),
                          ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.down_proj",))
ARCHITECTURES: dict[str, ArchModules] = {
    **{name: _LLAMA_LIKE for name in ("gemma", "gemma2", "gemma3", "gemma3_text", "llama", "mistral",
                                      "qwen2", "qwen3")},
    "phi3": ArchModules("model.layers", ("mlp.gate_up_proj", "mlp.down_proj"),
                        ("self_attn.qkv_proj", "self_attn.o_proj"), ("mlp.down_proj",)),
    "gpt2": ArchModules("transformer.h", ("mlp.c_fc", "mlp.c_proj"), ("attn.c_attn", "attn.c_proj"),
                        ("mlp.c_proj",), attention_block="attn"),
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
    all_weights: bool = False  # the editor changes every weight (full fine-tuning), not named modules


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


def layer_targets(model: Any, mlp_layers: Sequence[int], attention_layers: Sequence[int], rule: str) -> TargetModules:
    """IA³ targets on the MLP modules of `mlp_layers` and the attention modules of `attention_layers`."""
    arch = arch_modules(model)
    modules = [f"{arch.layers}.{i}.{m}" for i in sorted(mlp_layers) for m in arch.mlp]
    modules += [f"{arch.layers}.{i}.{m}" for i in sorted(attention_layers) for m in arch.attention]
    feedforward = tuple(f"{arch.layers}.{i}.{m}" for i in sorted(mlp_layers) for m in arch.feedforward)
    layers = tuple(sorted(set(mlp_layers) | set(attention_layers)))
    return TargetModules(tuple(modules), feedforward, rule, layers)


def all_layer_targets(model: Any) -> TargetModules:
    """No localization: the MLP and attention modules of every layer (the ablation baseline)."""
    layers = range(num_layers(model))
    return layer_targets(model, layers, layers, "no localization: MLP and attention of every layer")


def random_layer_targets(model: Any, mlp_count: int, attention_count: int, seed: int) -> TargetModules:
    """Randomly chosen layers, as many as localization would choose (the ablation's control arm)."""
    rng = random.Random(seed)
    layers = range(num_layers(model))
    mlp = sorted(rng.sample(layers, min(mlp_count, len(layers))))
    attention = sorted(rng.sample(layers, min(attention_count, len(layers))))
    return layer_targets(model, mlp, attention,
                         f"random (seed {seed}): MLP of layers {mlp}, attention of layers {attention}")


def all_weight_targets(model: Any) -> TargetModules:
    """Every weight of the model (full fine-tuning): restoration is checked over all of them."""
    return TargetModules((), (), "every weight (full fine-tuning)", tuple(range(num_layers(model))), all_weights=True)


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
