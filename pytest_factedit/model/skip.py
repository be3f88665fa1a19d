"""Running a decoder from layer k on hidden states computed before: the layers below are bypassed for a block.

An edit's adapters sit in a few layers; below the lowest one, every training step would compute the same
hidden states again. `capture_entering` records them once, and `entering_at` makes the layers below
return them instead of computing (restored in `finally`). Localization goes further and lets a decoder
layer compute only the first rows of a pass (localize/hooks.py); a forward hook on the model is safe
there only when it says so (`first_rows_safe`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .arch import arch_modules
from .introspect import unreadable

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

HookT = TypeVar("HookT", bound=Callable[..., Any])
FIRST_ROWS_SAFE = "_factedit_first_rows_safe"


def first_rows_safe(hook: HookT) -> HookT:
    """Mark a forward (pre-)hook as correct when the module it is on computes only the first rows of a
    decoder pass (a hook on a decoder layer's parts, or on the decoder itself, which sees every row)."""
    setattr(hook, FIRST_ROWS_SAFE, True)
    return hook


def hooks_allow_first_rows(model: torch.nn.Module) -> bool:
    """Is every forward hook on `model` marked `first_rows_safe` (none at all: yes)? A hook that is not may
    keep state for a whole pass that a layer's first rows would not match."""
    return all(
        getattr(hook, FIRST_ROWS_SAFE, False)
        for module in model.modules()
        for hooks in (module._forward_hooks, module._forward_pre_hooks)
        for hook in hooks.values()
    )


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The decoder layer list (raises UnsupportedArchitecture for a family without a module table)."""
    import torch

    name = arch_modules(model).layers
    layers = model.get_submodule(name)
    if not isinstance(layers, torch.nn.ModuleList):  # the table and introspection both name one
        raise unreadable(model, f"{name} is a {type(layers).__name__}, not a list of decoder layers")
    return layers


def _stub(replacement: torch.Tensor | None, extras: int) -> Callable[..., Any]:
    """A layer forward that computes nothing: it passes its input on, or returns `replacement`."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        hidden = replacement if replacement is not None else (args[0] if args else kwargs["hidden_states"])
        return (hidden,) + (None,) * extras if extras >= 0 else hidden

    return forward


@contextmanager
def forwards_replaced(replaced: Iterable[tuple[torch.nn.Module, Callable[..., Any]]]) -> Iterator[None]:
    """For the block, each module computes with the forward given; in `finally`, a forward set on the
    instance before (accelerate's device hooks wrap it so) comes back, else the class's."""
    patched: list[tuple[torch.nn.Module, Any]] = []
    try:
        for module, forward in replaced:
            patched.append((module, module.__dict__.get("forward")))
            module.forward = forward  # an instance attribute shadows the class's forward
        yield
    finally:
        for module, before in reversed(patched):
            if before is None:
                del module.forward
            else:
                module.forward = before


def entering_at(
    model: PreTrainedModel, layer: int, hidden: torch.Tensor, extras: int = -1
) -> AbstractContextManager[None]:
    """For the block, the model's forward enters decoder layer `layer` with `hidden` [rows, width, d]:
    layers below it return it unchanged (`extras` >= 0: as a tuple with that many Nones, as older
    transformers layers return)."""
    layers = decoder_layers(model)
    return forwards_replaced((layers[i], _stub(hidden if i == layer - 1 else None, extras)) for i in range(layer))


def layers_bypassed(model: PreTrainedModel, extras: int = -1) -> AbstractContextManager[None]:
    """For the block, every decoder layer passes its input on and computes nothing (`extras` as for
    `entering_at`): a pass then costs its embeddings, while the hooks on the decoder itself still see its
    ids, and the state they keep about them with the cache (model/kv.py: row_state)."""
    return forwards_replaced((layer, _stub(None, extras)) for layer in decoder_layers(model))


@contextmanager
def capture_entering(model: PreTrainedModel, layer: int, store: dict[str, Any]) -> Iterator[None]:
    """For the block, record in `store["hidden"]` the hidden states entering decoder layer `layer` (>= 1),
    and in `store["extras"]` how the layer below returns them (-1: a tensor; n: a tuple with n Nones;
    None: a tuple holding more, which `entering_at` cannot stand in for)."""

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, tuple):
            store["hidden"] = output[0].detach()
            store["extras"] = len(output) - 1 if all(x is None for x in output[1:]) else None
        else:
            store["hidden"], store["extras"] = output.detach(), -1

    handle = decoder_layers(model)[layer - 1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
