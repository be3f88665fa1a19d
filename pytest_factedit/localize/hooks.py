"""Forward hooks on Hugging Face module names, added in context managers that always remove them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from ..model.arch import ArchModules

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
