"""The base model's decoded probes, computed once: in memory for a run and, given a folder, on disk across runs.

A decoded row depends on the weights, the prompt's token ids, the numerics (dtype, device, torch and
transformers versions, the CPU's kernels, the forms of a greedy step's products and head and of the
head's many-row products) and on how decoding works here (`PROBE_FORMAT`). Those name the file of a
model's rows, and the prompt's token ids key each row. A longer greedy run serves every request that
stops within it: the first tokens of a greedy run are the shorter greedy run. Inside `base_decodes_served`,
an editor's own decodes of the base model (`base_decode`) are served the same way.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..infra.files import write_atomic
from .decoding import CandidateScore, Decoded, DecodeRow, Tokens, decode
from .head_argmax import greedy_head_form
from .introspect import model_width
from .lmhead import few_row_products, head_product_form
from .precision import loaded_precision
from .probe import continuation_rows, continuation_texts
from .spec import cache_dir
from .state_store import LastTokenStates, states_recorded
from .text import decoding_sets, ends_line
from .trace_store import TraceStore, identity_name

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .load import LoadedModel
    from .text import Chat

PROBE_FORMAT = 1  # raise it when decoding changes what a stored row means
STORE_ROWS = 20_000  # rows kept on disk per model; the oldest go first


def probe_folder() -> Path:
    """Where the base model's decoded probes are kept across runs: beside the converted models."""
    return cache_dir() / "probes"


@dataclass
class _Row:
    tokens: Tokens
    scores: dict[Tokens, CandidateScore]


def store_identity(lm: LoadedModel) -> dict[str, str]:
    """What a stored row depends on besides its prompt."""
    import torch
    import transformers

    return {
        "format": str(PROBE_FORMAT),
        "weights": lm.weights_hash,
        "dtype": lm.dtype,
        "device": lm.device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "few_row_products": few_row_products(),
        "greedy_head": greedy_head_form(),
        "head_products": head_product_form(),
    }


def _ints(value: Any) -> Tokens:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ValueError("expected a list of token ids")
    return tuple(value)


def _parsed(data: Any, identity: Mapping[str, str]) -> dict[Tokens, _Row]:
    """The rows of a store file; ValueError when it is not one this identity wrote."""
    if not isinstance(data, dict) or data.get("identity") != dict(identity) or not isinstance(data.get("rows"), list):
        raise ValueError("not a probe store of this model and version")
    rows: dict[Tokens, _Row] = {}
    for item in data["rows"]:
        ids, tokens, scores = item
        parsed = {}
        for candidate, logprob, count, rank in scores:
            if not (isinstance(logprob, float) and type(count) is int and type(rank) is int):
                raise ValueError("a candidate score is not (float, int, int)")
            parsed[_ints(candidate)] = CandidateScore(logprob, count, rank)
        rows[_ints(ids)] = _Row(_ints(tokens), parsed)
    return rows


class ProbeStore:
    """One JSON file per model identity; read whole, merged and replaced atomically under a lock."""

    def __init__(self, folder: Path, identity: Mapping[str, str]) -> None:
        self.identity = dict(identity)
        self.path = folder / f"{identity_name(self.identity)}.json"

    def load(self) -> dict[Tokens, _Row]:
        """The stored rows; none when the file is missing, and none with a note when it cannot be used."""
        try:
            return _parsed(json.loads(self.path.read_text(encoding="utf-8")), self.identity)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            print(
                f"pytest-factedit: not using the probe cache {self.path} ({exc}); it is written anew", file=sys.stderr
            )
            return {}

    def save(self, rows: Mapping[Tokens, _Row]) -> None:
        """Add `rows` to what is stored now (another process may have added some), keeping the newest."""
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged = {**self.load(), **rows}
            kept = list(merged.items())[-STORE_ROWS:]
            data = {
                "identity": self.identity,
                "rows": [
                    [
                        list(ids),
                        list(row.tokens),
                        [[list(c), s.logprob, s.tokens, s.first_rank] for c, s in row.scores.items()],
                    ]
                    for ids, row in kept
                ],
            }
            write_atomic(self.path, json.dumps(data, separators=(",", ":")) + "\n")


def missing_decoded(
    lm: LoadedModel, rows: Sequence[DecodeRow], served: Sequence[Decoded | None]
) -> tuple[list[Decoded], list[int]]:
    """`served` (a decode per row, None where none was at hand) with every None decoded now on the model, in
    one batched decode; and the indices of the rows decoded."""
    missing = [i for i, d in enumerate(served) if d is None]
    found = iter(decode(lm.model, lm.tokenizer, [rows[i] for i in missing]) if missing else ())
    return [d if d is not None else next(found) for d in served], missing


class BaseAnswerCache:
    """Decoded base-model probes keyed by prompt token ids; with `folder`, kept on disk across runs too,
    beside the base model's traces (`traces`)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._identity: dict[str, str] | None = None
        self._store: ProbeStore | None = None
        self._rows: dict[Tokens, _Row] = {}
        self._states: tuple[dict[str, str], LastTokenStates] | None = None

    def states(self, lm: LoadedModel) -> LastTokenStates | None:
        """The base model's last-token states (model/state_store.py) of this model identity, kept beside
        its decodes: what a relation router reads. Without a folder, in memory, for one model as its decodes are."""
        self._attach(lm)  # the identity its decodes are read under (none without a folder)
        identity = self._identity or {}
        if self._states is None or self._states[0] != identity:
            self._states = identity, LastTokenStates(identity, model_width(lm.model), self._folder)
        return self._states[1]

    def _attach(self, lm: LoadedModel) -> None:
        """With a folder: the rows stored for this model (read once per model identity)."""
        if self._folder is None:
            return
        identity = store_identity(lm)
        if identity != self._identity:
            self._identity, self._store = identity, ProbeStore(self._folder, identity)
            self._rows = self._store.load()

    def traces(self, lm: LoadedModel, texts: Sequence[Tokens] = ()) -> TraceStore | None:
        """The stored traces of this model's identity, for a trace that reads `texts` (the token ids of its
        prompts); None without a folder (nothing is kept across runs)."""
        if self._folder is None:
            return None
        return TraceStore(self._folder, store_identity(lm))

    def stored(self, lm: LoadedModel, row: DecodeRow) -> Decoded | None:
        """The base model's decode of `row` where a stored run covers it (memory or disk); else None."""
        self._attach(lm)
        return self._served(lm, row)

    def _served(self, lm: LoadedModel, row: DecodeRow) -> Decoded | None:
        known = self._rows.get(row.ids)
        if known is None or any(c not in known.scores for c in row.candidates):
            return None
        stops, _ = decoding_sets(lm.model, lm.tokenizer)
        end = row.stop_point(known.tokens, stops, lambda t: ends_line(lm.tokenizer, t))
        if end is None:
            return None
        tokens = known.tokens[:end]
        return Decoded(tokens, bool(tokens) and tokens[-1] in stops, {c: known.scores[c] for c in row.candidates})

    def decoded(self, lm: LoadedModel, rows: Sequence[DecodeRow], state_layers: Sequence[int] = ()) -> list[Decoded]:
        """Every row decoded by the base model: from the cache where a stored run covers it, else now; the
        rows decoded now leave their prompts' states at `state_layers` in `states` (a router reads them)."""
        self._attach(lm)
        served = [self._served(lm, row) for row in rows]
        with states_recorded(lm.model, state_layers, self.states(lm) if state_layers else None):
            out, missing = missing_decoded(lm, rows, served)
        for i in missing:
            self._remember(rows[i].ids, out[i])
        if missing and self._store is not None:
            self._store.save({rows[i].ids: self._rows[rows[i].ids] for i in missing})
        return out

    def _remember(self, ids: Tokens, found: Decoded) -> None:
        known = self._rows.get(ids)
        scores = {**(known.scores if known else {}), **found.scores}
        longer = (
            known is not None
            and len(known.tokens) > len(found.tokens)
            and known.tokens[: len(found.tokens)] == found.tokens
        )
        self._rows.pop(ids, None)  # re-inserted last: the newest rows are the ones kept on disk
        self._rows[ids] = _Row(known.tokens if longer and known else found.tokens, scores)

    def answers(self, lm: LoadedModel, prompts: Sequence[str], budgets: Sequence[int], chat: Chat) -> list[str]:
        """`greedy_continuations` of the base model, served from the cache where it can be."""
        rows = continuation_rows(lm.tokenizer, prompts, budgets, chat)
        return continuation_texts(lm.model, lm.tokenizer, self.decoded(lm, rows))


_SERVING: ContextVar[tuple[BaseAnswerCache, LoadedModel] | None] = ContextVar("factedit_base_decodes", default=None)


@contextmanager
def base_decodes_served(cache: BaseAnswerCache, lm: LoadedModel) -> Iterator[None]:
    """For the block, `base_decode` of `lm`'s model is served by `cache`: the caller vouches that the model
    is the base model as loaded (no edit kept on it) for as long as the block lasts."""
    token = _SERVING.set((cache, lm))
    try:
        yield
    finally:
        _SERVING.reset(token)


def base_decode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[DecodeRow]) -> list[Decoded]:
    """`decode` of what the base model says (an editor's reference continuations), in the precision it was
    loaded in, inside a training precision too (`loaded_precision`): inside `base_decodes_served` for this
    model, from its cache; else decoded now."""
    with loaded_precision(model):
        serving = _SERVING.get()
        if serving is not None and _as_loaded(model, serving[1]):
            return serving[0].decoded(serving[1], rows)
        return decode(model, tokenizer, rows)


def served_base_states(model: PreTrainedModel) -> LastTokenStates | None:
    """Inside `base_decodes_served` for `model` as loaded: the serving cache's last-token states of the base
    model (what a router built then reads); else None."""
    serving = _SERVING.get()
    if serving is None or not _as_loaded(model, serving[1]):
        return None
    return serving[0].states(serving[1])


def _as_loaded(model: PreTrainedModel, lm: LoadedModel) -> bool:
    """Is `model` the loaded one, computing in its loaded dtype (no bf16 autocast of a training precision)?"""
    import torch

    param = next(model.parameters())
    same_dtype = str(param.dtype).removeprefix("torch.") == lm.dtype
    return model is lm.model and same_dtype and not torch.is_autocast_enabled(param.device.type)
