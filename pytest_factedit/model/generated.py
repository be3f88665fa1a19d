"""Text the model writes itself, kept on disk per model: short prefixes to train an edit behind, and token
rows whose MLP keys give the key statistics of the rank-one editors.

Sampled, not taken from a corpus, so nothing has to be downloaded and the text is what this model reads
as ordinary. Keyed by a fingerprint of the weights as first seen by this process (a sequential run's
later edits use the base model's text, which is what the preservation terms need).
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..infra.files import write_atomic
from .spec import cache_dir
from .weights import weights_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GENERATED_FORMAT = 2  # raise it when sampling changes what a stored file means
SAMPLE_TOP_K = 50
CHUNK_ROWS = 64  # rows sampled together, under one seed
PREFIX_TOKENS = 8
_IDENTITY: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def generated_folder() -> Path:
    return cache_dir() / "generated"


def model_identity(model: PreTrainedModel) -> str:
    """A fingerprint of every weight, taken the first time this process sees `model` (0.5 s for 1 GB)."""
    if model not in _IDENTITY:
        _IDENTITY[model] = weights_fingerprint(model)[:20]
    return _IDENTITY[model]


def sampled_rows(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: int, length: int, seed: int = 0
) -> list[list[int]]:
    """`rows` token rows of `length` tokens sampled (top-k) from the model after its start token.

    Rows come in chunks of CHUNK_ROWS, each sampled under its own seed, and are kept per model, length and
    seed: asking for more rows later samples only the chunks not stored yet, and the first rows are the
    same whatever the count asked.
    """
    path = generated_folder() / f"{model_identity(model)}-L{length}-seed{seed}.json"
    stored = _read(path, length)
    if len(stored) >= rows:
        return stored[:rows]
    found = list(stored)
    while len(found) < rows:
        found += _sample(model, tokenizer, CHUNK_ROWS, length, seed * 100_003 + len(found) // CHUNK_ROWS)
    try:
        write_atomic(path, json.dumps({"format": GENERATED_FORMAT, "rows": found}))
    except OSError:
        pass  # a read-only cache costs the sampling again next time, nothing else
    return found[:rows]


def _read(path: Path, length: int) -> list[list[int]]:
    """The stored rows (whole chunks of `length`-token rows), or none when the file is missing or damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    found = data.get("rows") if isinstance(data, dict) and data.get("format") == GENERATED_FORMAT else None
    if not isinstance(found, list) or len(found) % CHUNK_ROWS:
        return []
    if not all(isinstance(r, list) and len(r) == length and all(type(t) is int for t in r) for r in found):
        return []
    return found


def _sample(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: int, length: int, seed: int
) -> list[list[int]]:
    """Top-k sampling of one chunk, under a forked generator (the caller's random state is kept)."""
    import torch

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        ids = torch.full((rows, 1), start, dtype=torch.long, device=device)
        # generate comes from GenerationMixin, which each causal LM class mixes in; PreTrainedModel lacks it
        out = model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            top_k=SAMPLE_TOP_K,
            max_new_tokens=length,
            min_new_tokens=length,  # no end-of-sequence: every row is `length` real tokens
            pad_token_id=pad,
        )
    return [[int(t) for t in row[1 : length + 1]] for row in out]


def generated_prefixes(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, count: int) -> tuple[str, ...]:
    """`count` short texts the model wrote, each closed as a sentence ("<text>. "), to put before a prompt."""
    if count == 0:
        return ()
    texts = tokenizer.batch_decode(
        sampled_rows(model, tokenizer, count, PREFIX_TOKENS, seed=1), skip_special_tokens=True
    )
    prefixes = []
    for text in texts:
        line = " ".join(text.split()).strip(" .")
        prefixes.append(f"{line}. " if line else "")
    return tuple(prefixes)
