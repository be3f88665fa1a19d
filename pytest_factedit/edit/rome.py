"""ROME: a rank-one change of one MLP output projection, so that the subject's key maps to the new value.

W += delta (C⁻¹k*)ᵀ / (k*ᵀ C⁻¹ k*), with k* the subject's key, delta the optimised value change
(`rank_one.py`) and C = E[k kᵀ] over model-generated text (`keys.py`). The change reaches only inputs
whose key leans towards C⁻¹k*, which is what ties it to the subject.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, cast

from ..errors import MethodError
from ..model.generated import generated_prefixes
from ..model.introspect import weight_of
from ..model.targets import TargetModules
from ..model.weights import snapshot
from .base import EditRequest, Scope
from .full_ft import WeightsEdit
from .keys import key_second_moment, weight_update
from .rank_one import KeyValue, KeyValueSettings, fact_key_value
from .settings import EditSettings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MOMENT_RIDGE = 1e-6  # x the mean key variance, so that C is invertible in the directions text never visits


def edited_module(targets: TargetModules) -> str:
    """The MLP output projection a key-value editor changes: the first the localization chose."""
    if not targets.feedforward:
        raise MethodError(
            "mlp_layers",
            f"a key-value editor changes an MLP output projection: give mlp_layers >= 1 (targets: {targets.rule})",
        )
    return targets.feedforward[0]


class KeyValueEditor:
    """What rome and alphaedit share: localize one MLP layer, find each fact's key and value, then let
    `update` turn them into a weight change; restored bit for bit from a copy of that one weight."""

    name: ClassVar[str] = ""
    scope: ClassVar[Scope] = "localized"
    settings_class: ClassVar[type[KeyValueSettings]] = KeyValueSettings

    def apply(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request: EditRequest | Sequence[EditRequest],
        targets: TargetModules,
        settings: EditSettings,
    ) -> WeightsEdit:
        import torch

        own = self.settings_class.of(settings)
        torch.manual_seed(own.seed)
        started = time.perf_counter()
        name = edited_module(targets)
        weight = weight_of(model.get_submodule(name))
        edit = WeightsEdit(
            method=self.name,
            model=model,
            params=[weight],
            originals=snapshot([weight]),
            targets=targets,
            settings=own,
        )
        requests = [request] if isinstance(request, EditRequest) else list(request)
        prefixes = tuple(own.context_prefixes) + generated_prefixes(model, tokenizer, own.generated_prefixes)
        try:
            self.update(model, tokenizer, name, requests, own, prefixes, edit)
        except BaseException:
            edit.remove()
            raise
        edit.trainable_parameters = weight.numel()
        edit.seconds = time.perf_counter() - started
        return edit

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
        raise NotImplementedError


def inverse_moment_times(moment: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """C⁻¹ K for keys [d_k, n], in float64, with a small ridge."""
    import torch

    c = moment.double()
    ridge = MOMENT_RIDGE * float(torch.diagonal(c).mean())
    lhs = c + ridge * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    # torch.linalg's functions are bound from C and typed Any; solve gives a tensor
    return cast("torch.Tensor", torch.linalg.solve(lhs, keys.double()))


def rome_change(moment: torch.Tensor, target: KeyValue) -> torch.Tensor:
    """The rank-one change [d_out, d_k] that maps k* to its value plus delta."""
    right = inverse_moment_times(moment, target.key[:, None])[:, 0]
    right = right / float(right @ target.key.double())
    return target.delta.double()[:, None] * right[None, :]


class RomeEditor(KeyValueEditor):
    """ROME: a rank-one change of one MLP output projection, facts one after another (a batch too), each key
    and value found on the model the previous left."""

    name = "rome"

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

        module = model.get_submodule(name)
        moment = key_second_moment(model, tokenizer, name, settings.key_positions_per_dim)
        for request in requests:
            target = fact_key_value(model, tokenizer, name, request, settings, prefixes)
            edit.stages.append(target.stage)
            with torch.no_grad():
                weight_of(module).add_(weight_update(module, rome_change(moment, target)))
