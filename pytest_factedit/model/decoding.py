"""Batched greedy decoding over a key-value cache: every prompt of a probe in one pass.

One prefill of the left-padded prompts gives each row's first-token distribution: the first greedy
token, and the rank and log-probability of each candidate answer's first token. The cache then serves
the greedy steps (a row leaves the batch once it ends, so late steps cost only the rows still going),
one teacher-forced pass over the candidates' remaining tokens, and timed single steps for latency
(their decoder pass and their LM head timed apart).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .head_argmax import greedy_tokens, ready_screen
from .kv import cache_keyword, cache_rows, returned_cache, select_rows
from .lmhead import decoder, fast_linears, logits_from_hidden
from .text import decoding_sets, ends_line

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Tokens = tuple[int, ...]

# One forward pass of a probe holds at most this many tokens, rows x padded length (prompt, then the
# answer tokens generated or teacher-forced after it), and at most MAX_BATCH_ROWS rows: activations
# and key-value cache of an 8,192-token sequence, whatever the case. A row longer than that runs alone
# (the run-time cap keeps it within the model's context).
MAX_BATCH_TOKENS = 8_192
MAX_BATCH_ROWS = 64
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_positions(model: PreTrainedModel) -> int | None:
    """How many positions the model was built for (its config's context length); None when it says none."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def token_batches(shapes: Sequence[tuple[int, int]], max_rows: int, max_tokens: int = MAX_BATCH_TOKENS) -> list[range]:
    """Consecutive runs of rows (`shapes`: each row's prompt and answer tokens), each at most `max_rows`
    rows and `max_tokens` rows x (longest prompt + longest answer), the padded size the pass reaches; a
    row larger than that alone. The batches that keep a pass's memory bounded."""
    out: list[range] = []
    start, head, tail = 0, 0, 0
    for end, (prompt, answer) in enumerate(shapes):
        head, tail = max(head, prompt), max(tail, answer)
        if end > start and ((end - start + 1) * (head + tail) > max_tokens or end - start >= max_rows):
            out.append(range(start, end))
            start, head, tail = end, prompt, answer
    if shapes:
        out.append(range(start, len(shapes)))
    return out


@dataclass(frozen=True)
class DecodeRow:
    """One prompt (token ids as the model sees them), the candidate answers to score, and where its greedy
    tokens stop: at an end-of-sequence token, after `max_tokens`, at a line break (`stop_at_newline`: the
    judged part of an answer ends there), or once `settled` says the tokens so far decide the answer."""

    ids: Tokens
    max_tokens: int
    stop_at_newline: bool = True
    candidates: tuple[Tokens, ...] = ()
    settled: Callable[[Tokens], bool] | None = None

    def stops_after(self, tokens: Tokens, stops: frozenset[int], is_line_break: Callable[[int], bool]) -> bool:
        """Does decoding stop once `tokens` (not empty) are generated?"""
        last = tokens[-1]
        return (
            last in stops
            or len(tokens) >= self.max_tokens
            or (self.stop_at_newline and is_line_break(last))
            or (self.settled is not None and self.settled(tokens))
        )

    def stop_point(self, tokens: Tokens, stops: frozenset[int], is_line_break: Callable[[int], bool]) -> int | None:
        """How many of `tokens` (a longer greedy run) this row would have generated; None: more than those."""
        if self.max_tokens <= 0:
            return 0
        for end in range(1, len(tokens) + 1):
            if self.stops_after(tokens[:end], stops, is_line_break):
                return end
        return None


@dataclass(frozen=True)
class CandidateScore:
    """A candidate answer, teacher-forced after the prompt: log P summed over its tokens, how many tokens,
    and the rank of its first token in the first-step distribution (0: the greedy choice)."""

    logprob: float
    tokens: int
    first_rank: int

    @property
    def mean(self) -> float:
        return self.logprob / self.tokens


@dataclass(frozen=True)
class Decoded:
    """Greedy tokens of one row; `ended` when an end-of-sequence token stopped it (no budget gives more)."""

    tokens: Tokens
    ended: bool
    scores: Mapping[Tokens, CandidateScore]


@dataclass
class Prefilled:
    """Prompts run once: their cache, padded attention mask, lengths, greedy first tokens and
    first-step log-probabilities [rows, vocab]."""

    cache: Any
    mask: torch.Tensor
    lengths: tuple[int, ...]
    first: torch.Tensor
    first_logp: torch.Tensor

    def subset(self, rows: Sequence[int]) -> Prefilled:
        """A copy holding only `rows` (the original cache is left as it is)."""
        import torch

        index = torch.tensor(list(rows), device=self.mask.device, dtype=torch.long)
        return Prefilled(
            cache_rows(self.cache, index),
            self.mask[index],
            tuple(self.lengths[r] for r in rows),
            self.first[index],
            self.first_logp[index],
        )


def left_padded(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) with every sequence right-aligned, its positions from 0."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        if sequence:
            ids[i, width - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
            mask[i, width - len(sequence) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def prefill(model: PreTrainedModel, prompts: Sequence[Tokens], pad_id: int) -> Prefilled:
    """Run the left-padded prompts once, keeping the cache and the first-step distribution."""
    import torch

    device = next(model.parameters()).device
    ids, mask, positions = left_padded(prompts, pad_id, device)
    with torch.no_grad():
        out = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        # one row after another in memory (the head's product of a few rows comes transposed): an argmax over
        # a transposed product is several times slower, and log_softmax would copy it so anyway (same bits)
        logits = logits_from_hidden(model, out.last_hidden_state[:, -1]).contiguous()
    return Prefilled(
        returned_cache(out),
        mask,
        tuple(len(p) for p in prompts),
        logits.argmax(-1),  # as generate() picks: the argmax of the raw logits
        torch.log_softmax(logits.float(), dim=-1),
    )


def greedy(
    model: PreTrainedModel,
    pre: Prefilled,
    rows: Sequence[DecodeRow],
    stops: frozenset[int],
    is_line_break: Callable[[int], bool],
) -> list[tuple[Tokens, bool]]:
    """(tokens, ended) per row: greedy steps on `pre`'s cache, which they extend (use it once)."""
    import torch

    keyword = cache_keyword(decoder(model))
    out: list[list[int]] = [[] for _ in rows]
    ended = [False] * len(rows)
    lengths = pre.lengths  # by row of `rows`, before any row leaves
    active = [r for r, row in enumerate(rows) if row.max_tokens > 0]
    if not active:
        return [((), False) for _ in rows]
    if len(active) < len(rows):  # rows with nothing to generate leave before the first step
        pre = pre.subset(active)
    following, mask, cache = pre.first, pre.mask, pre.cache
    while active:
        going = []
        for k, r in enumerate(active):
            token = int(following[k])
            out[r].append(token)
            ended[r] = token in stops
            if not rows[r].stops_after(tuple(out[r]), stops, is_line_break):
                going.append(k)
        if not going:
            break
        if len(going) < len(active):
            index = torch.tensor(going, device=mask.device, dtype=torch.long)
            select_rows(cache, index)
            mask, following, active = mask[index], following[index], [active[k] for k in going]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        positions = torch.tensor([[lengths[r] + len(out[r]) - 1] for r in active], device=mask.device)
        with torch.no_grad():
            hidden = decoder(model)(
                input_ids=following[:, None],
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{keyword: cache},
            ).last_hidden_state
            following = greedy_tokens(model, hidden[:, -1])  # the head's argmax, screened where faster
    return [(tuple(tokens), end) for tokens, end in zip(out, ended)]


def candidate_scores(
    model: PreTrainedModel, pre: Prefilled, candidates: Sequence[Sequence[Tokens]], pad_id: int, chunk: int = 32
) -> list[dict[Tokens, CandidateScore]]:
    """Each row's candidates teacher-forced after its prompt: the first token from the prefill, the rest
    in one pass over a copy of the cache (rows repeated per candidate of two or more tokens)."""

    out: list[dict[Tokens, CandidateScore]] = []
    for row, wanted in enumerate(candidates):
        logp = pre.first_logp[row]
        out.append({})
        for c in dict.fromkeys(wanted):
            first = float(logp[c[0]])
            out[row][c] = CandidateScore(first, len(c), int((logp > logp[c[0]]).sum()))
    longer = [(r, c) for r, scores in enumerate(out) for c in scores if len(c) > 1]
    for batch in token_batches([(pre.mask.shape[1], len(c)) for _, c in longer], chunk):
        part = longer[batch.start : batch.stop]
        rests = _teacher_forced(model, pre, part, pad_id)
        for (r, c), rest in zip(part, rests):
            first_token = out[r][c]
            out[r][c] = CandidateScore(first_token.logprob + rest, first_token.tokens, first_token.first_rank)
    return out


def _teacher_forced(
    model: PreTrainedModel, pre: Prefilled, pairs: Sequence[tuple[int, Tokens]], pad_id: int
) -> list[float]:
    """log P(candidate[1:] | prompt, candidate[0]) summed, for each (row, candidate)."""
    import torch

    device = pre.mask.device
    rows = torch.tensor([r for r, _ in pairs], device=device, dtype=torch.long)
    width = max(len(c) for _, c in pairs) - 1
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    extra = torch.zeros((len(pairs), width), dtype=torch.long)
    for p, (_, c) in enumerate(pairs):
        ids[p, : len(c) - 1] = torch.tensor(c[:-1])
        extra[p, : len(c) - 1] = 1
    lengths = torch.tensor([pre.lengths[r] for r, _ in pairs], device=device)
    positions = lengths[:, None] + torch.arange(width, device=device)[None, :]
    with torch.no_grad():
        hidden = decoder(model)(
            input_ids=ids.to(device),
            attention_mask=torch.cat([pre.mask[rows], extra.to(device)], dim=1),
            position_ids=positions,
            use_cache=True,
            **{cache_keyword(decoder(model)): cache_rows(pre.cache, rows)},
        ).last_hidden_state
        real = extra.to(device).bool()
        logp = torch.log_softmax(logits_from_hidden(model, hidden[real]).float(), dim=-1)  # the head where it is read
    targets = torch.tensor([t for _, c in pairs for t in c[1:]], device=device, dtype=torch.long)
    picked = logp.gather(-1, targets[:, None])[:, 0]
    return [float(part.sum()) for part in torch.split(picked, [len(c) - 1 for _, c in pairs])]


@contextmanager
def one_thread() -> Iterator[None]:
    """For the block, torch computes on the calling thread alone (restored in `finally`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class StepTime:
    """Seconds of one timed greedy step over every row of a prefilled state: its decoder pass, and taking the
    token from the last hidden states (the LM head; 0.0 where it was not timed)."""

    decoder: float
    head: float

    @property
    def total(self) -> float:
        return self.decoder + self.head


def timed_step(model: PreTrainedModel, pre: Prefilled, head: bool = True) -> StepTime:
    """One greedy step of every row of `pre` (on a copy of its cache), its two parts timed apart: the decoder
    pass, then (`head`) the token taken as `greedy` takes it. An edit that leaves the LM head as it is changes
    what the decoder costs, not the head: the latency timings then time the head once, on the last edited step
    (run/probing.py).

    On CPU, the step runs on one thread and its CPU time is counted: another process's load cannot
    inflate that (base/base ratios of min-of-3 stayed within 0.92-1.08 with two busy processes on two
    cores, where wall time read 0.54-1.95). On CUDA: wall time between synchronizations.
    """
    import torch

    cache = copy.deepcopy(pre.cache)
    mask = torch.cat([pre.mask, pre.mask.new_ones((pre.mask.shape[0], 1))], dim=1)
    positions = torch.tensor([[n] for n in pre.lengths], device=mask.device)
    cuda = pre.mask.device.type == "cuda"

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.thread_time()

    if head:
        ready_screen(model, pre.mask.shape[0])
    with torch.no_grad(), fast_linears(model), nullcontext() if cuda else one_thread():
        started = clock()
        hidden = decoder(model)(
            input_ids=pre.first[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_keyword(decoder(model)): cache},
        ).last_hidden_state
        passed = clock()
        if not head:
            return StepTime(passed - started, 0.0)
        greedy_tokens(model, hidden[:, -1])  # the token as `greedy` takes it: the head screened where faster
        return StepTime(passed - started, clock() - passed)


def row_shape(row: DecodeRow) -> tuple[int, int]:
    """A row's prompt tokens, and the most tokens that follow it: its greedy budget or its longest candidate."""
    return len(row.ids), max([row.max_tokens, *map(len, row.candidates)])


def decode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[DecodeRow],
    chunk: int = MAX_BATCH_ROWS,
) -> list[Decoded]:
    """Greedy tokens and candidate scores of every row, at most `chunk` rows and MAX_BATCH_TOKENS per prefill."""
    return decode_keeping(model, tokenizer, rows, (), chunk)[0]


def decode_keeping(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[DecodeRow],
    keep: Sequence[int],
    chunk: int = MAX_BATCH_ROWS,
) -> tuple[list[Decoded], Prefilled | None]:
    """Greedy tokens and candidate scores of every row, at most `chunk` rows and MAX_BATCH_TOKENS per prefill
    (a row's width: its prompt and the longest answer it generates or scores); and, when every row of
    `keep` is in the first batch, a copy of their prefilled state (for timed steps), else None."""
    stops, _ = decoding_sets(model, tokenizer)
    pad = tokenizer.pad_token_id

    def is_line_break(token: int) -> bool:
        return ends_line(tokenizer, token)

    out: list[Decoded] = []
    kept = None
    for batch in token_batches([row_shape(r) for r in rows], chunk):
        part = rows[batch.start : batch.stop]
        # the prefill and the candidates' pass hold many tokens: plain `F.linear` is faster there (a 59-row
        # probe's prefill: 4.0 s against 4.9 s of one core); the greedy steps hold a few rows each
        pre = prefill(model, [r.ids for r in part], pad)
        if batch.start == 0 and keep and max(keep) < len(part):
            kept = pre.subset(keep)
        scores = candidate_scores(model, pre, [r.candidates for r in part], pad)
        with fast_linears(model):
            generated = greedy(model, pre, part, stops, is_line_break)
        out += [Decoded(tokens, ended, score) for (tokens, ended), score in zip(generated, scores)]
    return out, kept
