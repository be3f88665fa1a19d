"""AlphaEdit: the key-value update projected onto the null space of the keys other knowledge uses.

P = U₀U₀ᵀ spans the key directions whose eigenvalue in C = E[k kᵀ] (model-generated text) is below
`nullspace_threshold` x the largest, so that the change leaves the outputs on those keys (nearly)
alone. With new keys K₁ [d_k, u], their value changes R [d_out, u] and the keys of the edits an
earlier sequential step kept, Kₚ, the change is Δᵀ = (P(KₚKₚᵀ + K₁K₁ᵀ) + λI)⁻¹ P K₁ Rᵀ.
A batch is one such update; in sequential mode each merged edit's keys join Kₚ for the next.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..model.generated import model_identity
from ..model.introspect import weight_of
from ..model.weights import weights_fingerprint
from .base import EditRequest
from .full_ft import WeightsEdit
from .keys import key_second_moment, weight_update
from .rank_one import KeyValueSettings, fact_key_value
from .rome import KeyValueEditor
from .settings import setting

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# model -> module name -> (fingerprint of that module after the kept edit, keys of every kept edit [d_k, p])
_KEPT: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, torch.Tensor]]] = weakref.WeakKeyDictionary()
_PROJECTORS: dict[tuple[Any, ...], torch.Tensor] = {}


def null_space_projector(moment: torch.Tensor, threshold: float, index: tuple[Any, ...]) -> torch.Tensor:
    """P [d_k, d_k] onto the eigenvectors of C whose eigenvalue is below threshold x the largest
    (`index` names the moment: model, module, positions)."""
    import torch

    index = (*index, threshold)
    if index not in _PROJECTORS:
        values, vectors = torch.linalg.eigh(moment.double())
        kept = vectors[:, values < threshold * float(values.max())]
        _PROJECTORS.clear()  # one moment at a time: the cache holds the latest only
        _PROJECTORS[index] = kept @ kept.T
    return _PROJECTORS[index]


def kept_keys(model: PreTrainedModel, name: str) -> torch.Tensor | None:
    """Keys of the edits a sequential run kept in `name`, if the module still holds exactly those edits."""
    entry = _KEPT.get(model, {}).get(name)
    if entry is None or weights_fingerprint(model, [name]) != entry[0]:
        return None
    return entry[1]


def alphaedit_change(
    projector: torch.Tensor, keys: torch.Tensor, deltas: torch.Tensor, earlier: torch.Tensor | None, ridge: float
) -> torch.Tensor:
    """Δ [d_out, d_k] for new keys [d_k, u] and value changes [d_out, u] (float64)."""
    import torch

    k1, r = keys.double(), deltas.double()
    gram = k1 @ k1.T + (earlier.double() @ earlier.double().T if earlier is not None else 0)
    lhs = projector @ gram + ridge * torch.eye(k1.shape[0], dtype=k1.dtype, device=k1.device)
    # torch.linalg's functions are bound from C and typed Any; solve gives a tensor
    return cast("torch.Tensor", torch.linalg.solve(lhs, projector @ k1 @ r.T)).T


@dataclass(frozen=True)
class AlphaEditSettings(KeyValueSettings):
    """alphaedit's settings: rome's, with the null space the update is projected onto and its ridge."""

    nullspace_threshold: float = setting(
        0.02, "probability", "the null space: key directions whose eigenvalue is below this x the largest"
    )
    update_ridge: float = setting(1.0, "non-negative", "ridge of the closed-form update")


class AlphaEditEditor(KeyValueEditor):
    """AlphaEdit: every fact's key and value found on the model as it is, then one update for all, projected
    onto the null space of the keys other knowledge uses."""

    name = "alphaedit"
    settings_class = AlphaEditSettings

    def update(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        requests: Sequence[EditRequest],
        settings: KeyValueSettings,
        prefixes: Sequence[str],
        edit: WeightsEdit,
    ) -> None:
        import torch

        own = AlphaEditSettings.of(settings)
        module = model.get_submodule(name)
        moment = key_second_moment(model, tokenizer, name, own.key_positions_per_dim)
        index = (model_identity(model), name, own.key_positions_per_dim)
        projector = null_space_projector(moment, own.nullspace_threshold, index).to(weight_of(module).device)
        targets = [fact_key_value(model, tokenizer, name, r, settings, prefixes) for r in requests]
        edit.stages += [t.stage for t in targets]
        keys = torch.stack([t.key for t in targets], dim=1)
        deltas = torch.stack([t.delta for t in targets], dim=1)
        earlier = kept_keys(model, name)
        with torch.no_grad():
            change = alphaedit_change(projector, keys, deltas, earlier, own.update_ridge)
            weight_of(module).add_(weight_update(module, change))
        every = keys if earlier is None else torch.cat([earlier.to(keys.device), keys], dim=1)

        def keep() -> None:
            _KEPT.setdefault(model, {})[name] = (weights_fingerprint(model, [name]), every.detach())

        edit.on_merge = keep
