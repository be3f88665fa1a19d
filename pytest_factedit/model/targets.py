"""Where an edit may go: layer choices turned into the module names an adapter targets."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UnsupportedArchitecture
from .arch import arch_modules, num_layers

# how localization measures which layers carry a fact (localize/ runs them; edit/ settings choose one)
TRACING_MODES = ("trace", "attribution")

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class TargetModules:
    """Full module names for IA³ (peft `target_modules`) and the feed-forward subset; how they were chosen."""

    modules: tuple[str, ...]
    feedforward: tuple[str, ...]
    rule: str
    layers: tuple[int, ...] = ()
    all_weights: bool = False  # the editor changes every weight (full fine-tuning), not named modules

    @property
    def touched(self) -> tuple[str, ...] | None:
        """The modules whose weights an edit may change; None = every weight."""
        return None if self.all_weights else self.modules


def layer_targets(
    model: PreTrainedModel, mlp_layers: Sequence[int], attention_layers: Sequence[int], rule: str
) -> TargetModules:
    """IA³ targets on the MLP modules of `mlp_layers` and the attention modules of `attention_layers`."""
    arch = arch_modules(model)
    if mlp_layers and not arch.mlp:  # experts fused into parameter tensors: nothing in the MLP to adapt by module
        attention_layers = sorted(set(attention_layers) | set(mlp_layers))
        rule = f"{rule}; the attention of the MLP layers instead ({arch.note})"
        mlp_layers = []
    modules = [f"{arch.layers}.{i}.{m}" for i in sorted(mlp_layers) for m in arch.mlp]
    modules += [f"{arch.layers}.{i}.{m}" for i in sorted(attention_layers) for m in arch.attention]
    feedforward = tuple(f"{arch.layers}.{i}.{m}" for i in sorted(mlp_layers) for m in arch.feedforward)
    layers = tuple(sorted(set(mlp_layers) | set(attention_layers)))
    return TargetModules(tuple(modules), feedforward, rule, layers)


def all_layer_targets(model: PreTrainedModel) -> TargetModules:
    """No localization: the MLP and attention modules of every layer (the ablation baseline)."""
    layers = range(num_layers(model))
    return layer_targets(model, layers, layers, "no localization: MLP and attention of every layer")


def random_layer_targets(model: PreTrainedModel, mlp_count: int, attention_count: int, seed: int) -> TargetModules:
    """Randomly chosen layers, as many as localization would choose (the ablation's control arm)."""
    rng = random.Random(seed)
    layers = range(num_layers(model))
    mlp = sorted(rng.sample(layers, min(mlp_count, len(layers))))
    attention = sorted(rng.sample(layers, min(attention_count, len(layers))))
    return layer_targets(
        model, mlp, attention, f"random (seed {seed}): MLP of layers {mlp}, attention of layers {attention}"
    )


def all_weight_targets(model: PreTrainedModel) -> TargetModules:
    """Every weight of the model (full fine-tuning): restoration is checked over all of them."""
    return TargetModules((), (), "every weight (full fine-tuning)", tuple(range(num_layers(model))), all_weights=True)


def explicit_targets(model: PreTrainedModel, modules: Sequence[str], feedforward: Sequence[str]) -> TargetModules:
    """Targets named by the user (YAML `method.target_modules`); each must exist in the model."""
    names = {name for name, _ in model.named_modules()}
    missing = [m for m in list(modules) + list(feedforward) if m not in names]
    if missing:
        raise UnsupportedArchitecture(f"names modules the model does not have: {missing}", key="method.target_modules")
    extra = [m for m in feedforward if m not in modules]
    if extra:
        raise UnsupportedArchitecture(f"must be a subset of target_modules: {extra}", key="method.feedforward_modules")
    return TargetModules(tuple(modules), tuple(feedforward), "named in YAML (method.target_modules)")


def merged_targets(targets: Sequence[TargetModules]) -> TargetModules:
    """One set of modules covering every case's targets (the batch adapter's `target_modules`)."""
    modules = tuple(dict.fromkeys(name for t in targets for name in t.modules))
    feedforward = tuple(dict.fromkeys(name for t in targets for name in t.feedforward))
    layers = tuple(sorted({layer for t in targets for layer in t.layers}))
    rules = list(dict.fromkeys(t.rule for t in targets))
    rule = rules[0] if len(rules) == 1 else f"union over {len(targets)} cases of: " + "; ".join(rules)
    return TargetModules(modules, feedforward, rule, layers, all_weights=any(t.all_weights for t in targets))


def lowest_layer(model: PreTrainedModel, targets: TargetModules) -> int:
    """The lowest decoder layer an edit of `targets` changes; 0 when that is not known (every weight,
    or a module outside the decoder layers)."""
    if targets.all_weights:
        return 0
    try:
        prefix = arch_modules(model).layers + "."
    except UnsupportedArchitecture:
        return 0
    found = []
    for name in targets.modules:
        index = name[len(prefix) :].split(".", 1)[0] if name.startswith(prefix) else ""
        if not index.isdigit():
            return 0
        found.append(int(index))
    return min(found, default=0)
