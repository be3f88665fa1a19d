"""Where a model family keeps its decoder layers, MLP and attention modules: read from the model by
introspection (`introspect.py`), or taken from the override table below for the families listed there."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    source: str = "table"  # "table" (ARCHITECTURES) or "introspection"
    note: str = ""  # what was chosen and why, where there was a choice (mixture of experts)

    def describe(self) -> str:
        """One line for reports and heatmap headers: where the layers are and what an edit adapts."""
        mlp = ", ".join(self.mlp) or f"none ({self.mlp_block} traced only)"
        text = f"{self.layers}.N ({self.source}): MLP {mlp}; attention {', '.join(self.attention)}"
        return f"{text}; {self.note}" if self.note else text


_LLAMA_LIKE = ArchModules(
    "model.layers", ("mlp.up_proj", "mlp.down_proj"), ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.down_proj",)
)
# Overrides: families whose layout is pinned here rather than read. Introspection gives the same answer for
# every entry (tests/test_model_families.py checks it); an entry is for a family it would read wrongly.
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
_READ: weakref.WeakKeyDictionary[PreTrainedModel, ArchModules] = weakref.WeakKeyDictionary()


def arch_modules(model: PreTrainedModel) -> ArchModules:
    """The override table's entry for the model's config.model_type, else its layout read by introspection
    (raises UnsupportedArchitecture, with module names of this model, when it cannot be read)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    if model not in _READ:
        from .introspect import read_layout

        layout = read_layout(model)
        _READ[model] = ArchModules(
            layout.layers,
            layout.mlp,
            layout.attention,
            layout.feedforward,
            mlp_block=layout.mlp_block,
            attention_block=layout.attention_block,
            source="introspection",
            note=layout.note,
        )
    return _READ[model]


def num_layers(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)
