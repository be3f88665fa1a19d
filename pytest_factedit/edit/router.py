"""The relation router: a subject-gated edit acts on a question only where it asks the edited relation.

The subject gate opens on every text that names the subject, so gains that change the subject's states
reach its other relations too (after Japan's capital moves, its language may move with it). The router
reads, for a text the gate opens on, the base model's state at the text's last token in a late layer (with
every edit off), which says what is being asked rather than about whom, and compares it with the same state
of the edit's own prompts: cosine similarity. A text below the threshold runs as if the edit were not there.

The threshold is set per edit from texts that name the subject but ask no particular relation ("{subject}
is known for"): the highest similarity any of them reaches, less `margin`. The edit's own prompts (similarity
1) always pass. The decision is made once per text, on the pass that starts it, and holds for every token
generated after it (edit/gate_registry.py keeps it with the key-value cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import MethodError
from ..model.decoding import left_padded
from ..model.lmhead import decoder
from ..model.skip import decoder_layers
from ..model.text import encode_prompt
from .retention import SUBJECT_TEMPLATES, subject_texts

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .base import EditRequest


ROUTER_SETTING = "router_layer_from_end"
# How far under its threshold a text's similarity must be for a verdict made ahead of its decode to stand
# for the decode's own: far above the last-bit differences of one text's state between batches (~1e-6).
VERDICT_SLACK = 1e-4


class KnownStates(Protocol):
    """Base-model last-token states kept by text (model/state_store.py: LastTokenStates): a router's pass
    reads them instead of computing them again."""

    def get(self, layer: int, ids: tuple[int, ...]) -> torch.Tensor | None: ...

    def add(self, layer: int, found: Mapping[tuple[int, ...], torch.Tensor]) -> None: ...

    def save(self) -> None: ...


class _Reached(Exception):
    """Raised by the hook on the highest layer read: the states wanted are kept, the rest of the pass is not run."""


@dataclass(frozen=True)
class RelationRouter:
    """`layer`: the decoder layer whose output is read (0-based); `references`: the edit's prompts' states
    there, unit length [prompts, d]; a text passes when its best cosine similarity reaches `threshold`."""

    layer: int
    references: torch.Tensor
    threshold: float

    def passes(self, states: torch.Tensor) -> list[bool]:
        """One verdict per row of `states` [rows, d] (the base model's last-token states at `layer`)."""
        import torch

        unit = torch.nn.functional.normalize(states.float(), dim=-1)
        best = (unit @ self.references.to(unit.device).T).amax(dim=-1)
        return [bool(b) for b in (best >= self.threshold).tolist()]

    def surely_fails(self, state: torch.Tensor) -> bool:
        """Would `passes` turn down a text of this state [d], with `VERDICT_SLACK` to spare? Asked before a
        decode, from a kept state, about a verdict its pass makes from the same state or the same text's
        state computed in another batch (last bits apart): a text this near the threshold is decoded."""
        import torch

        unit = torch.nn.functional.normalize(state.float()[None], dim=-1)
        best = float((unit @ self.references.to(unit.device).T).amax())
        return best < self.threshold - VERDICT_SLACK


def settings_router_layers(model: PreTrainedModel, settings: Any) -> tuple[int, ...]:
    """The layers whose states the routers of edits made with `settings` (an editor's settings) read: as their
    `gating()` says (the subject-gated IA³ editors': edit/ia3.py), the one their editor builds its router
    with; none for an editor whose settings have no gating."""
    gating = settings.gating() if callable(getattr(settings, "gating", None)) else None
    return gating.router_layers(model) if gating is not None else ()


def router_layer(model: PreTrainedModel, from_end: int) -> int:
    """The 0-based decoder layer whose output is the hidden state `from_end` from the end (1: the last
    layer's output, which most models normalize before the head; 2: the layer before it); the first layer
    on a model with fewer layers than that."""
    if from_end < 1:
        raise MethodError(ROUTER_SETTING, f"expected 1 or more, found {from_end}")
    return max(len(decoder_layers(model)) - from_end, 0)


def layer_states(
    model: PreTrainedModel, layers: Sequence[int], attention_mask: torch.Tensor | None, **inputs: Any
) -> dict[int, torch.Tensor]:
    """The outputs of decoder `layers` at each row's last real token (the last 1 of `attention_mask`; the
    last position without one) [rows, d], for a pass with `inputs` (the decoder's keyword arguments, no
    cache); the layers above the highest are not run. Call it with every edit on the model off."""
    import torch

    ids = inputs["input_ids"]
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
        width = attention_mask.shape[1]
        last = width - 1 - attention_mask.flip(-1).to(torch.long).argmax(-1)
    else:
        last = torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
    rows = torch.arange(ids.shape[0])
    found: dict[int, torch.Tensor] = {}
    top = max(layers)

    def keep(layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            found[layer] = hidden[rows.to(hidden.device), last.to(hidden.device)].detach()
            if layer == top:
                raise _Reached

        return hook

    stack = decoder_layers(model)
    handles = [stack[layer].register_forward_hook(keep(layer)) for layer in sorted(set(layers))]
    try:
        with torch.no_grad():
            decoder(model)(**inputs, use_cache=False)
    except _Reached:
        return found
    finally:
        for handle in handles:
            handle.remove()
    raise RuntimeError(f"decoder layer {top} did not run in the router's pass")


def texts_states(model: PreTrainedModel, texts: Sequence[tuple[int, ...]], layer: int, pad_id: int) -> torch.Tensor:
    """`layer_states` of token sequences at one layer, left-padded into one pass."""
    device = next(model.parameters()).device
    ids, mask, positions = left_padded(texts, pad_id, device)
    return layer_states(model, [layer], mask, input_ids=ids, position_ids=positions)[layer]


def known_texts_states(
    model: PreTrainedModel, texts: Sequence[tuple[int, ...]], layer: int, pad_id: int, known: KnownStates | None
) -> torch.Tensor:
    """`texts_states` in fp32, reading the texts `known` keeps there; the others come from one pass, and are
    kept there. A kept state may differ from the one this pass would give in the last bits (another batch)."""
    import torch

    found = [known.get(layer, tuple(t)) if known is not None else None for t in texts]
    missing = [i for i, state in enumerate(found) if state is None]
    if missing:
        computed = texts_states(model, [texts[i] for i in missing], layer, pad_id)
        for i, state in zip(missing, computed):
            found[i] = state
        if known is not None:
            known.add(layer, {tuple(texts[i]): computed[j] for j, i in enumerate(missing)})
    device = next(model.parameters()).device
    return torch.stack([state.to(device).float() for state in found if state is not None])


def build_router(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    prefixes: Sequence[str],
    layer: int,
    margin: float,
    known: KnownStates | None = None,
) -> RelationRouter:
    """The router of an edit of `requests`: its prompts behind each training prefix as references, the
    subject's general texts as the threshold's measure. Run with every edit on the model off; `known`: the
    base model's states kept by text (the base probe decoded the prompts and the general texts)."""
    import torch

    prompts = [
        encode_prompt(tokenizer, p + t, r.chat)
        for r in requests
        for t in r.prompts
        for p in (("",) if r.chat else prefixes)  # a chat prompt is trained as a fresh conversation only
    ]
    general = [
        encode_prompt(tokenizer, t, r.chat)
        for r in requests
        for t in subject_texts(r.subject, r.prompts, len(SUBJECT_TEMPLATES))
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    states = torch.nn.functional.normalize(known_texts_states(model, prompts + general, layer, int(pad), known), dim=-1)
    references, others = states[: len(prompts)], states[len(prompts) :]
    highest = float((others @ references.T).max()) if len(general) else -1.0
    return RelationRouter(layer, references.cpu(), highest - margin)
