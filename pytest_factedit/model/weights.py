"""Weight fingerprints and the guards that undo changes to weights: written once, used by every edit."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def weights_fingerprint(model: torch.nn.Module, modules: Sequence[str] | None = None) -> str:
    """sha256 over the names, shapes, dtypes and raw bytes of the parameters and buffers.

    `modules` restricts it to the tensors under those module names (what an edit may touch).
    """
    import torch

    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    prefixes = tuple(f"{m}." for m in modules) if modules is not None else None
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if prefixes is not None and not name.startswith(prefixes):
                continue
            raw = tensor.detach().contiguous().view(as_int[tensor.element_size()]).cpu().numpy()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype};".encode())
            digest.update(raw.data.cast("B"))  # .data: the array as the memoryview hashlib's stubs take
    return digest.hexdigest()


ROW_BYTES = 4096  # the whole-model checksum sums each tensor's bytes in rows of this size, as 64-bit integers


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor on its own device (copied only when its layout needs it)."""
    import torch

    flat = tensor.detach().reshape(-1)
    if flat.storage_offset() * flat.element_size() % 8:  # an int64 view needs 8-byte alignment
        flat = flat.clone()
    return flat.contiguous().view(torch.uint8)


def weights_checksum(model: torch.nn.Module) -> str:
    """An exact, cheap whole-model checksum: sha256 over each tensor's name, shape, dtype and row sums.

    Each tensor's bytes are read as 64-bit integers and summed (wrapping) in rows of `ROW_BYTES`; the
    row sums, in order, and the bytes after the last whole row are hashed. A change to any bit pattern
    changes its row's sum, whatever the dtype (a 1e-5 change to one fp32 weight, +16 to one bf16
    weight); values moved from one row to another change both rows. About the cost of a float sum and
    a twelfth of a sha256 of every byte (bench/restore_check.py), so it runs after every case.
    (Storage addresses are left out: merging an adapter for a timing, then putting the weights back,
    moves them.)
    """
    import torch

    words = ROW_BYTES // 8
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            raw = _raw_bytes(tensor)
            whole = raw.numel() // ROW_BYTES * ROW_BYTES
            rows = raw[:whole].view(torch.int64).view(-1, words).sum(dim=1)
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype};".encode())
            digest.update(rows.cpu().numpy().data)  # the same bytes as the array's own buffer
            digest.update(raw[whole:].cpu().numpy().data)
    return digest.hexdigest()


@dataclass
class RestoreCheck:
    """Set when a `verified_restore` block ends: were the weights bit-identical to those at its start?"""

    restored: bool | None = None


@contextmanager
def verified_restore(model: torch.nn.Module, modules: Sequence[str] | None = None) -> Iterator[RestoreCheck]:
    """Fingerprint the weights (of `modules`, or all) before the block and compare them after it, even on error.

    The block must undo its own changes; this guard only checks that it did.
    """
    check = RestoreCheck()
    before = weights_fingerprint(model, modules)
    try:
        yield check
    finally:
        check.restored = weights_fingerprint(model, modules) == before


def copy_into(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Copy `values` into `params` in place, without recording gradients."""
    import torch

    with torch.no_grad():
        for param, value in zip(params, values):
            param.copy_(value)


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of `params`, to be copied back with `copy_into`."""
    return [p.detach().clone() for p in params]


@contextmanager
def restored_weights(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Whatever the block does to `params`, their values at its start are copied back when it ends."""
    saved = snapshot(params)
    try:
        yield
    finally:
        copy_into(params, saved)
