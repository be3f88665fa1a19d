"""The key-value cache of a forward pass, across transformers versions: pass it, get it back, copy its rows,
and keep per-row state beside it.

transformers 5 renamed the forward argument `past_key_values` to `cache`; the rest of the Cache API used
here (`batch_select_indices`) is common to both.
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_KEYWORDS: dict[type, str] = {}
ROW_STATE = "_factedit_row_state"  # per-row tensors that travel with a cache and its rows (edit/gate.py)


def cache_keyword(model: torch.nn.Module) -> str:
    """The name under which this model's forward takes a key-value cache."""
    kind = type(model)
    if kind not in _KEYWORDS:
        names = inspect.signature(model.forward).parameters
        _KEYWORDS[kind] = "cache" if "cache" in names else "past_key_values"
    return _KEYWORDS[kind]


def returned_cache(output: Any) -> Any:
    """The key-value cache a forward pass with `use_cache=True` returned (None without one)."""
    found = getattr(output, "cache", None)
    return found if found is not None else getattr(output, "past_key_values", None)


def row_state(cache: Any) -> dict[str, tuple[torch.Tensor, ...]]:
    """Tensors (batch first) that a hook keeps with `cache` about the text it holds so far, so that a
    pass continuing the cache can read them; `cache_rows` and `select_rows` select their rows too."""
    state = getattr(cache, ROW_STATE, None)
    if state is None:
        state = {}
        setattr(cache, ROW_STATE, state)
    return state


def has_row_state(cache: Any) -> bool:
    """Does a hook keep state with `cache` (`row_state`), without adding an empty one?"""
    return bool(getattr(cache, ROW_STATE, None))


def _select_state(cache: Any, rows: torch.Tensor) -> None:
    state = getattr(cache, ROW_STATE, None) or {}
    for name, tensors in state.items():
        state[name] = tuple(t.index_select(0, rows.to(t.device)) for t in tensors)


def cache_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A copy of `cache` holding the given batch rows, in that order (a row may repeat)."""
    copied = copy.deepcopy(cache)
    copied.batch_select_indices(rows)
    _select_state(copied, rows)
    return copied


def select_rows(cache: Any, rows: torch.Tensor) -> None:
    """Keep only the given batch rows of `cache`, in place (finished rows leave a greedy decode)."""
    cache.batch_select_indices(rows)
    _select_state(cache, rows)


def cache_prefix(cache: Any, length: int) -> Any:
    """A copy of `cache` holding its first `length` positions (negative crops: both major versions take them)."""
    copied = copy.deepcopy(cache)
    extra = copied.get_seq_length() - length
    if extra > 0:
        copied.crop(-extra)
        copied.__dict__.pop(ROW_STATE, None)  # it described the text up to the end, not this prefix
    return copied
