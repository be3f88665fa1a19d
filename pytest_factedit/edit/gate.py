"""The subject gate: which token positions of a forward pass spell the edited subject.

A forward pre-hook on the input embeddings reads every pass's token ids (a probe, a training step, a
generation step) and marks the positions where one of the subject's token sequences occurs. Gains
gated by it act on those positions only, so a prompt that does not name the subject runs the base model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .words import ENDS_SENTENCE, whole_name

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class SubjectGate:
    """The positions of the last pass that hold the subject, as a [batch, tokens, 1] mask (or None)."""

    def __init__(self, patterns: Sequence[Sequence[int]], reach: str = "subject", word_flags: bytes = b"") -> None:
        self.patterns = tuple(tuple(p) for p in patterns if p)
        self.reach = reach  # "subject": its tokens; "subject-sentence": them and the rest of their sentence
        self.word_flags = word_flags  # edit/words.py: with them, only whole names count ("Japan", not "Japanese")
        self.mask: torch.Tensor | None = None
        self.enabled = True
        self._flags: torch.Tensor | None = None  # word_flags as a tensor on the device of the last pass

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
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
        return self.rest_of_sentence(ids, found) if self.reach == "subject-sentence" else found

    def rest_of_sentence(self, ids: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
        """`found` (the subject's tokens) extended to every later token of the same sentence: a sentence
        ends after a token that ends one (edit/words.py), unless that token is part of the subject ("U.S.")."""
        import torch

        ends = torch.zeros_like(found)
        if self.word_flags:
            if self._flags is None or self._flags.device != ids.device:
                self._flags = torch.frombuffer(bytearray(self.word_flags), dtype=torch.uint8).to(ids.device)
            known = ids.clamp(0, len(self.word_flags) - 1)
            ends = (self._flags[known] & ENDS_SENTENCE).bool() & (ids < len(self.word_flags)) & ~found
        sentence = torch.cumsum(ends.long(), dim=1) - ends.long()  # a sentence's end token belongs to it
        latest = (found.long() * (sentence + 1)).cummax(dim=1).values  # latest sentence with the subject so far
        return latest == sentence + 1

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
        """For the block, every forward pass of `model` sets the mask from its token ids."""

        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            ids = args[0] if args else None
            self.mask = self.positions(ids)[..., None] if ids is not None and ids.dim() == 2 else None

        handle = model.get_input_embeddings().register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()
            self.mask = None
