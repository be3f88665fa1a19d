"""Activation patching on one prompt: clean run, subject corruption, restorations and gradient estimates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import SubjectNotFound
from ..model.arch import ArchModules, num_layers
from ..model.introspect import weight_of
from ..model.kv import cache_keyword, cache_prefix, cache_rows, has_row_state, returned_cache, row_state
from ..model.lmhead import decoder, head_part_product, logits_from_hidden, plain_linear_head, single_row_as_linear
from ..model.precision import bf16_head_weight
from ..model.skip import decoder_layers, hooks_allow_first_rows, layers_bypassed
from .hooks import (
    SITES,
    capture_hook,
    embedding_noise,
    forward_hooks,
    main_output,
    output_extras,
    restore_hook,
    rows_from_their_layer,
    site_module_name,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Cell = tuple[str, int, tuple[int, ...]]  # (site, layer, positions restored together)
LSE_SLICE = 4096  # rows of the LM head per slice when summing exp(logits): the slice's logits stay in cache


@dataclass
class PreparedPrompt:
    """A prompt's tokens, subject positions, clean answer probability and clean activations at every site."""

    text: str
    ids: torch.Tensor  # 1 x T
    tokens: list[str]
    subject: tuple[int, ...]
    answer_id: int
    clean_prob: float
    clean: dict[tuple[str, int], torch.Tensor]  # (site, layer) -> T x d

    @property
    def last(self) -> int:
        return self.ids.shape[1] - 1


def subject_positions(
    tokenizer: PreTrainedTokenizerBase, text: str, subject: str, add_special_tokens: bool
) -> tuple[list[int], tuple[int, ...]]:
    """Token ids of `text` and the positions of the tokens that overlap the first occurrence of `subject`."""
    start = text.find(subject)
    if start < 0:
        raise SubjectNotFound(f"subject {subject!r} does not occur in prompt {text!r}")
    end = start + len(subject)
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    positions = tuple(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start)
    if not positions:
        raise SubjectNotFound(f"no token of prompt {text!r} covers subject {subject!r}")
    return list(enc["input_ids"]), positions


def answer_probs(
    model: PreTrainedModel, ids: torch.Tensor, answer_id: int, head_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """P(answer token) at the last position of each row (the LM head runs on that position only).

    The last position is copied out of the [rows, T, d] states: through the strided slice, the gradient
    of the head's product takes a slow CPU path (3 rows of 9 tokens: 27 s, against 0.6 s contiguous)."""
    import torch

    hidden = decoder(model)(input_ids=ids, use_cache=False).last_hidden_state[:, -1].contiguous()
    return torch.softmax(_logits(model, hidden, head_weight).float(), dim=-1)[:, answer_id]


def _logits(model: PreTrainedModel, hidden: torch.Tensor, head_weight: torch.Tensor | None) -> torch.Tensor:
    """The head's logits for `hidden`; a single row of a plain head through `F.linear` where that is faster
    (`single_row_as_linear`): the clean runs of a fact's 3 prompts took 0.24 s of its 2.3 s trace as two
    rows each, and take 0.08 s so (a 2-core Xeon held to AVX2 kernels)."""
    import torch

    weight = model.get_output_embeddings().weight if head_weight is None else head_weight
    if plain_linear_head(model) and single_row_as_linear(hidden, weight):
        return torch.nn.functional.linear(hidden, weight)
    return logits_from_hidden(model, hidden, head_weight)


def head_weight_for(model: PreTrainedModel, label: str) -> torch.Tensor:
    """The LM head weight; under bf16 autocast its bf16 copy, made once and reused across cases."""
    return bf16_head_weight(model) if "autocast" in label else weight_of(model.get_output_embeddings())


def prepare(
    model: PreTrainedModel,
    arch: ArchModules,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    subject: str,
    answer_id: int,
    add_special_tokens: bool,
    head_weight: torch.Tensor | None = None,
) -> PreparedPrompt:
    """Run the clean prompt once, keeping every site's output at every layer."""
    import torch

    token_ids, subject_tokens = subject_positions(tokenizer, text, subject, add_special_tokens)
    tokens = tokenizer.convert_ids_to_tokens(token_ids)
    if not isinstance(tokens, list):  # typed by its one-id form too: a list of ids gives a list
        raise TypeError(f"{type(tokenizer).__name__}.convert_ids_to_tokens gave a {type(tokens).__name__} for a list")
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], device=device)
    store: dict[tuple[str, int], torch.Tensor] = {}
    hooks = {
        site_module_name(arch, s, layer): capture_hook(store, (s, layer))
        for s in SITES
        for layer in range(num_layers(model))
    }
    with torch.no_grad(), forward_hooks(model, hooks):
        prob = float(answer_probs(model, ids, answer_id, head_weight)[0])
    clean = {key: value[0].detach() for key, value in store.items()}
    return PreparedPrompt(text, ids, tokens, subject_tokens, answer_id, prob, clean)


def noise_for(prep: PreparedPrompt, samples: int, std: float, seed: int) -> torch.Tensor:
    """Seeded Gaussian noise for the subject's embeddings: samples x subject tokens x d."""
    import torch

    d = next(iter(prep.clean.values())).shape[-1]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((samples, len(prep.subject), d), generator=generator) * std
    return noise.to(prep.ids.device)


def embedding_std(model: PreTrainedModel, sample: int = 4096, seed: int = 0) -> float:
    """Standard deviation of the embedding layer's output over a fixed sample of the vocabulary."""
    import torch

    embed = model.get_input_embeddings()
    weight = weight_of(embed)
    vocab = weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (min(sample, vocab),), generator=generator).to(weight.device)
    with torch.no_grad():
        return float(embed(ids).float().std())


def restored_probs(
    model: PreTrainedModel,
    arch: ArchModules,
    prep: PreparedPrompt,
    noise: torch.Tensor,
    cells: Sequence[Cell],
    batch_rows: int,
    head_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """P(answer) with the subject corrupted: samples x (1 + cells); column 0 restores nothing.

    A restoration changes nothing before its first restored position, so each (noise sample, cell) row
    runs only from there on, over the keys and values the corrupted prompt computed before it (once
    per noise sample). A restoration at the last token runs one token instead of the prompt. Rows that
    start at the same position share passes of at most `batch_rows` rows. A row also changes nothing
    below its restored layer: sorted by that layer, a pass's rows join it there, each decoder layer
    computing only the rows restored at or below it (the others take the corrupted prompt's states).
    """
    import torch

    samples = noise.shape[0]
    starts = sorted({min(c[2]) for c in cells} | {prep.last})
    corrupted = _corrupted_run(model, arch, prep, noise, starts)
    hidden, where = [corrupted.last_hidden], [(s, -1) for s in range(samples)]
    for first in starts:
        plan = [(s, c) for c, cell in enumerate(cells) if min(cell[2]) == first for s in range(samples)]
        plan.sort(key=lambda row: cells[row[1]][1])  # by restored layer: a pass's rows join it there
        for begin in range(0, len(plan), batch_rows):
            chunk = plan[begin : begin + batch_rows]
            hidden.append(_suffix_hidden(model, arch, prep, noise, [(s, cells[c]) for s, c in chunk], first, corrupted))
            where += chunk
    probs = _answer_prob(model, torch.cat(hidden), prep.answer_id, head_weight).cpu()  # one head pass: the largest
    out = torch.empty((samples, len(cells) + 1))
    for (s, c), p in zip(where, probs):
        out[s, c + 1] = p
    return out


def _noisy_pass(
    model: PreTrainedModel,
    prep: PreparedPrompt,
    noise: torch.Tensor,
    span: tuple[int, int],
    cache: Any,
    hooks: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, Any]:
    """Run the prompt's tokens span[0]..span[1]-1 after `cache` (the positions before them; None at 0),
    with `noise` on the subject's tokens among them: (last hidden state of each row, the grown cache)."""
    import torch

    first, end = span
    ids = prep.ids[:, first:end].expand(noise.shape[0], -1)
    noisy = [i for i, pos in enumerate(prep.subject) if first <= pos < end]
    positions = torch.arange(first, end, device=ids.device).expand(ids.shape[0], -1)
    mask = torch.ones((ids.shape[0], end), dtype=torch.long, device=ids.device)
    extra = {cache_keyword(decoder(model)): cache} if cache is not None else {}
    with (
        torch.no_grad(),
        embedding_noise(model, [prep.subject[i] - first for i in noisy], noise[:, noisy]),
        forward_hooks(model, hooks or {}),
    ):
        out = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    return out.last_hidden_state[:, -1], returned_cache(out)


@dataclass
class _Corrupted:
    """The corrupted prompt, run once per noise sample: copies of its cache before each restoration's
    first position (None before position 0), its last hidden state, and every decoder layer's output
    (samples x T x d) with how that layer returns it (`output_extras`; None: rows cannot skip layers)."""

    prefixes: dict[int, Any]
    last_hidden: torch.Tensor
    layer_outputs: list[torch.Tensor]
    extras: list[int] | None


def _corrupted_run(
    model: PreTrainedModel, arch: ArchModules, prep: PreparedPrompt, noise: torch.Tensor, starts: Sequence[int]
) -> _Corrupted:
    """Run the corrupted prompt once. Rows skip layers only where every hook on the model is marked
    `first_rows_safe` (none, or the kept edits' shared gate): another hook may keep state per pass for the
    whole batch, which a layer's first rows would not match."""
    store: dict[int, tuple[torch.Tensor, int | None]] = {}

    def keep(layer: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            store[layer] = (main_output(output), output_extras(output))

        return hook

    layers = num_layers(model)
    safe = hooks_allow_first_rows(model)
    hooks = {site_module_name(arch, "hidden", layer): keep(layer) for layer in range(layers)}
    hidden, cache = _noisy_pass(model, prep, noise, (0, prep.last + 1), None, hooks)
    extras = [store[layer][1] for layer in range(layers)]
    stateful = has_row_state(cache)
    bypass = extras[0] if all(e == extras[0] for e in extras) else None  # how a bypassed layer must return
    prefixes = {first: _prefix_cache(model, prep, noise, cache, first, stateful, bypass) for first in starts}
    readable = safe and all(e is not None for e in extras) and len(getattr(cache, "layers", ())) == layers
    outputs = [store[layer][0] for layer in range(layers)]
    return _Corrupted(prefixes, hidden, outputs, [e for e in extras if e is not None] if readable else None)


def _prefix_cache(
    model: PreTrainedModel,
    prep: PreparedPrompt,
    noise: torch.Tensor,
    cache: Any,
    first: int,
    stateful: bool,
    bypass: int | None,
) -> Any:
    """The corrupted prompt's cache before position `first` (None at 0), cut from the whole run's. When a
    hook keeps state about the text with the cache (the kept edits' subject gate: the last tokens, and
    whether a subject's sentence is still open), the state is the prefix's: the whole run's described the
    whole prompt. The keys and values stay the whole run's, where the gate saw a name that the cut splits
    whole. That state depends on the ids alone, so the pass that makes it computes no decoder layer (each
    returns its input as `bypass` says; None: the layers' outputs are not known, and it runs whole)."""
    if first == 0:
        return None
    cropped = cache_prefix(cache, first)
    if stateful:
        with layers_bypassed(model, bypass) if bypass is not None else nullcontext():
            row_state(cropped).update(row_state(_noisy_pass(model, prep, noise, (0, first), None)[1]))
    return cropped


def _entering_counts(rows: Sequence[tuple[int, Cell]], layers: int, skip: bool) -> list[int]:
    """How many of `rows` (sorted by restored layer) each decoder layer computes: those restored at or
    below it; every row at every layer when rows cannot skip layers."""
    if not skip:
        return [len(rows)] * layers
    restored = [cell[1] for _, cell in rows]
    return [sum(1 for r in restored if r <= layer) for layer in range(layers)]


def _rows_after(output: torch.Tensor, rows: torch.Tensor, first: int) -> torch.Tensor:
    """`output`'s rows `rows` (noise samples), from position `first` on."""
    return output[rows, first:]


def _restore_hooks(
    arch: ArchModules, prep: PreparedPrompt, rows: Sequence[tuple[int, Cell]], first: int
) -> dict[str, Any]:
    """One hook per restored (site, layer): it writes the clean activations into its rows' positions."""
    import torch

    device = prep.ids.device
    groups: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
    for row, (_, (site, layer, positions)) in enumerate(rows):
        at, pos = groups.setdefault((site, layer), ([], []))
        at.extend([row] * len(positions))
        pos.extend(p - first for p in positions)
    return {
        site_module_name(arch, site, layer): restore_hook(
            torch.tensor(at, device=device), torch.tensor(pos, device=device), prep.clean[(site, layer)][first:]
        )
        for (site, layer), (at, pos) in groups.items()
    }


def _suffix_hidden(
    model: PreTrainedModel,
    arch: ArchModules,
    prep: PreparedPrompt,
    noise: torch.Tensor,
    rows: Sequence[tuple[int, Cell]],
    first: int,
    corrupted: _Corrupted,
) -> torch.Tensor:
    """The last hidden state of each (noise sample, cell) row, run from position `first` after the
    corrupted prefix; decoder layer i computes only the rows restored at or below it (rows sorted by
    restored layer), and its key-value cache holds only those rows."""
    import torch

    device = prep.ids.device
    picked = torch.tensor([s for s, _ in rows], dtype=torch.long, device=device)
    prefix = corrupted.prefixes[first]
    cache = cache_rows(prefix, picked) if prefix is not None else None
    counts = _entering_counts(rows, len(corrupted.layer_outputs), corrupted.extras is not None)
    for layer_cache, count in zip(cache.layers if cache is not None and corrupted.extras else (), counts):
        if 0 < count < len(rows):  # a layer left with no row would read as an empty cache: it is not run
            layer_cache.batch_select_indices(torch.arange(count, device=device))
    below = [partial(_rows_after, out, picked[count:], first) for out, count in zip(corrupted.layer_outputs, counts)]
    hooks = _restore_hooks(arch, prep, rows, first)
    with rows_from_their_layer(decoder_layers(model), counts, below, corrupted.extras or [-1] * len(counts)):
        return _noisy_pass(model, prep, noise[picked.to(noise.device)], (first, prep.last + 1), cache, hooks)[0]


def _answer_prob(
    model: PreTrainedModel, hidden: torch.Tensor, answer_id: int, head_weight: torch.Tensor | None
) -> torch.Tensor:
    """P(answer) at each row's hidden state: exp(logit - logsumexp), the logsumexp over 4096-token slices
    of the head at a time (in cache: 0.28 s for 111 rows of Gemma's 262k vocabulary, 0.41 s for a softmax
    over the whole, 2-core AMD EPYC), each in `head_product`'s form for the rows (`head_part_product`)."""
    import torch

    if not plain_linear_head(model):
        return torch.softmax(logits_from_hidden(model, hidden, head_weight).float(), dim=-1)[:, answer_id]
    weight = model.get_output_embeddings().weight if head_weight is None else head_weight
    parts = [
        torch.logsumexp(head_part_product(hidden, weight[i : i + LSE_SLICE]).float(), dim=-1)
        for i in range(0, weight.shape[0], LSE_SLICE)
    ]
    total = torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)
    return torch.exp(head_part_product(hidden, weight[answer_id : answer_id + 1])[:, 0].float() - total)


def attribution_estimates(
    model: PreTrainedModel,
    arch: ArchModules,
    prep: PreparedPrompt,
    noise: torch.Tensor,
    layers: int,
    head_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """First-order estimate of every restoration's effect from one forward and one backward pass.

    effect(site, layer, pos) ~ (clean - corrupted) . d P(answer) / d activation, averaged over noise
    samples. Returns {site: layers x positions}.
    """
    import torch

    store: dict[tuple[str, int], torch.Tensor] = {}
    hooks = {
        site_module_name(arch, s, layer): capture_hook(store, (s, layer), keep_grad=True)
        for s in SITES
        for layer in range(layers)
    }
    ids = prep.ids.expand(noise.shape[0], -1)
    with torch.enable_grad(), embedding_noise(model, prep.subject, noise, make_leaf=True), forward_hooks(model, hooks):
        probs = answer_probs(model, ids, prep.answer_id, head_weight)
        probs.sum().backward()
    grids = {}
    for site in SITES:
        rows = []
        for layer in range(layers):
            act = store[(site, layer)]
            grad = act.grad if act.grad is not None else torch.zeros_like(act)
            delta = prep.clean[(site, layer)].float() - act.detach().float()
            rows.append((delta * grad.float()).sum(-1).mean(0).cpu())
        grids[site] = torch.stack(rows)
    return grids
