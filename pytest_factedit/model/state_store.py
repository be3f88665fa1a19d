"""The base model's hidden state at a text's last token, per decoder layer, computed once: in memory for a run
and, given a folder, on disk across runs.

A relation router (edit/router.py) reads this state for every text a subject gate opens on, in a pass of
its own with every edit off; but the base probe decoded the same texts before the edit (`states_recorded`
keeps their states as it goes), and a suite that runs on every push probes the same texts each time. Like
a decoded row (model/probe_cache.py), the state depends on the weights, the text's token ids and the
numerics, which name the file, and not on any edit. The text's token ids and the layer key each state.
A state stored from one batch can differ from the same text's state in another batch in the last bits
(the products' order): a verdict on a text that sits at its router's threshold may differ between a run
that reads it and one that computes it.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..infra.files import read_regular, write_atomic
from .decoding import Tokens
from .trace_store import identity_name

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

STATE_FORMAT = 1  # raise it when what a stored state means changes
STORE_BYTES = 64 * 2**20  # the states of a layer kept on disk; the newest are written
MEMORY_BYTES = 256 * 2**20  # those kept in memory for a run (a sequence's base pass: every fact's); oldest go first
STORE_LAYERS = 4  # layers kept; the one added to least recently goes first
TENSOR_NAME = re.compile(r"layer(\d{1,4})\|(states|ids|lengths)")


class LastTokenStates:
    """States of one model identity (`identity`: what a state depends on besides its text) of residual
    width `width`; with `folder`, read from and written to one safetensors file there."""

    def __init__(self, identity: Mapping[str, str], width: int, folder: Path | None = None) -> None:
        self.identity = {**identity, "states": str(STATE_FORMAT)}
        self.width = width
        self.path = folder / f"states-{identity_name(self.identity)}.safetensors" if folder is not None else None
        self._layers: dict[int, dict[Tokens, torch.Tensor]] = self._load() if self.path is not None else {}
        self._new = 0  # states added since the file was written

    def get(self, layer: int, ids: Tokens) -> torch.Tensor | None:
        """The state of the text `ids` at the output of decoder `layer`, if one is kept."""
        return self._layers.get(layer, {}).get(ids)

    def add(self, layer: int, found: Mapping[Tokens, torch.Tensor]) -> None:
        """Keep `found` (text ids -> state [width]), newest last; the oldest go past `MEMORY_BYTES`."""
        kept = self._layers[layer] = self._layers.pop(layer, {})  # the most recent layer last
        for ids, state in found.items():
            if state.shape != (self.width,):
                raise ValueError(f"a state of width {self.width} was expected, found shape {tuple(state.shape)}")
            kept.pop(ids, None)
            kept[ids] = state.detach().to("cpu", copy=True)  # not a view that holds a whole pass's states
            self._new += 1
        self._trim()

    def _trim(self) -> None:
        for layer in list(self._layers)[: max(len(self._layers) - STORE_LAYERS, 0)]:
            del self._layers[layer]
        for kept in self._layers.values():
            _trimmed(kept, MEMORY_BYTES)

    def save(self) -> None:
        """Write what was added since the last save to the file (merged with what another process wrote)."""
        if self.path is None or not self._new:
            return
        from filelock import FileLock

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock"):
                stored = self._load()
                self._layers = {layer: stored[layer] for layer in stored if layer not in self._layers} | {
                    layer: {**{k: v for k, v in stored.get(layer, {}).items() if k not in kept}, **kept}
                    for layer, kept in self._layers.items()
                }
                self._trim()
                write_atomic(self.path, self._serialized(STORE_BYTES))
        except OSError as exc:  # the run does not depend on the cache: it is computed again next time
            print(f"pytest-factedit: could not write the state cache {self.path} ({exc})", file=sys.stderr)
        self._new = 0

    def _serialized(self, most: int) -> bytes:
        """The newest states of each layer, up to `most` bytes a layer, as a safetensors file."""
        import torch
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        for layer, every in self._layers.items():
            kept = dict(every)
            _trimmed(kept, most)
            if kept:
                tensors[f"layer{layer}|states"] = torch.stack(list(kept.values())).contiguous()
                tensors[f"layer{layer}|ids"] = torch.tensor([t for ids in kept for t in ids], dtype=torch.long)
                tensors[f"layer{layer}|lengths"] = torch.tensor([len(ids) for ids in kept], dtype=torch.long)
        return save(tensors, metadata={"identity": json.dumps(self.identity, sort_keys=True)})

    def _load(self) -> dict[int, dict[Tokens, torch.Tensor]]:
        """The stored states; none when the file is missing, and none with a note when it cannot be used."""
        assert self.path is not None
        limit = STORE_LAYERS * STORE_BYTES * 2 + 2**20  # the layers' states, their texts' ids, the header
        try:
            raw, kind = read_regular(self.path, limit)
            if kind or len(raw) > limit:
                raise ValueError(kind or f"larger than {limit:,} bytes")
            return _parsed(raw, self.identity, self.width)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, RuntimeError, struct.error) as exc:
            note = f"pytest-factedit: not using the state cache {self.path} ({exc}); it is written anew"
            print(note, file=sys.stderr)
            return {}


def row_texts(ids: torch.Tensor, kwargs: Mapping[str, Any], rows: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """The token ids of each of `rows` of a pass (`ids` and the decoder's keyword arguments) that reads its
    text as a pass of that text alone would: left padding only, positions counted from 0 at its first real
    token. The others are left out: their states are not a text's own."""
    import torch

    mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
    texts: dict[int, tuple[int, ...]] = {}
    for row in rows:
        real = torch.ones(ids.shape[1], dtype=torch.bool)
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
            real = mask[row].cpu() != 0
        elif mask is not None:
            continue
        count = int(real.sum())
        if not count or bool(real[: ids.shape[1] - count].any()):  # padding inside or after the text
            continue
        if positions is not None and not (
            isinstance(positions, torch.Tensor)
            and positions.shape == ids.shape
            and torch.equal(positions[row, -count:].cpu(), torch.arange(count, dtype=positions.dtype))
        ):
            continue
        texts[row] = tuple(ids[row, -count:].tolist())
    return texts


@contextmanager
def states_recorded(model: PreTrainedModel, layers: Sequence[int], states: LastTokenStates | None) -> Iterator[None]:
    """For the block, each pass over `model` that starts its texts keeps in `states` the output of decoder
    `layers` at each text's last token (for the rows `row_texts` keys). The caller vouches that the model
    is the base model `states` are of, as loaded: it wraps the base model's own decodes."""
    from .kv import cache_keyword
    from .lmhead import decoder
    from .skip import decoder_layers

    if states is None or not layers:
        yield
        return
    current: dict[int, Tokens] = {}
    keyword = cache_keyword(decoder(model))

    def before(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        current.clear()
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get(keyword)
        continues = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        if ids is None or ids.dim() != 2 or continues:
            return
        current.update(row_texts(ids, kwargs, range(ids.shape[0])))

    def keep(layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            if current and hidden.dim() == 3 and hidden.shape[0] >= max(current) + 1:
                states.add(layer, {text: hidden[row, -1] for row, text in current.items()})

        return hook

    stack = decoder_layers(model)
    handles = [decoder(model).register_forward_pre_hook(before, with_kwargs=True)]
    handles += [stack[layer].register_forward_hook(keep(layer)) for layer in sorted(set(layers))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _trimmed(kept: dict[Tokens, torch.Tensor], most_bytes: int) -> None:
    """Drop the oldest states of a layer past `most_bytes`."""
    if not kept:
        return
    first = next(iter(kept.values()))
    most = max(most_bytes // (first.numel() * first.element_size()), 1)
    # only the oldest past the bound are listed: every decode of the base model adds, and most add nothing past it
    for ids in list(islice(kept, max(len(kept) - most, 0))):
        del kept[ids]


def _header_metadata(raw: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's JSON header."""
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size].decode("utf-8"))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _parsed(raw: bytes, identity: Mapping[str, str], width: int) -> dict[int, dict[Tokens, torch.Tensor]]:
    """The states of a store file; ValueError when it is not one this identity wrote, or its shapes disagree."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    if json.loads(_header_metadata(raw).get("identity", "null")) != dict(identity):
        raise ValueError("not a state store of this model and version")
    try:
        tensors = load(raw)
    except SafetensorError as exc:
        raise ValueError(f"not a safetensors file: {exc}") from exc
    parts: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = TENSOR_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"unexpected tensor {name!r}")
        parts.setdefault(int(match[1]), {})[match[2]] = tensor
    layers: dict[int, dict[Tokens, torch.Tensor]] = {}
    for layer, part in parts.items():
        states, ids, lengths = (part.get(k) for k in ("states", "ids", "lengths"))
        if states is None or ids is None or lengths is None:
            raise ValueError(f"layer {layer} lacks its states, ids or lengths")
        if states.dim() != 2 or states.shape[1] != width or lengths.shape != (states.shape[0],):
            raise ValueError(f"layer {layer}: expected states [rows, {width}] and one length per row")
        if ids.dim() != 1 or ids.dtype != torch.long or lengths.dtype != torch.long:
            raise ValueError(f"layer {layer}: ids and lengths are not integer vectors")
        if bool((lengths < 1).any()) or int(lengths.sum()) != ids.numel() or bool((ids < 0).any()):
            raise ValueError(f"layer {layer}: the lengths do not split the ids into texts")
        if not bool(torch.isfinite(states).all()):
            raise ValueError(f"layer {layer}: a state is not finite")
        texts = [tuple(t.tolist()) for t in ids.split(lengths.tolist())]
        layers[layer] = dict(zip(texts, states))
    return layers
