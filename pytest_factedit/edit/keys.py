"""Keys and values of a linear module: what the key-value editors (rome, alphaedit) read and write, and
the input statistics the preservation term weighs output changes by.

A key is the module's input at a token (for an MLP output projection, the MLP's hidden activation), its
value the module's output there. `key_second_moments` gives E[k kᵀ] over model-generated text, the
statistic ROME's update divides by and AlphaEdit's null space comes from, kept on disk per model and
module and measured for several modules in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model.generated import generated_folder, model_identity, sampled_rows
from ..model.introspect import weight_of
from ..model.lmhead import decoder

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

STATS_FORMAT = 1
ROW_TOKENS = 64  # tokens per generated row; rows = ceil(positions / ROW_TOKENS)
ROWS_PER_PASS = 32
_MOMENTS: dict[tuple[str, str, int], torch.Tensor] = {}


def key_width(module: torch.nn.Module) -> int:
    """d_k: the input width of a Linear, or of GPT-2's Conv1D (whose weight is stored [in, out])."""
    weight = weight_of(module)
    return int(weight.shape[0] if is_conv1d(module) else weight.shape[1])


def is_conv1d(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def weight_update(module: torch.nn.Module, delta_out_in: torch.Tensor) -> torch.Tensor:
    """A [d_out, d_k] change laid out as the module stores its weight."""
    return (delta_out_in.T if is_conv1d(module) else delta_out_in).to(weight_of(module).dtype)


@contextmanager
def watched(module: torch.nn.Module, store: dict[str, Any]) -> Iterator[None]:
    """For the block, `store["keys"]` and `store["values"]` hold the module's last input and output."""

    def hook(_module: Any, inputs: tuple[Any, ...], output: Any) -> None:
        store["keys"], store["values"] = inputs[0].detach(), output.detach()

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def key_second_moment(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, module_name: str, per_key_dim: int
) -> torch.Tensor:
    """E[k kᵀ] of `module_name`'s keys over `per_key_dim` x d_k generated token positions (float32)."""
    return key_second_moments(model, tokenizer, [module_name], per_key_dim)[module_name]


def key_second_moments(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, names: Sequence[str], per_key_dim: int
) -> dict[str, torch.Tensor]:
    """`key_second_moment` of several modules: from memory, from disk, or those missing measured in one pass."""

    found: dict[str, torch.Tensor] = {}
    missing: dict[str, int] = {}
    for name in names:
        module = model.get_submodule(name)
        positions = per_key_dim * key_width(module)
        index = (model_identity(model), name, positions)
        if index not in _MOMENTS:
            stored = _stored(generated_folder() / "stats" / f"{index[0]}-{name}-{positions}.pt", key_width(module))
            if stored is None:
                missing[name] = positions
                continue
            _MOMENTS[index] = stored
        found[name] = _MOMENTS[index]
    for name, moment in _measured_moments(model, tokenizer, missing).items():
        positions = missing[name]
        _store(generated_folder() / "stats" / f"{model_identity(model)}-{name}-{positions}.pt", moment)
        _MOMENTS[(model_identity(model), name, positions)] = found[name] = moment
    return {name: found[name].to(weight_of(model.get_submodule(name)).device) for name in names}


def _stored(path: Path, width: int) -> torch.Tensor | None:
    import torch

    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        moment = stored["moment"] if stored.get("format") == STATS_FORMAT else None
    except (OSError, RuntimeError, KeyError, ValueError, AttributeError):
        return None
    return moment if moment is not None and tuple(moment.shape) == (width, width) else None


class _Captured(Exception):
    """Every module a pass was run for has been seen: the layers above need not run."""


def _measured_moments(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, positions: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    """One pass over generated rows for every module at once; each counts its first positions/ROW_TOKENS rows."""
    import torch

    if not positions:
        return {}
    wanted = {name: math.ceil(p / ROW_TOKENS) for name, p in positions.items()}
    rows = sampled_rows(model, tokenizer, max(wanted.values()), ROW_TOKENS, seed=0)
    device = next(model.parameters()).device
    modules = {n: model.get_submodule(n) for n in wanted}  # a device-mapped model keeps each on its own device
    totals = {
        n: torch.zeros((key_width(m),) * 2, dtype=torch.float64, device=weight_of(m).device) for n, m in modules.items()
    }
    for first in range(0, len(rows), ROWS_PER_PASS):
        live = [n for n in wanted if first < wanted[n]]
        seen: dict[str, torch.Tensor] = {}
        with torch.no_grad(), _capturing(model, live, seen):
            ids = torch.tensor(rows[first : first + ROWS_PER_PASS], dtype=torch.long, device=device)
            try:
                decoder(model)(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            except _Captured:
                pass
        for name in live:
            keys = by_row(seen[name], len(ids))[: wanted[name] - first].reshape(-1, seen[name].shape[-1]).double()
            totals[name] += keys.T @ keys
    return {n: (totals[n] / (wanted[n] * ROW_TOKENS)).float().cpu() for n in wanted}


@contextmanager
def _capturing(model: PreTrainedModel, names: Sequence[str], seen: dict[str, torch.Tensor]) -> Iterator[None]:
    """For the block, each named module's input goes into `seen`; once all are in, the pass stops."""

    def hook_for(name: str) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            seen[name] = args[0].detach()
            if len(seen) == len(names):
                raise _Captured

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _store(path: Path, moment: torch.Tensor) -> None:
    import os
    import tempfile

    import torch

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError:
        return  # a read-only cache measures again next time
    try:
        os.close(fd)
        torch.save({"format": STATS_FORMAT, "moment": moment}, tmp)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def keys_and_values(
    model: PreTrainedModel,
    module: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    positions: Sequence[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's key and value at one position of each row (rows run left-padded in one pass)."""
    import torch

    from ..model.decoding import left_padded

    ids, mask, pos = left_padded([tuple(r) for r in rows], pad_id, weight_of(module).device)
    store: dict[str, Any] = {}
    with torch.no_grad(), watched(module, store):
        decoder(model)(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    width = ids.shape[1]
    at = torch.tensor([width - len(r) + p for r, p in zip(rows, positions)], device=ids.device)
    picked = torch.arange(len(rows), device=ids.device)
    keys, values = by_row(store["keys"], len(rows)), by_row(store["values"], len(rows))
    return keys[picked, at].float(), values[picked, at].float()


def by_row(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """A module's input or output as [rows, tokens, d]: a module that sees the batch's tokens as one list
    [rows * tokens, d] (a mixture-of-experts block's shared expert) gets them back in rows (a view)."""
    return tensor.view(rows, -1, tensor.shape[-1]) if tensor.dim() == 2 else tensor
