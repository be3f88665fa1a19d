"""Reading a decoder's layout from its modules: the layer list, the attention and MLP blocks, and the
projections an edit adapts, whatever the family calls them.

The rule is by shape, names only breaking ties: in each block, the *writer* is the last projection
whose output has the model's width (it adds the block's result to the residual stream), and the
*reader* the projection that takes the residual stream in, beside it (the value or fused QKV
projection in attention, the up or fused gate-up projection in the MLP). A mixture-of-experts block
is edited in its shared expert when it has one (every token passes through it), else in every expert
that is a module of its own; experts fused into one parameter tensor cannot be adapted by module, and
the error says which modules can.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UnsupportedArchitecture

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

ATTENTION_NAME = re.compile(r"attn|attention", re.IGNORECASE)
MLP_NAME = re.compile(r"mlp|ffn|feed_?forward|moe|^ff$", re.IGNORECASE)
VALUE_NAME = re.compile(r"(^|_)v(_|$)|value|qkv|query_key_value|c_attn|wqkv", re.IGNORECASE)
UP_NAME = re.compile(r"up|fc_?1|h_to_4h|c_fc|fc_in|w1|wi", re.IGNORECASE)
SHARED_NAME = re.compile(r"shared", re.IGNORECASE)


@dataclass(frozen=True)
class Projection:
    """A weight matrix applied to every token: nn.Linear or GPT-2's Conv1D (weight stored transposed)."""

    name: str  # relative to the decoder layer
    inputs: int
    outputs: int


@dataclass(frozen=True)
class Layout:
    """What introspection found in one decoder layer: names relative to the layer, and a note for MoE."""

    layers: str
    attention_block: str
    mlp_block: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    feedforward: tuple[str, ...]
    note: str


def projection_of(name: str, module: nn.Module) -> Projection | None:
    """`module` as a projection (in and out widths), or None when it is not a 2-D weight applied per token."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return Projection(name, module.in_features, module.out_features)
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
        return Projection(name, int(weight.shape[0]), int(weight.shape[1]))
    return None


def projections(module: nn.Module, prefix: str = "") -> list[Projection]:
    """Every projection under `module`, in registration order, named relative to it (with `prefix`)."""
    found = []
    for name, child in module.named_modules():
        projection = projection_of(f"{prefix}{name}", child)
        if projection is not None and name:
            found.append(projection)
    return found


def model_width(model: PreTrainedModel) -> int:
    """The residual stream's width, read from the input embedding (configs name it differently)."""
    return int(weight_of(model.get_input_embeddings()).shape[-1])


def weight_of(module: nn.Module) -> torch.Tensor:
    """`module.weight` as the tensor it is (torch types a module's attributes as tensor or module)."""
    import torch

    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a {type(weight).__name__}, not a tensor")
    return weight


def _layer_count(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    count = getattr(config, "num_hidden_layers", None)
    return int(count) if isinstance(count, int) else None


def find_layer_list(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    """The decoder layers: the ModuleList of identical blocks holding projections, as long as the config
    says (the one holding most parameters if several qualify)."""
    from torch import nn

    wanted = _layer_count(model)
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1 or not projections(module[0]):
            continue
        if wanted is not None and len(module) != wanted:
            continue
        candidates.append((sum(p.numel() for p in module.parameters()), name, module))
    if not candidates:
        raise unreadable(model, f"no list of {wanted or 'identical'} decoder layers holding projections")
    _, name, layers = max(candidates, key=lambda c: c[0])
    return name, layers


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _blocks(layer: nn.Module, width: int) -> tuple[str, str]:
    """The attention and MLP children of one decoder layer (by name, else by class name). The MLP block may
    hold no projection module (experts fused into parameter tensors), so any child with weights qualifies;
    a layer whose MLP projections are its own children (OPT's fc1, fc2) gives its writer as the block."""
    children = list(layer.named_children())
    with_projections = [(name, child) for name, child in children if projections(child)]
    with_matrices = [(name, child) for name, child in children if any(p.dim() >= 2 for p in child.parameters())]

    def pick(among: list[tuple[str, nn.Module]], pattern: re.Pattern[str], exclude: str = "") -> str:
        for text in (lambda n, c: n, lambda n, c: type(c).__name__):
            named = [n for n, c in among if pattern.search(text(n, c)) and n != exclude]
            if named:
                return named[0]
        return ""

    attention = pick(with_projections, ATTENTION_NAME)
    mlp = pick(with_matrices, MLP_NAME, exclude=attention)
    if not mlp:
        groups = _writer_groups(_own_projections(layer), width)
        mlp = groups[""][-1].name if "" in groups else ""
    return attention, mlp


def _own_projections(layer: nn.Module) -> list[Projection]:
    """The projections that are direct children of the layer."""
    return [p for p in projections(layer) if "." not in p.name]


def _block_projections(layer: nn.Module, block: str) -> list[Projection]:
    """The projections of a block, named relative to the layer; for a block that is itself a projection,
    the layer's own projections (OPT-style layers without an MLP module)."""
    module = layer.get_submodule(block)
    if projection_of(block, module) is not None:
        return _own_projections(layer)
    return projections(module, f"{block}.")


def _writer_groups(block: list[Projection], width: int) -> dict[str, list[Projection]]:
    """Projections that write the residual stream (out == width, in != 1), grouped by parent module."""
    groups: dict[str, list[Projection]] = {}
    for p in block:
        if p.outputs == width and p.inputs > 1:
            groups.setdefault(_parent(p.name), []).append(p)
    return groups


def _reader(siblings: list[Projection], writer: Projection, width: int, prefer: re.Pattern[str]) -> Projection | None:
    """The projection beside `writer` that reads the residual stream: named like `prefer` if one is, else
    the last registered (v after q and k; up after gate)."""
    readers = [p for p in siblings if p is not writer and p.inputs == width and p.outputs > 1]
    named = [p for p in readers if prefer.search(p.name.rsplit(".", 1)[-1])]
    candidates = named or readers
    return candidates[-1] if candidates else None


def attention_modules(block: list[Projection], width: int) -> tuple[str, ...]:
    """The value (or fused QKV) projection and the output projection of an attention block."""
    groups = _writer_groups(block, width)
    if not groups:
        return ()
    writers = next(iter(groups.values()))
    writer = writers[-1]
    siblings = [p for p in block if _parent(p.name) == _parent(writer.name)]
    reader = _reader(siblings, writer, width, VALUE_NAME)
    return tuple(p.name for p in (reader, writer) if p is not None)


def mlp_modules(block: list[Projection], width: int) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(adapted modules, those whose input is scaled, a note) for an MLP or mixture-of-experts block."""
    groups = _writer_groups(block, width)
    shared = [parent for parent in groups if SHARED_NAME.search(parent)]
    chosen = shared[:1] if shared else list(groups)
    note = ""
    if shared:
        note = f"mixture of experts: the shared expert ({shared[0]}) is edited, as every token passes through it"
    elif len(chosen) > 1:
        note = f"mixture of experts: every expert is edited ({len(chosen)} expert modules)"
    modules: list[str] = []
    feedforward: list[str] = []
    for parent in chosen:
        writer = groups[parent][-1]
        siblings = [p for p in block if _parent(p.name) == parent]
        reader = _reader(siblings, writer, width, UP_NAME)
        modules += [p.name for p in (reader, writer) if p is not None]
        feedforward.append(writer.name)
    return tuple(modules), tuple(feedforward), note


def read_layout(model: PreTrainedModel) -> Layout:
    """The layout of `model`'s decoder, or UnsupportedArchitecture naming what was missing."""
    name, layers = find_layer_list(model)
    layer = layers[len(layers) // 2]
    width = model_width(model)
    attention_block, mlp_block = _blocks(layer, width)
    if not attention_block or not mlp_block:
        missing = "attention block" if not attention_block else "MLP block"
        raise unreadable(model, f"no {missing} among the children of {name}.N")
    attention = attention_modules(_block_projections(layer, attention_block), width)
    mlp, feedforward, note = mlp_modules(_block_projections(layer, mlp_block), width)
    if not attention:
        raise unreadable(model, f"no projection in {name}.N.{attention_block} writes the model's width ({width})")
    if not mlp:
        note = (
            f"no projection module in {name}.N.{mlp_block} writes the model's width ({width}); its experts are "
            "probably fused parameter tensors, which adapters cannot target: the MLP is traced, not edited"
        )
    return Layout(name, attention_block, mlp_block, attention, mlp, feedforward, note)


def sample_modules(model: PreTrainedModel, limit: int = 6) -> list[str]:
    """Some of the model's own projection names, from a middle layer where there is one, for error hints."""
    names = [p.name for p in projections(model)]
    middle = [n for n in names if re.search(r"\.\d+\.", n)]
    pool = middle or names
    if not pool:
        return []
    numbers = sorted({int(m) for n in pool for m in re.findall(r"\.(\d+)\.", n)[:1]})
    if numbers:
        mid = numbers[len(numbers) // 2]
        pool = [n for n in pool if f".{mid}." in n] or pool
    return pool[:limit]


def unreadable(model: PreTrainedModel, why: str) -> UnsupportedArchitecture:
    """The error for a decoder introspection cannot read: its class, why, and the YAML that names modules
    by hand, with module names of this very model."""
    names = sample_modules(model)
    writers = [n for n in names if re.search(r"down|fc2|4h_to_h|c_proj|out|dense|w2|wo", n.rsplit(".", 1)[-1])]
    example = names[:2] or ["<module name>"]
    feedforward = writers[:1] or example[:1]
    return UnsupportedArchitecture(
        f"cannot read the layout of {type(model).__name__} (model_type {getattr(model.config, 'model_type', None)!r}): "
        f"{why}. Name the modules to adapt in the case or in _defaults.yaml (they are then used as they are, "
        "without localization):\n"
        f"method:\n  target_modules: [{', '.join(example)}]\n  feedforward_modules: [{feedforward[0]}]\n"
        f"Projection modules of this model include: {', '.join(names) or 'none found'}"
    )
