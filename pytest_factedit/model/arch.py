"""Architecture tables: where a model family keeps its decoder layers, MLP and attention modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UnsupportedArchitecture

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class ArchModules:
    """Module names (relative to one decoder layer) of an architecture family."""

    layers: str  # attribute path of the decoder layer list
    mlp: tuple[str, ...]  # MLP modules that get IA³ vectors
    attention: tuple[str, ...]  # attention modules that get IA³ vectors
    feedforward: tuple[str, ...]  # those whose *input* is scaled (peft's feedforward_modules)
    mlp_block: str = "mlp"  # the block whose output is the MLP's contribution (traced)
    attention_block: str = "self_attn"  # the block whose output is the attention's contribution (traced)


_LLAMA_LIKE = ArchModules(
    "model.layers", ("mlp.up_proj", "mlp.down_proj"), ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.down_proj",)
)
ARCHITECTURES: dict[str, ArchModules] = {
    **{
        name: _LLAMA_LIKE for name in ("gemma", "gemma2", "gemma3", "gemma3_text", "llama", "mistral", "qwen2", "qwen3")
    },
    "phi3": ArchModules(
        "model.layers",
        ("mlp.gate_up_proj", "mlp.down_proj"),
        ("self_attn.qkv_proj", "self_attn.o_proj"),
        ("mlp.down_proj",),
    ),
    "gpt2": ArchModules(
        "transformer.h",
        ("mlp.c_fc", "mlp.c_proj"),
        ("attn.c_attn", "attn.c_proj"),
        ("mlp.c_proj",),
        attention_block="attn",
    ),
}


def arch_modules(model: PreTrainedModel) -> ArchModules:
    """The module table entry for a Hugging Face model, by its config.model_type."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"no IA³ module table for {type(model).__name__} (model_type {model_type!r}); supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. Name the modules yourself in the case or _defaults.yaml:\n"
            "method:\n  target_modules: [model.layers.4.mlp.down_proj, ...]\n"
            "  feedforward_modules: [model.layers.4.mlp.down_proj]"
        )
    return ARCHITECTURES[model_type]


def num_layers(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)
