"""The preservation term (AlphaEdit's idea, for gains): how far the adapted modules' outputs move on text
the model writes itself, added to the learn stage's loss (`preservation_weight`).

With x the module's input and C = E[x xᵀ] over generated text (`keys.key_second_moments`), a gain g on
the output moves it by (g - 1) ⊙ Wx, whose mean square is Σᵢ (gᵢ - 1)² (W C Wᵀ)ᵢᵢ; a gain on the input
(an MLP output projection) moves it by W((g - 1) ⊙ x), whose mean square is (g - 1)ᵀ((WᵀW) ∘ C)(g - 1).
Each is divided by the mean square of the output itself, so modules of any size weigh alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model.introspect import weight_of
from ..model.targets import TargetModules
from .keys import is_conv1d, key_second_moments

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class PreservedOutputs:
    """Per adapted module: whether its input is scaled, and the quadratic form of its output's change."""

    forms: dict[str, tuple[bool, torch.Tensor]]

    def penalty(self, gains: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The mean over modules of the relative mean-square output change the gains cause."""
        import torch

        terms = []
        for module, gain in gains.items():
            scaled_input, form = self.forms[module]
            shift = gain.reshape(-1).to(form.dtype) - 1
            terms.append(shift @ form @ shift if scaled_input else (shift * shift * form).sum())
        return torch.stack(terms).mean()


def _weight_out_in(module: torch.nn.Module) -> torch.Tensor:
    weight = weight_of(module).detach().float()
    return weight.T if is_conv1d(module) else weight


def preserved_outputs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: TargetModules, per_dim: int
) -> PreservedOutputs:
    """The quadratic forms of every targeted module (its input statistics measured once, then cached)."""
    import torch

    forms = {}
    moments = key_second_moments(model, tokenizer, targets.modules, per_dim)
    for name in targets.modules:
        module = model.get_submodule(name)
        moment = moments[name].float()
        weight = _weight_out_in(module)
        output_square = float(torch.einsum("oi,ij,oj->", weight, moment, weight))
        if name in targets.feedforward:
            forms[name] = (True, (weight.T @ weight) * moment / output_square)
        else:
            forms[name] = (False, torch.einsum("oi,ij,oj->o", weight, moment, weight) / output_square)
    return PreservedOutputs(forms)
