"""The subject gate: which token positions of a forward pass spell the edited subject.

A forward pre-hook on the model's decoder reads every pass's token ids (a probe, a training step, a
generation step) and marks the positions where one of the subject's token sequences occurs. Gains
gated by it act on those positions only, so a prompt that does not name the subject runs the base model.
A pass that continues a key-value cache (a generation step) sees only its new tokens: the gate keeps
what it needs of the text before (its last tokens, whether the subject's sentence is still open) with
the cache (`model/kv.py: row_state`), so a generated answer is gated as the same text in one pass is.

`SubjectGate` is one edit's gate and the definition of what it marks. An edit on a model does not
hook it in itself: every gated edit on a model goes behind one shared gate (edit/gate_registry.py) that
marks, in one walk, what each edit's `SubjectGate.reading` and `scale` would, bit for bit, at a cost
that does not grow with the number of edits. `reading` and `scale` stay as that reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from ..model.kv import cache_keyword, returned_cache, row_state
from ..model.lmhead import decoder
from .words import ENDS_SENTENCE, whole_name

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


# what a gate can mark: "subject", its tokens; "subject-sentence", them and the rest of their sentence;
# "after-subject", that rest alone, so that the subject's own states, which every question about it reads,
# stay the base model's
REACHES = ("subject", "subject-sentence", "after-subject")
SENTENCE_REACHES = REACHES[1:]  # the reaches that run on to the end of the sentence
LOOK_BACK = 8  # tokens kept before a continued pass, beyond the longest pattern (whole_name reads the word before)


class SubjectGate:
    """The positions of the last pass that hold the subject, as a [batch, tokens, 1] mask (or None)."""

    def __init__(self, patterns: Sequence[Sequence[int]], reach: str = "subject", word_flags: bytes = b"") -> None:
        self.patterns = tuple(tuple(p) for p in patterns if p)
        self.reach = reach  # one of REACHES
        self.word_flags = word_flags  # edit/words.py: with them, only whole names count ("Japan", not "Japanese")
        self.mask: torch.Tensor | None = None
        self.enabled = True
        self._flags: torch.Tensor | None = None  # word_flags as a tensor on the device of the last pass
        self.kept_tokens = max((len(p) for p in self.patterns), default=0) + LOOK_BACK  # carried to a continued pass

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        """A [batch, tokens] bool mask of the positions gains act on, for a pass that starts the text."""
        return self.continued(ids, None)[0]

    def untouched(self, ids: Sequence[int]) -> int:
        """How many leading tokens of this text (a pass that starts it) the gate leaves closed: gated gains
        leave their states as the base model's (all of them when it never opens)."""
        import torch

        opened = self.positions(torch.tensor([list(ids)], dtype=torch.long))[0].nonzero()
        return int(opened[0, 0]) if len(opened) else len(ids)

    def continued(
        self, ids: torch.Tensor, before: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(the mask of `ids`, the state to continue from): `before` is the state the pass that ended
        where these ids begin left (its last tokens, and whether the subject's sentence was still open)."""
        import torch

        tail, still_open = before if before is not None else (ids[:, :0], None)
        joined = torch.cat([tail, ids], dim=1)
        found = self.found(joined)[:, tail.shape[1] :]
        mask, open_after = found, None
        if self.reach in SENTENCE_REACHES:
            mask, ends = self.rest_of_sentence(ids, found, still_open)
            open_after = mask[:, -1] & ~ends[:, -1] if ids.shape[1] else still_open
            if self.reach == "after-subject":
                mask = mask & ~found
        if open_after is None:
            open_after = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        return mask, (joined[:, -self.kept_tokens :], open_after)

    def may_open(self, ids: Sequence[int]) -> bool:
        """Does a pattern occur anywhere in this text's ids, as a whole name or not? A text it does not
        occur in is one the gate never opens on, whatever its padding or the text before it."""
        for pattern in self.patterns:
            size = len(pattern)
            if any(tuple(ids[start : start + size]) == pattern for start in range(len(ids) - size + 1)):
                return True
        return False

    def found(self, ids: torch.Tensor) -> torch.Tensor:
        """A [batch, tokens] bool mask: True on every token of every occurrence of a pattern."""
        import torch

        found = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        rows: list[list[int]] | None = None
        for pattern in self.patterns:
            size = len(pattern)
            if size > ids.shape[1]:
                continue
            wanted = torch.tensor(pattern, dtype=ids.dtype, device=ids.device)
            starts = (ids.unfold(1, size, 1) == wanted).all(-1)  # [batch, tokens - size + 1]
            if self.word_flags and bool(starts.any()):
                rows = ids.tolist() if rows is None else rows
                for b, s in starts.nonzero().tolist():
                    starts[b, s] = whole_name(rows[b], s, s + size, self.word_flags)
            for offset in range(size):
                found[:, offset : offset + starts.shape[1]] |= starts
        return found

    def rest_of_sentence(
        self, ids: torch.Tensor, found: torch.Tensor, still_open: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(`found` (the subject's tokens) extended to every later token of the same sentence, the tokens
        that end a sentence): a sentence ends after a token that ends one (edit/words.py), unless that
        token is part of the subject ("U.S."). `still_open`: rows whose text before `ids` is inside a
        sentence that names the subject."""
        import torch

        ends = torch.zeros_like(found)
        if self.word_flags:
            if self._flags is None or self._flags.device != ids.device:
                self._flags = torch.frombuffer(bytearray(self.word_flags), dtype=torch.uint8).to(ids.device)
            known = ids.clamp(0, len(self.word_flags) - 1)
            ends = (self._flags[known] & ENDS_SENTENCE).bool() & (ids < len(self.word_flags)) & ~found
        sentence = torch.cumsum(ends.long(), dim=1) - ends.long()  # a sentence's end token belongs to it
        latest = (found.long() * (sentence + 1)).cummax(dim=1).values  # latest sentence with the subject so far
        if still_open is not None:  # the first sentence began before these ids, with the subject in it
            latest = torch.maximum(latest, still_open.long()[:, None])
        return latest == sentence + 1, ends

    def scale(self, x: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        """x scaled by `gain` where the subject is, unchanged elsewhere (and when the gate is off or the
        pass is not the one the mask was read from)."""
        mask = self.mask
        if mask is not None and x.dim() == 2 and x.shape[0] == mask.shape[0] * mask.shape[1]:
            mask = mask.reshape(-1, 1)  # a module that sees the batch's tokens as one list (a shared expert)
        if gain is None or not self.enabled or mask is None or tuple(mask.shape[:-1]) != tuple(x.shape[:-1]):
            return x
        mask = mask.to(x.device, x.dtype)  # a device-mapped model reads the ids on another device
        return x * (1 + mask * (gain.to(x.dtype) - 1))

    @contextmanager
    def reading(self, model: PreTrainedModel) -> Iterator[None]:
        """For the block, every forward pass of `model` sets the mask from its token ids (and, when it
        continues a key-value cache, from the state the gate kept with that cache)."""
        body = decoder(model)
        keyword = cache_keyword(body)
        state_name = f"subject-gate-{id(self)}"
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []

        def before_pass(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            pending.clear()
            if ids is None or ids.dim() != 2:
                self.mask = None
                return
            cache = kwargs.get(keyword)
            continues = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
            kept = row_state(cache).get(state_name) if continues else None
            if kept is not None and kept[0].shape[0] != ids.shape[0]:  # rows selected by code that does not carry it
                kept = None
            mask, after = self.continued(ids, (kept[0], kept[1]) if kept is not None else None)
            self.mask = mask[..., None]
            pending.append(after)

        def after_pass(_module: Any, _args: Any, output: Any) -> None:
            cache = returned_cache(output) if pending else None
            if cache is not None and hasattr(cache, "get_seq_length"):
                row_state(cache)[state_name] = pending[0]

        with ExitStack() as hooks:
            hooks.callback(body.register_forward_pre_hook(before_pass, with_kwargs=True).remove)
            hooks.callback(body.register_forward_hook(after_pass).remove)
            try:
                yield
            finally:
                self.mask = None
