"""A greedy step's LM head on the embedded model: the full fp32 head and its argmax against the plugin's
greedy step (`model/head_argmax.py`: a bf16 screen on a CPU with bf16 units, else an fp16 screen for up to
32 rows), per number of rows, and whether they pick the same tokens.

    python bench/greedy_head.py                      # rows 1 2 3 5 8 11 12 17 24 33 48 64
    python bench/greedy_head.py --rows 3 24 --prompts 100
    python bench/greedy_head.py --screen fp16        # the fp16 screen, even where the plugin takes bf16

The hidden states are the embedded model's final ones at every position of CounterFact prompts
(`../shared/data/counterfact-train.json`, or --data), shuffled: the inputs the head meets while decoding.
Every row of them is decoded both ways for the comparison; the times are medians of --repeats calls on
one batch per row count. --screen bf16 times the bf16 screen on any CPU (on one without bf16 units the
plugin does not use it, and this says so); --screen fp16 the fp16 one (where fbgemm runs). Hold fbgemm to
AVX2 kernels as torch's are with FBGEMM_ENABLE_INSTRUCTIONS=AVX2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from head_slices import median_seconds

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact-train.json"


def hidden_states(lm: object, prompts: list[str]) -> object:
    """Final hidden states of every real (not padding) position of `prompts`, shuffled with a fixed seed."""
    import torch

    model, tokenizer = lm.model, lm.tokenizer  # type: ignore[attr-defined]
    parts = []
    for start in range(0, len(prompts), 50):
        batch = tokenizer(prompts[start : start + 50], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.model(**batch).last_hidden_state
        parts.append(out[batch["attention_mask"].bool()])
    hidden = torch.cat(parts)
    return hidden[torch.randperm(len(hidden), generator=torch.Generator().manual_seed(0))].contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 5, 8, 11, 12, 17, 24, 33, 48, 64])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--screen", choices=["plugin", "bf16", "fp16"], default="plugin")
    args = parser.parse_args()

    import torch

    from pytest_factedit.model import head_argmax
    from pytest_factedit.model.load import load
    from pytest_factedit.model.precision import cpu_has_bf16_units

    torch.set_num_threads(2)
    lm = load(None, "cpu")
    model = lm.model
    prompts = [record["prompt"] for record in json.loads(args.data.read_text())[: args.prompts]]
    hidden = hidden_states(lm, prompts)
    bf16_units = cpu_has_bf16_units()
    if args.screen != "plugin":  # time that screen even where the plugin would not use it
        head_argmax.cpu_has_bf16_units = lambda: args.screen == "bf16"
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 units: {bf16_units}; the plugin's "
        f"greedy head here: {greedy_head_form_here(bf16_units)}; timed: {head_argmax.greedy_head_form()}; "
        f"torch {torch.__version__}, 2 threads"
    )
    print(f"{len(hidden)} hidden states from {len(prompts)} prompts\n")
    print(
        "| rows | full fp32 head + argmax | greedy step (`greedy_tokens`) | ratio | tokens left per row (median, max) "
        "| rows compared | tokens differ |"
    )
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for rows in args.rows:
            print(row_figures(model, hidden, rows, args.repeats))


def row_figures(model: object, hidden: object, rows: int, repeats: int) -> str:
    """One table line: both heads timed on the first `rows` hidden states, and compared on all of them."""
    from functools import partial

    from pytest_factedit.model.head_argmax import greedy_tokens
    from pytest_factedit.model.lmhead import logits_from_hidden

    compared, differ = 0, 0
    for start in range(0, len(hidden) - rows + 1, rows):  # type: ignore[arg-type]
        part = hidden[start : start + rows]  # type: ignore[index]
        differ += int((greedy_tokens(model, part) != logits_from_hidden(model, part).argmax(-1)).sum())
        compared += rows
    batch = hidden[:rows]  # type: ignore[index]
    full_ms = 1000 * median_seconds(lambda: logits_from_hidden(model, batch).argmax(-1), repeats)
    screen_ms = 1000 * median_seconds(partial(greedy_tokens, model, batch), repeats)
    left = tokens_left(model, batch)
    return (
        f"| {rows} | {full_ms:.1f} ms | {screen_ms:.1f} ms | {screen_ms / full_ms:.2f} | "
        f"{int(left.median())}, {int(left.max())} | {compared} | {differ} |"
    )


def greedy_head_form_here(bf16_units: bool) -> str:
    """The plugin's greedy head on this CPU, whatever --screen times."""
    from pytest_factedit.model import head_argmax

    timed = head_argmax.cpu_has_bf16_units
    head_argmax.cpu_has_bf16_units = lambda: bf16_units
    try:
        return head_argmax.greedy_head_form()
    finally:
        head_argmax.cpu_has_bf16_units = timed


def tokens_left(model: object, hidden: object) -> object:
    """How many tokens of each row the screen cannot rule out (its fp32 recheck multiplies their union); 0
    where no screen takes these rows."""
    import torch

    from pytest_factedit.model.head_argmax import kept_by_screen, screen_for

    screen = screen_for(model, hidden)  # type: ignore[arg-type]
    if screen is None:
        return torch.zeros(len(hidden), dtype=torch.long)  # type: ignore[arg-type]
    return kept_by_screen(hidden, screen).sum(dim=1)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
