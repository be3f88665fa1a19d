"""bf16 autocast with the weights cast once, when to use it (CUDA, a CPU with AMX; to train, also AVX-512
BF16), and the way back to the loaded precision for a block inside it."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .introspect import weight_of

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# The weights `bf16_autocast` swapped for bf16 copies, innermost block last: (module, original Parameter).
_SWAPPED: ContextVar[tuple[tuple[torch.nn.Module, torch.Tensor], ...]] = ContextVar("swapped", default=())
# id(weight) -> (weakref to it, its version, {what: value}): what is derived from the LM head's weight (its
# bf16 copy, a greedy step's screen), kept across cases while the weight is unchanged.
_HEAD_DERIVED: dict[int, tuple[weakref.ref[torch.Tensor], int, dict[str, Any]]] = {}
# oneDNN's CPU ISA levels, lowest first, as its ONEDNN_MAX_CPU_ISA variable names them.
_ONEDNN_ISA_LEVELS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
)


@contextmanager
def bf16_autocast(model: PreTrainedModel, device_type: str) -> Iterator[None]:
    """bf16 autocast, with the decoder's linear weights cast once for the block instead of once per pass.

    The original weight Parameters are put back in `finally`, so the model is unchanged afterwards.
    """
    import torch

    swapped: list[tuple[torch.nn.Module, torch.Tensor]] = []
    token = None
    try:
        for module in model.base_model.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float32:
                swapped.append((module, module.weight))
                module.weight = torch.nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
        token = _SWAPPED.set(_SWAPPED.get() + tuple(swapped))
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        if token is not None:
            _SWAPPED.reset(token)
        for module, original in swapped:
            module.weight = original


@contextmanager
def loaded_precision(model: PreTrainedModel) -> Iterator[None]:
    """For the block, `model` computes as loaded, inside a training precision too: autocast off and the
    weights `bf16_autocast` cast put back; on exit the bf16 copies return. What the base model says (its
    decodes) is then the loaded model's, the same texts as in its own dtype, and a run's cache can serve them."""
    import torch

    device_type = next(model.parameters()).device.type
    swapped = _SWAPPED.get()
    if not swapped and not torch.is_autocast_enabled(device_type):
        yield
        return
    copies = [(module, module.weight) for module, _ in swapped]
    token = _SWAPPED.set(())
    try:
        for module, original in swapped:
            module.weight = original
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        for module, copy in copies:
            module.weight = copy
        _SWAPPED.reset(token)


def autocast_head_weight(model: PreTrainedModel) -> torch.Tensor | None:
    """Under a bf16 autocast, `bf16_head_weight` (the head's product then reads half the bytes and casts
    nothing); else None (the head's own weight)."""
    import torch

    if not torch.is_autocast_enabled(next(model.parameters()).device.type):
        return None
    return bf16_head_weight(model)


def bf16_head_weight(model: PreTrainedModel) -> torch.Tensor:
    """A bf16 copy of the LM head weight, made once per weight and version and reused across cases and
    steps (casting Gemma's 262k x 640 head copies 168M values); a head already in bf16 is its own copy."""
    import torch

    weight = weight_of(model.get_output_embeddings())
    if weight.dtype == torch.bfloat16:
        return weight
    copy: torch.Tensor = head_derived(weight, "bf16", lambda w: w.detach().to(torch.bfloat16))
    return copy


def head_derived(weight: torch.Tensor, what: str, make: Callable[[torch.Tensor], Any]) -> Any:
    """`make(weight)`, made once per head weight and version and reused across cases and steps; one weight
    at a time (another clears what was kept for the last, which a run no longer uses)."""
    entry = _HEAD_DERIVED.get(id(weight))
    if entry is None or entry[0]() is not weight or entry[1] != weight._version:
        _HEAD_DERIVED.clear()
        entry = _HEAD_DERIVED[id(weight)] = (weakref.ref(weight), weight._version, {})
    values = entry[2]
    if what not in values:
        values[what] = make(weight)
    return values[what]


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
    has_amx = _has_amx()
    if param.device.type == "cpu" and (precision == "bfloat16" or has_amx):
        return bf16_autocast(model, "cpu"), "bfloat16 (autocast, CPU AMX)" if has_amx else "bfloat16 (autocast, CPU)"
    return nullcontext(), str(param.dtype).replace("torch.", "")


def trains_in_bf16(model: PreTrainedModel, precision: str) -> bool:
    """Does `train_precision` put an edit of `model` under bf16 autocast? "bfloat16" always; "auto" where
    bf16 products are fast: a CPU with AMX, or with AVX-512 BF16 that torch's kernels use (held to AVX2
    kernels, a bf16 product took 2-4x its fp32 time and a whole edit over 40x), and an fp32 model on CUDA;
    "model" never."""
    import torch

    if precision != "auto":
        return precision == "bfloat16"
    param = next(model.parameters())
    if param.dtype != torch.float32:
        return False
    if param.device.type == "cuda":
        return True
    return param.device.type == "cpu" and cpu_has_bf16_units()


def cpu_has_bf16_units() -> bool:
    """AMX, or AVX-512 BF16 with torch's AVX-512 kernels in use (not held to AVX2 by ATEN_CPU_CAPABILITY),
    in either case left to oneDNN by its ISA cap."""
    return cpu_bf16_units() is not None


def cpu_bf16_units() -> str | None:
    """The units `cpu_has_bf16_units` finds, named for a benchmark's CPU line: "AMX", "AVX-512 BF16" or None."""
    import torch

    if _has_amx():
        return "AMX"
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    avx512_kernels = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return "AVX-512 BF16" if avx512_bf16 and avx512_kernels and _onednn_may_use("AVX512_CORE_BF16") else None


def _has_amx() -> bool:
    """Does this CPU have AMX tiles (torch's private probe; False on a torch without it) that oneDNN may use?"""
    import torch

    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()) and _onednn_may_use("AMX")


def _onednn_may_use(units: str) -> bool:
    """Does oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, else DNNL_MAX_CPU_ISA) leave it `units`: "AMX" or the level
    "AVX512_CORE_BF16"? The CPU's flags do not say: held below them (as when a run imitates an AVX2-only
    runner), oneDNN runs bf16 products on slower code, 6-9x the fp32 time on a 2-core Xeon with AMX."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").strip().upper()
    if cap not in _ONEDNN_ISA_LEVELS:  # ALL, DEFAULT, or a level newer than this list: no cap below the units
        return True
    if units == "AMX":
        return "AMX" in cap
    return _ONEDNN_ISA_LEVELS.index(cap) >= _ONEDNN_ISA_LEVELS.index(units)


def training_precision(
    model: PreTrainedModel, precision: str, cast_weights: bool = True
) -> AbstractContextManager[None]:
    """The context an edit trains in: the model's own dtype ("model"), or bf16 autocast ("bfloat16", and
    "auto" where `trains_in_bf16`).

    `cast_weights=False` when the model's own weights are trained (they must stay the Parameters the
    optimizer holds); adapters on frozen weights can use the faster once-cast weights.
    """
    if not trains_in_bf16(model, precision):
        return nullcontext()
    device_type = next(model.parameters()).device.type
    if cast_weights:
        return bf16_autocast(model, device_type)
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16)
