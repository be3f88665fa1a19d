"""bf16 autocast with the weights cast once, and when to use it (CUDA, or a CPU with AMX bf16 units)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@contextmanager
def bf16_autocast(model: PreTrainedModel, device_type: str) -> Iterator[None]:
    """bf16 autocast, with the decoder's linear weights cast once for the block instead of once per pass.

    The original weight Parameters are put back in `finally`, so the model is unchanged afterwards.
    """
    import torch

    swapped = []
    try:
        for module in model.base_model.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float32:
                swapped.append((module, module.weight))
                module.weight = torch.nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        for module, original in swapped:
            module.weight = original


def precision_context(model: PreTrainedModel, precision: str = "auto") -> tuple[AbstractContextManager[None], str]:
    """(context manager, label): bf16 on CUDA, and on CPUs with AMX bf16 units (5x faster); else the model dtype."""
    import torch

    param = next(model.parameters())
    if precision == "float32" or param.dtype == torch.bfloat16:
        return nullcontext(), str(param.dtype).replace("torch.", "")
    if precision not in ("auto", "bfloat16"):
        raise ValueError(f"precision must be auto, float32 or bfloat16, found {precision!r}")
    if param.device.type == "cuda":
        return bf16_autocast(model, "cuda"), "bfloat16 (autocast)"
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    if param.device.type == "cpu" and (precision == "bfloat16" or has_amx()):
        return bf16_autocast(model, "cpu"), "bfloat16 (autocast, CPU AMX)"
    return nullcontext(), str(param.dtype).replace("torch.", "")


def training_precision(
    model: PreTrainedModel, precision: str, cast_weights: bool = True
) -> AbstractContextManager[None]:
    """The context an edit trains in: the model's own dtype ("model"), or bf16 autocast ("bfloat16").

    `cast_weights=False` when the model's own weights are trained (they must stay the Parameters the
    optimizer holds); adapters on frozen weights can use the faster once-cast weights.
    """
    if precision != "bfloat16":
        return nullcontext()
    device_type = next(model.parameters()).device.type
    if cast_weights:
        return bf16_autocast(model, device_type)
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16)
