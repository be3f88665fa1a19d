"""A localization as it is kept between runs: the key that names what was traced and how, and the
record read back, checked before it chooses any layer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from .localizer import FactPrompts, Localization, LocalizeSettings, PromptGrid

TRACE_FORMAT = 1  # raise it when tracing or the record changes what a stored trace means


def trace_key(fact: FactPrompts, settings: LocalizeSettings, precision: str) -> str:
    """A sha256 hex digest of everything a trace depends on besides the model's identity: the fact, the
    settings and the precision they resolve to on this machine ("auto" is bf16 on AMX CPUs only).

    The precision asked for counts only as what it resolves to, so "auto" and "bfloat16", which trace alike
    on a CPU with AMX, share a trace; "auto" stands in for it, so that keys written before stay valid."""
    what = {
        "format": TRACE_FORMAT,
        "fact": dataclasses.asdict(fact),
        "settings": dataclasses.asdict(dataclasses.replace(settings, precision="auto")),
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _number(value: Any, where: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, found {value!r}")
    return float(value)


def _scored(value: Any, count: int, where: str) -> tuple[float | None, ...]:
    """`count` values, each a finite number or None (not scored)."""
    if not isinstance(value, list) or len(value) != count:
        raise ValueError(f"{where}: expected a list of {count} values")
    return tuple(None if v is None else _number(v, where) for v in value)


def _chosen(value: Any, layers: int, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int and 0 <= v < layers for v in value):
        raise ValueError(f"{where}: expected layer numbers below {layers}, found {value!r}")
    return tuple(value)


def _cells(rows: Any, layers: int, positions: int) -> list[list[float | None]]:
    """One site's grid: a row per layer, a cell per token."""
    if not isinstance(rows, list) or len(rows) != layers:
        raise ValueError(f"effects: expected {layers} rows of cells")
    return [list(_scored(row, positions, "effects")) for row in rows]


def _grid(record: Any, layers: int) -> PromptGrid:
    if not isinstance(record, Mapping) or not isinstance(record.get("effects"), Mapping):
        raise ValueError("grids: expected objects with effects")
    tokens = tuple(str(t) for t in record["tokens"])
    return PromptGrid(
        str(record["prompt"]),
        tokens,
        tuple(int(p) for p in record["subject_positions"]),
        _number(record["clean_prob"], "clean_prob"),
        _number(record["corrupted_prob"], "corrupted_prob"),
        {str(site): _cells(rows, layers, len(tokens)) for site, rows in record["effects"].items()},
        str(record["kind"]),
    )


def stored_localization(record: Mapping[str, Any], layers: int) -> Localization:
    """The Localization a stored record (`Localization.as_record`) holds, for a model of `layers` layers,
    marked as read from the store; ValueError when the record is not one a trace of that model wrote."""
    try:
        return Localization(
            str(record["method"]),
            str(record["answer"]),
            _scored(record["mlp_effects"], layers, "mlp_effects"),
            _scored(record["attention_effects"], layers, "attention_effects"),
            _chosen(record["mlp_layers"], layers, "mlp_layers"),
            _chosen(record["attention_layers"], layers, "attention_layers"),
            tuple(_grid(g, layers) for g in record["grids"]),
            _number(record["noise_std"], "noise_std"),
            int(record["noise_samples"]),
            str(record["precision"]),
            _number(record["seconds"], "seconds"),
            {str(k): tuple(_number(v, k) for v in values) for k, values in record["estimates"].items()},
            str(record["architecture"]),
            stored=True,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a localization record ({type(exc).__name__}: {exc})") from exc
