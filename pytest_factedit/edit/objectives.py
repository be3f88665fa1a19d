"""What every editor optimizes: the training rows, the unlearn and learn goals, and the retention rows.

Shared so that editors differ only in *which weights* move, not in what they are asked to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..metrics.answers import matches
from ..model.decoding import DecodeRow
from ..model.generated import generated_prefixes
from ..model.probe_cache import base_decode
from ..model.text import answer_token_ids, encode_prompt, one_text
from .base import EditRequest
from .batching import FrozenBelow, Row, base_tails, kl_to_reference
from .prefixes import Untouched, UntouchedPrefixes
from .retention import (
    RELATION_TEMPLATES,
    derived_neighbours,
    fact_texts,
    neutral_texts,
    subject_texts,
    without_held_out,
)
from .second_order import SecondOrderReference, head_is_linear_and_fixed, second_order_references
from .settings import EditSettings, TrainingLoopSettings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

NEUTRAL_TAIL = 2

# (log-probs of the training rows, which facts they belong to in a batch or None for all) -> (loss, reached)
Goal = Callable[[list["torch.Tensor"], Sequence[int] | None], tuple["torch.Tensor", bool]]


@dataclass
class Objectives:
    """Rows and goals of one edit, with the base model's reference distributions computed once."""

    unlearn_rows: list[Row]
    learn_rows: list[Row]
    kl_rows: list[Row]
    # the base model's log-probabilities [tail, vocab], or its second-order form (edit/second_order.py);
    # None: a row the edit cannot reach (its KL stays 0, no pass)
    kl_reference: list[torch.Tensor | SecondOrderReference | None]
    unlearn_goal: Goal
    learn_goal: Goal
    pad_id: int
    fact_sizes: tuple[int, ...] = ()  # batch: each fact's number of rows, in order (same in both stages)
    frozen: FrozenBelow | None = None  # hidden states below the lowest adapted layer, computed once
    pinned: int = 0  # the first `pinned` KL rows (about the subject) are held at every step; the rest rotate
    prefixes: UntouchedPrefixes | None = None  # a gated edit: each row's tokens before it can act, run once

    def reference(self, index: int) -> torch.Tensor | SecondOrderReference:
        """The base model's distributions of KL row `index` (a row the edit reaches), or their second-order form."""
        found = self.kl_reference[index]
        if found is None:
            raise ValueError(f"KL row {index} is one the edit cannot reach; it has no reference")
        return found

    def stage(self, name: str, settings: TrainingLoopSettings) -> tuple[list[Row], Goal, int]:
        """(training rows, goal, step cap) of the `unlearn` or `learn` stage."""
        if name not in ("unlearn", "learn"):
            raise ValueError(f"unknown stage {name!r}; expected unlearn or learn")
        max_steps, _ = settings.stage_limits(name)
        if name == "unlearn":
            return self.unlearn_rows, self.unlearn_goal, max_steps
        return self.learn_rows, self.learn_goal, max_steps


SUBJECT_ROW_TOKENS = 3  # base tokens of a subject row's continuation whose distributions are held


def subject_rows(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, request: EditRequest, settings: TrainingLoopSettings
) -> list[Row]:
    """KL rows about the subject (`subject_rows` texts, then `relation_rows` questions of its other
    relations): each text with the base model's continuation, held on every token of it; a text whose
    continuation names the old answer is the edited fact itself and is dropped (holding it would fight the
    edit)."""
    asked = subject_decode_rows(tokenizer, request, settings)
    rows = []
    for row, found in zip(asked, base_decode(model, tokenizer, asked)):
        tokens = found.tokens[:SUBJECT_ROW_TOKENS]
        if tokens and not matches(one_text(tokenizer.decode(list(found.tokens))), request.old):
            rows.append(Row(row.ids + tuple(tokens), len(tokens)))
    return rows


def subject_decode_rows(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, settings: TrainingLoopSettings
) -> list[DecodeRow]:
    """The base-model decodes `subject_rows` reads: each text about the subject, run on twice as far as the
    tokens held (what follows shows whether the text states the edited fact)."""
    avoid = request.held_out + request.prompts
    texts = subject_texts(request.subject, avoid, settings.subject_rows)
    texts += subject_texts(request.subject, avoid, settings.relation_rows, RELATION_TEMPLATES)
    return [DecodeRow(encode_prompt(tokenizer, t, request.chat), 2 * SUBJECT_ROW_TOKENS, True) for t in texts]


def retention_rows(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, settings: TrainingLoopSettings
) -> list[Row]:
    """KL rows: neutral sentences, derived neighbours, general facts and the case's anchors.

    Never a held-out text, and never one of the prompts being edited (holding those at their base answer
    would fight the edit).
    """
    avoid = request.held_out + request.prompts
    neutral = [Row(encode_prompt(tokenizer, t, False), NEUTRAL_TAIL) for t in neutral_texts(avoid)]
    fact_like = derived_neighbours(request.prompts, request.subject, request.held_out, settings.neighbours_per_prompt)
    fact_like += fact_texts(avoid)
    fact_like += without_held_out(request.anchors, avoid)
    return neutral + [Row(encode_prompt(tokenizer, t, request.chat), 1) for t in fact_like]


def base_continuations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, contexts: Sequence[tuple[int, ...]], n_tokens: int
) -> list[tuple[int, ...]]:
    """The base model's greedy tokens after each context (what the fluency guard keeps): `n_tokens`, or
    up to an end-of-sequence token and then padding, as long as the longest row (as `generate` pads)."""
    if n_tokens == 0:
        return [() for _ in contexts]
    found = [d.tokens for d in base_decode(model, tokenizer, continuation_decode_rows(contexts, n_tokens))]
    width = max(len(t) for t in found)
    return [t + (tokenizer.pad_token_id,) * (width - len(t)) for t in found]


def continuation_decode_rows(contexts: Sequence[tuple[int, ...]], n_tokens: int) -> list[DecodeRow]:
    """The base-model decodes `base_continuations` asks for: `n_tokens` after each context, through line breaks."""
    return [DecodeRow(c, n_tokens, False) for c in contexts] if n_tokens else []


def objective_base_decodes(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, settings: TrainingLoopSettings
) -> list[DecodeRow]:
    """The base-model decodes `build_objectives` will ask for one fact (`base_decode`), known before it runs,
    so that a run can decode them in one batch with the base probe's rows (many cases' in a base pass): the
    subject rows' texts and the guard's contexts (in the loaded precision under any training precision:
    `base_decode`); the guard's are left out where the model writes prefixes itself (they need a decode
    first)."""
    rows = subject_decode_rows(tokenizer, request, settings)
    if request.chat or settings.generated_prefixes == 0:
        new_ids, guard_tokens = answer_row(tokenizer, request, settings)
        contexts = training_contexts(tokenizer, request, given_prefixes(request, settings))
        rows += continuation_decode_rows([c + new_ids for c in contexts], guard_tokens)
    return rows


class ObjectiveDecodes:
    """For the editors that train on `build_objectives`: `base_decodes`, the base-model decodes their `apply`
    will ask for (see `objective_base_decodes`)."""

    settings_class: ClassVar[type[TrainingLoopSettings]]  # each editor's own: what `apply` reads

    def base_decodes(
        self, tokenizer: PreTrainedTokenizerBase, request: EditRequest, settings: EditSettings
    ) -> list[DecodeRow]:
        return objective_base_decodes(tokenizer, request, self.settings_class.of(settings))


def build_objectives(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest | Sequence[EditRequest],
    settings: TrainingLoopSettings,
    frozen_below: int = 0,
    untouched: Untouched | None = None,
) -> Objectives:
    """The objectives of one fact, or of several trained at once (batch mode: see `joint_objectives`).

    With `frozen_below` > 0 (the lowest layer the edit changes), the hidden states entering that layer
    are kept from the base model's reference pass, and training steps start there. With `untouched` (a
    gated edit: how many leading tokens of a text its gate leaves closed), a retention row the edit cannot
    reach gets no reference and no pass (its KL to the base model is 0 at every step, and its gradient
    exactly 0), and each step runs a row only from the first token the edit can act on
    (edit/prefixes.py).
    """
    if isinstance(request, EditRequest):
        return fact_objectives(model, tokenizer, request, settings, frozen_below, untouched)
    parts = [fact_objectives(model, tokenizer, r, settings, frozen_below, untouched) for r in request]
    return joint_objectives(parts)


def joint_objectives(parts: Sequence[Objectives]) -> Objectives:
    """Several facts' objectives as one: their rows side by side, each fact's goal on its own rows.

    The joint loss is the mean of the facts' losses; a goal is reached when every fact reached it.
    Retention rows shared by several facts (neutral text, general facts) are kept once.
    """
    kl_rows: list[Row] = []
    kl_reference: list[torch.Tensor | SecondOrderReference | None] = []
    seen: set[Row] = set()
    pinned = [(p.kl_rows[i], p.kl_reference[i]) for p in parts for i in range(p.pinned)]
    rotating = [(p.kl_rows[i], p.kl_reference[i]) for p in parts for i in range(p.pinned, len(p.kl_rows))]
    for row, reference in pinned + rotating:  # every fact's pinned rows first
        if row not in seen:
            seen.add(row)
            kl_rows.append(row)
            kl_reference.append(reference)
    pinned_count = len({row for row, _ in pinned})
    sizes = tuple(len(p.unlearn_rows) for p in parts)
    assert sizes == tuple(len(p.learn_rows) for p in parts), "a fact has as many learn rows as unlearn rows"
    frozen = [p.frozen for p in parts]
    joint_frozen = None
    if all(f is not None for f in frozen) and len({(f.layer, f.extras) for f in frozen if f is not None}) == 1:
        first = frozen[0]
        assert first is not None
        joint_frozen = FrozenBelow(first.layer, {k: v for f in frozen if f for k, v in f.states.items()}, first.extras)
    return Objectives(
        [r for p in parts for r in p.unlearn_rows],
        [r for p in parts for r in p.learn_rows],
        kl_rows,
        kl_reference,
        _joint_goal([p.unlearn_goal for p in parts], sizes),
        _joint_goal([p.learn_goal for p in parts], sizes),
        parts[0].pad_id,
        sizes,
        joint_frozen,
        pinned_count,
        _joint_prefixes(parts),
    )


def _joint_prefixes(parts: Sequence[Objectives]) -> UntouchedPrefixes | None:
    """The facts' untouched prefixes as one pass: every part's edit is the same gated one, or none is gated."""
    first = parts[0].prefixes
    if first is None:
        return None
    return UntouchedPrefixes(first.untouched, [r for p in parts if p.prefixes for r in p.prefixes.rows])


def _joint_goal(goals: Sequence[Goal], sizes: Sequence[int]) -> Goal:
    """The mean of the facts' losses over the rows given (of `facts`, or of every fact); reached when all are."""

    def goal(logps: list[torch.Tensor], facts: Sequence[int] | None = None) -> tuple[torch.Tensor, bool]:
        import torch

        losses, reached, start = [], True, 0
        for fact in facts if facts is not None else range(len(goals)):
            loss, done = goals[fact](logps[start : start + sizes[fact]], None)
            losses.append(loss)
            reached = reached and done
            start += sizes[fact]
        return torch.stack(losses).mean(), reached

    return goal


def unlearn_targets(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, new_ids: Sequence[int]
) -> tuple[int, dict[int, list[int]]]:
    """(how many tokens of `new` the unlearn rows carry, position -> tokens of `old` to push down there).

    Each alias of `old` is pushed down where it departs from `new`: on its first token, or, when the two
    begin alike ("Larry Page" -> "Larry Ellison"), on its first token after the shared ones, so the stage
    never unlearns what the learn stage must then teach. An alias that is a prefix of `new` (old "Larry",
    new "Larry Ellison") cannot be unlearned without the new answer and is left to the learn stage.
    """
    targets: dict[int, set[int]] = {}
    for alias in request.old:
        ids = answer_token_ids(tokenizer, alias, request.chat)
        shared = 0
        while shared < min(len(ids), len(new_ids)) and ids[shared] == new_ids[shared]:
            shared += 1
        if shared < len(ids):
            targets.setdefault(shared, set()).add(ids[shared])
    carried = max(targets, default=0)
    return carried, {position: sorted(tokens) for position, tokens in sorted(targets.items())}


def unlearn_goal(old_targets: dict[int, list[int]], settings: TrainingLoopSettings) -> Goal:
    """Unlikelihood of the old answer's tokens at their positions (`unlearn_targets`); reached when each
    is below the unlearn stage's stop probability on every row (at once when nothing is left to unlearn).
    The probability is read when the stage runs: an editor without an unlearn stage has none."""

    def goal(logps: list[torch.Tensor], facts: Sequence[int] | None = None) -> tuple[torch.Tensor, bool]:
        import torch

        if not old_targets:
            return logps[0].sum() * 0.0, True
        p_old = torch.stack([lp[at, tokens].exp().sum() for lp in logps for at, tokens in old_targets.items()])
        loss = -torch.log1p(-p_old.clamp(max=1 - 1e-6)).mean()
        _, stop_prob = settings.stage_limits("unlearn")
        return loss, bool((p_old < stop_prob).all())

    return goal


def learn_goal(
    new_ids: tuple[int, ...], guard_reference: Sequence[torch.Tensor], settings: TrainingLoopSettings
) -> Goal:
    """NLL of the new answer's tokens plus `guard_weight` x the KL to the base model on the guard tokens
    after it (`guard_reference`, per learn row); reached when every answer token is the argmax and
    P(first token) >= learn_stop_prob on every row."""
    import torch

    n = len(new_ids)
    target = torch.tensor(new_ids, device=guard_reference[0].device if guard_reference else None)

    def goal(logps: list[torch.Tensor], facts: Sequence[int] | None = None) -> tuple[torch.Tensor, bool]:
        nll = torch.stack([-lp[:n].gather(-1, target[:, None]).mean() for lp in logps]).mean()
        guard = torch.stack([kl_to_reference(ref, lp[n:]) for ref, lp in zip(guard_reference, logps)]).mean()
        done = all(
            bool((lp[:n].argmax(-1) == target).all())
            and float(lp[0, new_ids[0]].detach().exp()) >= settings.learn_stop_prob
            for lp in logps
        )
        return nll + settings.guard_weight * guard, done

    return goal


def answer_row(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, settings: TrainingLoopSettings
) -> tuple[tuple[int, ...], int]:
    """(the tokens trained after each prompt, how many base tokens the guard holds after them): the new
    answer, with `append_eos` followed by end-of-sequence and no guard (nothing follows an ended text)."""
    new_ids = tuple(answer_token_ids(tokenizer, request.new[0], request.chat))
    if settings.append_eos and tokenizer.eos_token_id is not None:
        return new_ids + (tokenizer.eos_token_id,), 0
    return new_ids, settings.guard_tokens


def training_prefixes(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, request: EditRequest, settings: TrainingLoopSettings
) -> tuple[str, ...]:
    """The texts put before each training prompt: `context_prefixes` and `generated_prefixes` the model
    wrote itself (chat prompts are trained as a fresh conversation only)."""
    if request.chat:
        return given_prefixes(request, settings)
    return given_prefixes(request, settings) + generated_prefixes(model, tokenizer, settings.generated_prefixes)


def given_prefixes(request: EditRequest, settings: TrainingLoopSettings) -> tuple[str, ...]:
    """The training prefixes the settings spell out (`context_prefixes`; none but "" for chat prompts)."""
    return ("",) if request.chat else tuple(settings.context_prefixes)


def training_contexts(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, prefixes: Sequence[str]
) -> list[tuple[int, ...]]:
    """Every training prompt behind every prefix, as token ids."""
    return [
        encode_prompt(tokenizer, prefix + prompt, request.chat) for prompt in request.prompts for prefix in prefixes
    ]


def fact_objectives(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    settings: TrainingLoopSettings,
    frozen_below: int = 0,
    untouched: Untouched | None = None,
) -> Objectives:
    """Training rows (prompts behind each context prefix), goals, and retention rows with base references
    (none for a row the edit cannot reach: `untouched` is its whole length).

    Unlearn: unlikelihood -log(1 - P(old)) on the first token of every alias of `old` (after the tokens
    it shares with `new`: `unlearn_targets`); reached when P(old) < unlearn_stop_prob on every row.
    Learn: NLL of the first alias of `new` plus a KL guard on the `guard_tokens` the base model continues
    with; reached when every answer token is the argmax and P(first token) >= learn_stop_prob on every row.
    """
    import torch

    pad = tokenizer.pad_token_id
    new_ids, guard_tokens = answer_row(tokenizer, request, settings)
    carried, old_targets = unlearn_targets(tokenizer, request, new_ids)
    contexts = training_contexts(tokenizer, request, training_prefixes(model, tokenizer, request, settings))
    pinned = subject_rows(model, tokenizer, request, settings)
    kl_rows = pinned + retention_rows(tokenizer, request, settings)
    guards = base_continuations(model, tokenizer, [c + new_ids for c in contexts], guard_tokens)
    learn_rows = [Row(c + new_ids + g, len(new_ids) + len(g) + 1) for c, g in zip(contexts, guards)]
    reached = [i for i, row in enumerate(kl_rows) if untouched is None or untouched(row.ids) < len(row.ids)]
    unlearn_rows = [Row(c + new_ids[:carried], carried + 1) for c in contexts]
    run = [*unlearn_rows, *learn_rows, *(kl_rows[i] for i in reached)]  # the rows a step may run
    prefixes = UntouchedPrefixes(untouched, run) if untouched is not None else None
    referenced = [kl_rows[i] for i in reached] + learn_rows
    with torch.no_grad():  # these passes also make the prefixes' shared pass (edit/prefixes.py)
        reference, hidden, frozen = base_tails(model, referenced, pad, frozen_below, prefixes)
        held = held_references(model, reference[: len(reached)], hidden[: len(reached)], settings)
    kl_reference: list[torch.Tensor | SecondOrderReference | None] = [None] * len(kl_rows)
    for i, ref in zip(reached, held):
        kl_reference[i] = ref
    guard_reference = [ref[len(new_ids) :] for ref in reference[len(reached) :]]
    return Objectives(
        unlearn_rows,
        learn_rows,
        kl_rows,
        kl_reference,
        unlearn_goal(old_targets, settings),
        learn_goal(new_ids, guard_reference, settings),
        pad,
        frozen=frozen,
        pinned=len(pinned),
        prefixes=prefixes,
    )


def held_references(
    model: PreTrainedModel,
    logps: Sequence[torch.Tensor],
    hidden: Sequence[torch.Tensor],
    settings: TrainingLoopSettings,
) -> list[torch.Tensor | SecondOrderReference]:
    """What a retention row's KL compares with: the base log-probabilities, or under `kl_form: second-order`
    (where the head is one frozen linear map) their second-order form in the row's final hidden states."""
    if settings.kl_form != "second-order" or not head_is_linear_and_fixed(model):
        return list(logps)
    return list(second_order_references(model.get_output_embeddings().weight, logps, hidden))
