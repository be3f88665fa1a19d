"""Localization of one fact: score (site, layer, position) by indirect effect and pick the layers to edit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..targets import arch_modules, num_layers
from .hooks import SITES
from .patching import (Cell, PreparedPrompt, attribution_estimates, embedding_std, head_weight_for, noise_for,
                       precision_context, prepare, restored_probs)

METHODS = ("trace", "attribution")


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
        return {"prompt": self.prompt, "tokens": list(self.tokens), "subject_positions": list(self.subject_positions),
                "clean_prob": self.clean_prob, "corrupted_prob": self.corrupted_prob, "kind": self.kind,
                "effects": self.effects}


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

    def as_record(self) -> dict[str, Any]:
        return {"method": self.method, "answer": self.answer, "mlp_effects": list(self.mlp_effects),
                "attention_effects": list(self.attention_effects), "mlp_layers": list(self.mlp_layers),
                "attention_layers": list(self.attention_layers), "noise_std": self.noise_std,
                "noise_samples": self.noise_samples, "precision": self.precision, "seconds": round(self.seconds, 4),
                "estimates": {k: list(v) for k, v in self.estimates.items()},
                "grids": [g.as_record() for g in self.grids]}


def top_layers(effects: Sequence[float | None], k: int) -> tuple[int, ...]:
    """The k layers with the largest measured effect (ties: the lower layer first)."""
    scored = [(e, layer) for layer, e in enumerate(effects) if e is not None]
    return tuple(layer for _, layer in sorted(scored, key=lambda t: (-t[0], t[1]))[:k])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _grid(num: int, width: int) -> list[list[float | None]]:
    return [[None] * width for _ in range(num)]


def _trace_cells(prep: PreparedPrompt, layers: int, which: str) -> list[Cell]:
    """Every site at every position ("all"), or only the cells selection reads ("key"): MLP at the
    subject's last token and attention at the last token."""
    if which == "all":
        return [(site, layer, (pos,)) for site in SITES for layer in range(layers) for pos in range(prep.last + 1)]
    return ([("mlp", layer, (prep.subject[-1],)) for layer in range(layers)]
            + [("attn", layer, (prep.last,)) for layer in range(layers)])


def localize(model: Any, tokenizer: Any, texts: Sequence[str], subject: str, answer: str, answer_id: int, *,
             method: str = "trace", mlp_layers: int = 2, attention_layers: int = 2, noise_samples: int = 3,
             noise_scale: float = 3.0, seed: int = 0, add_special_tokens: bool = True, positions: str = "auto",
             precision: str = "auto", batch_rows: int | None = None) -> Localization:
    """Causal tracing (`trace`: real restorations) or attribution patching confirmed by real patches.

    The subject's token embeddings get seeded Gaussian noise of `noise_scale` x the embedding std;
    restoring a clean activation and measuring P(answer) gives its indirect effect. `positions` (trace):
    "all" (every site at every token), "key" (MLP at the subject's last token, attention at the last
    token: the cells selection reads) or "auto" (all on CUDA, key on CPU). Every hook is removed on exit.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"localization method must be one of {METHODS}, found {method!r}")
    started = time.perf_counter()
    arch = arch_modules(model)
    layers = num_layers(model)
    device_type = next(model.parameters()).device.type
    which = positions if positions != "auto" else ("all" if device_type == "cuda" else "key")
    rows = batch_rows or (1024 if device_type == "cuda" else 128)
    context, label = precision_context(model, precision)
    std = noise_scale * embedding_std(model, seed=seed)
    head = head_weight_for(model, label)
    grids: list[PromptGrid] = []
    mlp_per_prompt: list[list[float | None]] = []
    attn_per_prompt: list[list[float | None]] = []
    estimates: dict[str, list[list[float]]] = {"mlp": [], "attention": []}
    with context:
        for index, text in enumerate(texts):
            prep = prepare(model, arch, tokenizer, text, subject, answer_id, add_special_tokens, layers, head)
            noise = noise_for(prep, noise_samples, std, seed * 1000 + index)
            effects = {site: _grid(layers, prep.last + 1) for site in SITES}
            if method == "trace":
                cells = _trace_cells(prep, layers, which)
                kind = "patched"
            else:
                estimated = attribution_estimates(model, arch, prep, noise, layers, head)
                for site in SITES:
                    effects[site] = [[float(v) for v in row] for row in estimated[site]]
                mlp_est = [effects["mlp"][layer][prep.subject[-1]] for layer in range(layers)]
                attn_est = [effects["attn"][layer][prep.last] for layer in range(layers)]
                estimates["mlp"].append(mlp_est)
                estimates["attention"].append(attn_est)
                cells = [("mlp", layer, (prep.subject[-1],)) for layer in top_layers(mlp_est, 2 * mlp_layers)]
                cells += [("attn", layer, (prep.last,)) for layer in top_layers(attn_est, 2 * attention_layers)]
                kind = "estimated"
            probs = restored_probs(model, arch, prep, noise, cells, rows, head)
            corrupted = probs[:, 0]
            gains = (probs[:, 1:] - corrupted[:, None]).mean(0)
            mlp_row: list[float | None] = [None] * layers
            attn_row: list[float | None] = [None] * layers
            for (site, layer, (pos,)), gain in zip(cells, gains.tolist()):
                if method == "trace":
                    effects[site][layer][pos] = gain
                if site == "mlp" and pos == prep.subject[-1]:
                    mlp_row[layer] = gain
                if site == "attn" and pos == prep.last:
                    attn_row[layer] = gain
            mlp_per_prompt.append(mlp_row)
            attn_per_prompt.append(attn_row)
            grids.append(PromptGrid(text, tuple(prep.tokens), prep.subject, prep.clean_prob,
                                    float(corrupted.mean()), effects, kind))
    mlp_effects = _combine(mlp_per_prompt)
    attn_effects = _combine(attn_per_prompt)
    if device_type == "cuda":
        torch.cuda.synchronize()
    return Localization(method, answer, mlp_effects, attn_effects, top_layers(mlp_effects, mlp_layers),
                        top_layers(attn_effects, attention_layers), tuple(grids), std, noise_samples, label,
                        time.perf_counter() - started,
                        {k: tuple(_mean(col) for col in zip(*v)) for k, v in estimates.items() if v})


def _combine(per_prompt: list[list[float | None]]) -> tuple[float | None, ...]:
    """Mean over the prompts that measured a layer (attribution confirms different layers per prompt)."""
    out: list[float | None] = []
    for column in zip(*per_prompt):
        measured = [v for v in column if v is not None]
        out.append(_mean(measured) if measured else None)
    return tuple(out)
