"""Localization of one fact: score (site, layer, position) by indirect effect and pick the layers to edit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..metrics.measure import mean
from ..model.arch import ArchModules, arch_modules, num_layers
from ..model.precision import precision_context
from ..model.targets import TRACING_MODES
from .hooks import SITES
from .patching import (
    Cell,
    PreparedPrompt,
    attribution_estimates,
    embedding_std,
    head_weight_for,
    noise_for,
    prepare,
    restored_probs,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Row = list[float | None]


@dataclass(frozen=True)
class LocalizeSettings:
    """How to localize: the method, how many layers to choose, the corruption, and how to score the cells.

    `positions` (trace): "all" (every site at every token), "key" (MLP at the subject's last token,
    attention at the last token: the cells selection reads) or "auto" (all on CUDA, key on CPU).
    `precision`: "auto" (bf16 on CUDA and AMX CPUs), "float32" or "bfloat16".
    """

    method: str = "trace"  # one of TRACING_MODES (model/targets.py)
    mlp_layers: int = 2
    attention_layers: int = 2
    noise_samples: int = 3
    noise_scale: float = 3.0  # x the embedding std
    seed: int = 0
    positions: Literal["auto", "all", "key"] = "auto"
    precision: str = "auto"
    batch_rows: int | None = None  # rows per batched pass (default: 1024 on CUDA, 128 on CPU)

    def __post_init__(self) -> None:
        if self.method not in TRACING_MODES:
            raise ValueError(f"localization method must be one of {TRACING_MODES}, found {self.method!r}")


@dataclass(frozen=True)
class FactPrompts:
    """What to localize: the prompts (as the model sees them), the subject in them and the answer's first token."""

    texts: tuple[str, ...]
    subject: str
    answer: str
    answer_id: int
    add_special_tokens: bool = True


@dataclass(frozen=True)
class PromptGrid:
    """One prompt's scored grid: effects[site][layer][position], None where that cell was not scored."""

    prompt: str
    tokens: tuple[str, ...]
    subject_positions: tuple[int, ...]
    clean_prob: float
    corrupted_prob: float
    effects: dict[str, list[list[float | None]]]
    kind: str  # "patched" (real restorations) or "estimated" (attribution patching)

    def as_record(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tokens": list(self.tokens),
            "subject_positions": list(self.subject_positions),
            "clean_prob": self.clean_prob,
            "corrupted_prob": self.corrupted_prob,
            "kind": self.kind,
            "effects": self.effects,
        }


@dataclass(frozen=True)
class Localization:
    """Where a fact lives: per-layer effects of MLP (subject's last token) and attention (last token)."""

    method: str
    answer: str
    mlp_effects: tuple[float | None, ...]  # mean over prompts; None = not measured by a real patch
    attention_effects: tuple[float | None, ...]
    mlp_layers: tuple[int, ...]  # chosen, best first
    attention_layers: tuple[int, ...]
    grids: tuple[PromptGrid, ...]
    noise_std: float
    noise_samples: int
    precision: str
    seconds: float
    estimates: dict[str, tuple[float, ...]] = field(default_factory=dict)  # attribution: per-layer estimates
    architecture: str = ""  # where the layers and edited modules are, and how that was found (ArchModules)
    stored: bool = False  # read back from an earlier run's trace of the same fact (localize/stored.py)

    def as_record(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "answer": self.answer,
            "mlp_effects": list(self.mlp_effects),
            "attention_effects": list(self.attention_effects),
            "mlp_layers": list(self.mlp_layers),
            "attention_layers": list(self.attention_layers),
            "noise_std": self.noise_std,
            "noise_samples": self.noise_samples,
            "precision": self.precision,
            "seconds": round(self.seconds, 4),
            "estimates": {k: list(v) for k, v in self.estimates.items()},
            "grids": [g.as_record() for g in self.grids],
            "architecture": self.architecture,
            "stored": self.stored,
        }


def top_layers(effects: Sequence[float | None], k: int) -> tuple[int, ...]:
    """The k layers with the largest measured effect (ties: the lower layer first)."""
    scored = [(e, layer) for layer, e in enumerate(effects) if e is not None]
    return tuple(layer for _, layer in sorted(scored, key=lambda t: (-t[0], t[1]))[:k])


def _grid(num: int, width: int) -> list[Row]:
    return [[None] * width for _ in range(num)]


def _trace_cells(prep: PreparedPrompt, layers: int, which: str) -> list[Cell]:
    """Every site at every position ("all"), or only the cells selection reads ("key"): MLP at the
    subject's last token and attention at the last token."""
    if which == "all":
        return [(site, layer, (pos,)) for site in SITES for layer in range(layers) for pos in range(prep.last + 1)]
    mlp_at_subject: list[Cell] = [("mlp", layer, (prep.subject[-1],)) for layer in range(layers)]
    attention_at_last: list[Cell] = [("attn", layer, (prep.last,)) for layer in range(layers)]
    return mlp_at_subject + attention_at_last


@dataclass
class _Scan:
    """What every prompt of one localization shares: the model's layout, the noise scale and the LM head."""

    arch: ArchModules
    layers: int
    which: str
    rows: int
    std: float
    head: torch.Tensor
    precision: str


def _scan(model: PreTrainedModel, settings: LocalizeSettings, label: str) -> _Scan:
    device_type = next(model.parameters()).device.type
    which = settings.positions if settings.positions != "auto" else ("all" if device_type == "cuda" else "key")
    return _Scan(
        arch_modules(model),
        num_layers(model),
        which,
        settings.batch_rows or (1024 if device_type == "cuda" else 128),
        settings.noise_scale * embedding_std(model, seed=settings.seed),
        head_weight_for(model, label),
        label,
    )


def localize(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fact: FactPrompts,
    settings: LocalizeSettings = LocalizeSettings(),
) -> Localization:
    """Causal tracing (`trace`: real restorations) or attribution patching confirmed by real patches.

    The subject's token embeddings get seeded Gaussian noise of `noise_scale` x the embedding std;
    restoring a clean activation and measuring P(answer) gives its indirect effect. Every hook is
    removed on exit, and the model's weights are the same objects with the same values afterwards.
    """
    import torch

    started = time.perf_counter()
    context, label = precision_context(model, settings.precision)
    scan = _scan(model, settings, label)
    scored = []
    with context:
        for index, text in enumerate(fact.texts):
            scored.append(_score_prompt(model, tokenizer, fact, settings, scan, index, text))
    mlp_effects = _combine([s.mlp_row for s in scored])
    attn_effects = _combine([s.attn_row for s in scored])
    estimates = {
        name: tuple(mean(col) for col in zip(*rows))
        for name, rows in (
            ("mlp", [s.estimates[0] for s in scored if s.estimates]),
            ("attention", [s.estimates[1] for s in scored if s.estimates]),
        )
        if rows
    }
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    return Localization(
        settings.method,
        fact.answer,
        mlp_effects,
        attn_effects,
        top_layers(mlp_effects, settings.mlp_layers),
        top_layers(attn_effects, settings.attention_layers),
        tuple(s.grid for s in scored),
        scan.std,
        settings.noise_samples,
        label,
        time.perf_counter() - started,
        estimates,
        scan.arch.describe(),
    )


@dataclass(frozen=True)
class _Scored:
    """One prompt's grid, its per-layer MLP and attention effects, and (attribution) the estimates."""

    grid: PromptGrid
    mlp_row: Row
    attn_row: Row
    estimates: tuple[Row, Row] | None


def _cells_to_score(
    model: PreTrainedModel,
    prep: PreparedPrompt,
    noise: torch.Tensor,
    settings: LocalizeSettings,
    scan: _Scan,
    effects: dict[str, list[Row]],
) -> tuple[list[Cell], tuple[Row, Row] | None]:
    """Trace: the cells of `scan.which`. Attribution: the estimated grid goes into `effects`, and the top
    2k MLP and attention layers by estimate are the cells confirmed by real patches."""
    if settings.method == "trace":
        return _trace_cells(prep, scan.layers, scan.which), None
    estimated = attribution_estimates(model, scan.arch, prep, noise, scan.layers, scan.head)
    for site in SITES:
        effects[site] = [[float(v) for v in row] for row in estimated[site]]
    mlp_est = [effects["mlp"][layer][prep.subject[-1]] for layer in range(scan.layers)]
    attn_est = [effects["attn"][layer][prep.last] for layer in range(scan.layers)]
    cells: list[Cell] = [("mlp", layer, (prep.subject[-1],)) for layer in top_layers(mlp_est, 2 * settings.mlp_layers)]
    cells += [("attn", layer, (prep.last,)) for layer in top_layers(attn_est, 2 * settings.attention_layers)]
    return cells, (mlp_est, attn_est)


def _score_prompt(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fact: FactPrompts,
    settings: LocalizeSettings,
    scan: _Scan,
    index: int,
    text: str,
) -> _Scored:
    """Corrupt one prompt's subject, restore each chosen cell, and record the gains in P(answer)."""
    prep = prepare(model, scan.arch, tokenizer, text, fact.subject, fact.answer_id, fact.add_special_tokens, scan.head)
    noise = noise_for(prep, settings.noise_samples, scan.std, settings.seed * 1000 + index)
    effects = {site: _grid(scan.layers, prep.last + 1) for site in SITES}
    cells, estimates = _cells_to_score(model, prep, noise, settings, scan, effects)
    probs = restored_probs(model, scan.arch, prep, noise, cells, scan.rows, scan.head)
    corrupted = probs[:, 0]
    gains = (probs[:, 1:] - corrupted[:, None]).mean(0)
    mlp_row: Row = [None] * scan.layers
    attn_row: Row = [None] * scan.layers
    for (site, layer, (pos,)), gain in zip(cells, gains.tolist()):
        if settings.method == "trace":
            effects[site][layer][pos] = gain
        if site == "mlp" and pos == prep.subject[-1]:
            mlp_row[layer] = gain
        if site == "attn" and pos == prep.last:
            attn_row[layer] = gain
    kind = "patched" if settings.method == "trace" else "estimated"
    grid = PromptGrid(text, tuple(prep.tokens), prep.subject, prep.clean_prob, float(corrupted.mean()), effects, kind)
    return _Scored(grid, mlp_row, attn_row, estimates)


def _combine(per_prompt: list[Row]) -> tuple[float | None, ...]:
    """Mean over the prompts that measured a layer (attribution confirms different layers per prompt)."""
    out: list[float | None] = []
    for column in zip(*per_prompt):
        measured = [v for v in column if v is not None]
        out.append(mean(measured) if measured else None)
    return tuple(out)
