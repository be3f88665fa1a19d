"""The target of a key-value edit: the key the subject's last token presents to one MLP output projection
(averaged over context prefixes), and the value that makes the model say the new answer there.

The value is found as ROME finds it: a vector added to the projection's output at the subject's last
token, optimised for the new answer's likelihood behind every prefix, with a KL "essence" term that keeps
what the model says of the subject in general ("<subject> is a"), a weight decay and a norm clamp.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..infra.events import STAGE_END, STEP, emit
from ..model.decoding import left_padded
from ..model.introspect import weight_of
from ..model.lmhead import decoder, logits_from_hidden
from ..model.skip import capture_entering, entering_at
from ..model.targets import TargetModules, lowest_layer
from ..model.text import answer_token_ids
from .base import EditRequest, StageReport
from .keys import by_row, keys_and_values
from .settings import EditSettings, KeyStatisticsSettings, PromptSettings, changed_default, setting
from .subject import SubjectSpan, subject_span

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ESSENCE_TEMPLATE = "{} is a"


@dataclass(frozen=True)
class KeyValueSettings(PromptSettings, KeyStatisticsSettings):
    """rome's (and alphaedit's) settings: one MLP layer, prompts behind generated prefixes too, and the
    optimisation of the value."""

    mlp_layers: int = changed_default(EditSettings, "mlp_layers", 1)
    attention_layers: int = changed_default(EditSettings, "attention_layers", 0)
    generated_prefixes: int = changed_default(PromptSettings, "generated_prefixes", 5)
    learn_stop_prob: float = setting(
        0.9, "probability", "the value optimisation stops once P(new) reaches this on every answer token"
    )
    value_steps: int = setting(25, "count", "step cap of the value optimisation")
    value_lr: float = setting(1.0, "positive", "Adam learning rate of the value")
    essence_weight: float = setting(0.0625, "non-negative", "KL on '<subject> is a' (essence)")
    value_decay: float = setting(0.05, "non-negative", "weight decay of the value change")
    clamp_norm: float = setting(4.0, "positive", "value change at most this x the value's norm")


@dataclass
class KeyValue:
    """One fact's target at one module: key k* [d_k], the value change delta [d_out], how it was found."""

    key: torch.Tensor
    delta: torch.Tensor
    stage: StageReport


def context_spans(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, prefixes: Sequence[str]
) -> list[SubjectSpan]:
    """Every training prompt behind every prefix, with the subject's positions."""
    chosen = prefixes if not request.chat else ("",)
    return [
        subject_span(tokenizer, p + prompt, request.subject, request.chat) for prompt in request.prompts for p in chosen
    ]


@contextmanager
def value_added(
    module: torch.nn.Module, delta: torch.Tensor, rows: torch.Tensor, at: torch.Tensor, batch: int
) -> Iterator[None]:
    """For the block, `delta` is added to the module's output at position `at[i]` of row `rows[i]` of a
    pass over `batch` rows."""

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        changed = output.clone()
        in_rows = by_row(changed, batch)
        in_rows[rows, at] = in_rows[rows, at] + delta.to(output.dtype)
        return changed

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _padded(rows: Sequence[tuple[int, ...]], pad_id: int, device: Any) -> tuple[torch.Tensor, ...]:
    ids, mask, positions = left_padded(list(rows), pad_id, device)
    return ids, mask, positions, ids.new_tensor([ids.shape[1] - len(r) for r in rows])


def _entering(model: PreTrainedModel, layer: int, store: dict[str, Any]) -> Any:
    """Enter decoder layer `layer` with the states `capture_entering` stored (the layers below do not
    change), or run the whole model when there are none."""
    if layer > 0 and "hidden" in store and store["extras"] is not None:
        return entering_at(model, layer, store["hidden"], store["extras"])
    return nullcontext()


def _tail_logp(model: PreTrainedModel, padded: tuple[torch.Tensor, ...], picks: torch.Tensor) -> torch.Tensor:
    """log-softmax at the (row, position) pairs `picks` [n, 2] of one left-padded pass."""
    import torch

    ids, mask, positions, _ = padded
    hidden = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    picked = hidden.last_hidden_state[picks[:, 0], picks[:, 1]]
    return torch.log_softmax(logits_from_hidden(model, picked).float(), -1)


def fact_key_value(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    module_name: str,
    request: EditRequest,
    settings: KeyValueSettings,
    prefixes: Sequence[str],
) -> KeyValue:
    """k* (mean key at the subject's last token behind each prefix) and the optimised value change."""
    module = model.get_submodule(module_name)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    spans = context_spans(tokenizer, request, prefixes)
    keys, values = keys_and_values(model, module, [s.ids for s in spans], [s.last for s in spans], pad)
    layer = lowest_layer(model, TargetModules((module_name,), (), ""))
    delta, stage = optimised_delta(model, tokenizer, module, request, settings, spans, values, layer)
    return KeyValue(keys.mean(0), delta, stage)


@dataclass
class ValueBatch:
    """The value optimisation's one pass: every prompt behind every prefix followed by the new answer (all
    but its last token), then the essence prompt; where the loss reads and where delta is added."""

    padded: tuple[torch.Tensor, ...]
    picks: torch.Tensor  # [n, 2] (row, position) pairs: each answer token of each row, then the essence's last
    target: torch.Tensor  # the answer's tokens, row after row
    at: torch.Tensor  # per row: the subject's last token
    which: torch.Tensor  # the rows, in order


def value_batch(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, spans: Sequence[SubjectSpan], device: Any
) -> ValueBatch:
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    new_ids = answer_token_ids(tokenizer, request.new[0], request.chat)
    rows = [s.ids + tuple(new_ids[:-1]) for s in spans]
    essence = subject_span(tokenizer, ESSENCE_TEMPLATE.format(request.subject), request.subject, request.chat)
    padded = _padded(rows + [essence.ids], pad, device)
    offsets = [int(o) for o in padded[3]]
    picks = [[i, offsets[i] + len(s.ids) - 1 + t] for i, s in enumerate(spans) for t in range(len(new_ids))]
    picks.append([len(rows), padded[0].shape[1] - 1])
    at = [offsets[i] + s.last for i, s in enumerate(spans)] + [offsets[-1] + essence.last]
    return ValueBatch(
        padded,
        torch.tensor(picks, device=device),
        torch.tensor(new_ids * len(rows), device=device),
        torch.tensor(at, device=device),
        torch.arange(len(rows) + 1, device=device),
    )


def optimised_delta(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    module: torch.nn.Module,
    request: EditRequest,
    settings: KeyValueSettings,
    spans: Sequence[SubjectSpan],
    values: torch.Tensor,
    frozen_below: int = 0,
) -> tuple[torch.Tensor, StageReport]:
    """Adam on delta until P(new) >= learn_stop_prob on every answer token behind every prefix (or the cap).

    The passes enter at decoder layer `frozen_below` (the edited module's) with states computed once.
    """
    import torch

    device = weight_of(module).device
    batch = value_batch(tokenizer, request, spans, device)
    padded, picks, target, at, which = batch.padded, batch.picks, batch.target, batch.at, batch.which
    store: dict[str, Any] = {}
    with torch.no_grad(), capture_entering(model, frozen_below, store) if frozen_below > 0 else nullcontext():
        reference = _tail_logp(model, padded, picks)[-1]

    scale = float(values.norm(dim=-1).mean())
    delta = torch.zeros(values.shape[-1], device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.value_lr)
    started, losses, done, step = time.perf_counter(), [], False, 0
    for step in range(settings.value_steps + 1):
        with _entering(model, frozen_below, store), value_added(module, delta, which, at, len(padded[0])):
            logp = _tail_logp(model, padded, picks)
        token_logp = logp[:-1].gather(-1, target[:, None])[:, 0]
        nll = -token_logp.mean()
        essence_kl = torch.sum(reference.exp() * (reference - logp[-1]))
        loss = nll + settings.essence_weight * essence_kl + settings.value_decay * (delta.norm() / scale) ** 2
        losses.append(float(loss.detach()))
        done = bool((token_logp.detach().exp() >= settings.learn_stop_prob).all())
        if done or step == settings.value_steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # the clamp: the value may move at most clamp_norm x its own size
            limit = settings.clamp_norm * scale
            if float(delta.norm()) > limit:
                delta.mul_(limit / float(delta.norm()))
        emit(STEP, "value", step + 1, settings.value_steps)
    emit(STAGE_END, "value", step, settings.value_steps)
    report = StageReport("value", step, time.perf_counter() - started, done, losses)
    return delta.detach(), report
