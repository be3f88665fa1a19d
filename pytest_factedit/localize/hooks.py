"""Forward hooks on Hugging Face module names, added in context managers that always remove them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, cast

from ..model.arch import ArchModules
from ..model.skip import forwards_replaced

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

Hook = Callable[..., Any]  # torch forward hook: (module, inputs, output) -> replacement output or None

SITES = ("hidden", "mlp", "attn")  # decoder-layer output (residual stream), MLP output, attention output


def site_module_name(arch: ArchModules, site: str, layer: int) -> str:
    """The module whose output is `site` at `layer`."""
    base = f"{arch.layers}.{layer}"
    if site == "hidden":
        return base
    if site == "mlp":
        return f"{base}.{arch.mlp_block}"
    if site == "attn":
        return f"{base}.{arch.attention_block}"
    raise ValueError(f"unknown site {site!r}; expected one of {SITES}")


def main_output(output: torch.Tensor | tuple[Any, ...]) -> torch.Tensor:
    """The hidden-state tensor of a module output (attention and some decoder layers return tuples)."""
    # a tuple's other items are attention weights, caches or None, so mypy reads its items as Any
    return cast("torch.Tensor", output[0]) if isinstance(output, tuple) else output


def with_main_output(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor,) + tuple(output[1:]) if isinstance(output, tuple) else tensor


@contextmanager
def forward_hooks(model: torch.nn.Module, hooks: Mapping[str, Hook]) -> Iterator[None]:
    """Register `{module name: forward hook}` for the duration of the block; removed even on error."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for name, hook in hooks.items():
            handles.append(modules[name].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def embedding_noise(
    model: PreTrainedModel, positions: Sequence[int], noise: torch.Tensor, make_leaf: bool = False
) -> Iterator[None]:
    """Add `noise` (rows x len(positions) x d) to the token embeddings at `positions` of every row."""
    import torch

    if not positions and not make_leaf:
        yield
        return
    index = torch.tensor(list(positions), dtype=torch.long, device=noise.device)

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        corrupted = output.detach().clone()
        corrupted[:, index] += noise.to(corrupted.dtype)
        return corrupted.requires_grad_(True) if make_leaf else corrupted

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def capture_hook(store: dict[Any, torch.Tensor], key: Any, keep_grad: bool = False) -> Hook:
    """A hook that stores the module's hidden-state output under `key` (and retains its gradient)."""

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        tensor = main_output(output)
        if keep_grad and tensor.requires_grad:
            tensor.retain_grad()
        store[key] = tensor

    return hook


def restore_hook(rows: torch.Tensor, positions: torch.Tensor, clean: torch.Tensor) -> Hook:
    """A hook that overwrites output[rows[i], positions[i]] with the clean activation at positions[i]."""

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        patched = main_output(output).clone()
        patched[rows, positions] = clean[positions].to(patched.dtype)
        return with_main_output(output, patched)

    return hook


def _first_rows(value: Any, rows: int, count: int) -> Any:
    """`value` cut to its first `count` batch rows: a tensor of 2 or more dimensions with `rows` rows
    (hidden states, masks, positions, rotary tables), also inside a tuple; anything else as it is."""
    import torch

    if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == rows:
        return value[:count]
    if isinstance(value, tuple):
        return tuple(_first_rows(item, rows, count) for item in value)
    return value


def _layer_on_first_rows(original: Hook, count: int, below: Callable[[], torch.Tensor], extras: int) -> Hook:
    """A decoder-layer forward that computes its first `count` rows; row r >= count takes below()[r - count].
    With no row to compute, the output is below(), as a tuple with `extras` Nones when extras >= 0."""
    import torch

    def forward(*args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        rows = hidden.shape[0]
        if count == rows:
            return original(*args, **kwargs)
        if count == 0:
            return (below(),) + (None,) * extras if extras >= 0 else below()
        output = original(
            *(_first_rows(a, rows, count) for a in args), **{k: _first_rows(v, rows, count) for k, v in kwargs.items()}
        )
        return with_main_output(output, torch.cat([main_output(output), below().to(hidden.dtype)]))

    return forward


def rows_from_their_layer(
    layers: Iterable[torch.nn.Module],
    counts: Sequence[int],
    below: Sequence[Callable[[], torch.Tensor]],
    extras: Sequence[int],
) -> AbstractContextManager[None]:
    """For the block, decoder layer i computes only the first counts[i] rows of its batch (the rows that
    differ, from that layer on, from a pass computed before); the other rows take below[i](), their
    output of layer i in that pass (gathered when the layer runs: one layer's copy at a time). `extras`:
    how each layer returns its output (see `output_extras`). The forwards are restored after the block."""
    return forwards_replaced(
        (layer, _layer_on_first_rows(layer.forward, count, rest, extra))
        for layer, count, rest, extra in zip(layers, counts, below, extras)
    )


def output_extras(output: Any) -> int | None:
    """How a decoder layer returns its hidden states: -1 as a tensor, n as a tuple with n Nones after
    them; None when the tuple holds more (a layer that cannot be stood in for)."""
    if not isinstance(output, tuple):
        return -1
    return len(output) - 1 if all(item is None for item in output[1:]) else None
