"""What kept subject-gated edits cost every later pass: seconds per prefill and per greedy step, and bytes
per edit, at 1, 10, 100 and 1,000 edits on one model.

    python bench/gate_scale.py                  # the tests' tiny random llama (about a minute, 2 cores)
    python bench/gate_scale.py --embedded       # the embedded Gemma 3 270M, from the cache (a few minutes)
    python bench/gate_scale.py --json bench/results/gate-scale.jsonl

Per count N: N synthetic edits (tests/stacked_gates.py: synthetic_edits; N - 1 on distinct 1- to 3-token
patterns that the prompts do not hold, two modules each, spread over every layer, and one on "Japan", which
half the prompts name, on every module), sealed behind the shared gate (edit/gate_registry.py); `stacked`
is the reference, one gate and hook set per edit, run while its predicted prefill stays under
--stacked-limit seconds; `base` has no edit. Each cell is the median of --repeats timed passes after a
warm-up: a prefill of B=8 rows x T=32 tokens, then one greedy step of the 8 rows on its cache. Bytes per
edit: its gains, its share of the factor tables (allocated rows), and of the gate's index (trie and
entries: Python allocations, traced while the edits go on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COUNTS = (1, 10, 100, 1000)
ROWS, TOKENS = 8, 32
NAMING = "The capital of Japan is Tokyo. The official language of Japan is Japanese. Speaking of Japan, "
OTHER = "The capital of France is Paris. The river flows slowly through the city. Here is another question. "


def prompt_ids(tok: Any) -> Any:
    """B x T ids: even rows name the subject, odd rows do not; each row's text repeated to T tokens."""
    import torch

    rows = []
    for row in range(ROWS):
        text = (NAMING if row % 2 == 0 else OTHER) * 8
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids
        rows.append(ids[:TOKENS])
    return torch.tensor(rows)


def one_pass(model: Any, ids: Any) -> tuple[float, float]:
    """Seconds of a prefill of `ids` (the decoder, then the last position's logits, as probing runs it) and
    of one greedy step on its cache."""
    import torch

    from pytest_factedit.model.kv import cache_keyword, returned_cache
    from pytest_factedit.model.lmhead import decoder, logits_from_hidden

    body = decoder(model)
    with torch.no_grad():
        started = time.perf_counter()
        out = body(input_ids=ids, use_cache=True)
        following = logits_from_hidden(model, out.last_hidden_state[:, -1]).argmax(-1)[:, None]
        prefilled = time.perf_counter()
        hidden = body(input_ids=following, use_cache=True, **{cache_keyword(body): returned_cache(out)})
        logits_from_hidden(model, hidden.last_hidden_state[:, -1])
    return prefilled - started, time.perf_counter() - prefilled


def medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def bytes_per_edit(edits: list[Any], traced: int) -> dict[str, float]:
    """Each edit's gains, its share of the allocated factor tables, and of the traced index."""
    from pytest_factedit.edit.gate_memory import gains_bytes, table_bytes

    registry = edits[0].registry
    gains, tables = gains_bytes(registry), table_bytes(registry)
    return {"gains": gains / len(edits), "tables": tables / len(edits), "index": traced / len(edits)}


def measure_count(
    model: Any, tok: Any, ids: Any, count: int, args: argparse.Namespace, stacked_ok: bool
) -> dict[str, Any]:
    """One row of the table. Each repeat times, back to back (the machine's load moves all three alike):
    every edit off (`base`), the shared gate, and, when allowed, the stacked reference (the shared gate
    off meanwhile); after one untimed round."""
    from contextlib import ExitStack

    from pytest_factedit.edit.subject_gains import _hooked
    from tests.stacked_gates import stacked, synthetic_edits, twin

    edits = synthetic_edits(model, tok, count, {int(i) for i in ids.flatten()})
    twins = [twin(e) for e in edits]
    times: dict[str, list[tuple[float, float]]] = {"base": [], "shared": [], "stacked": []}
    with ExitStack() as kept:
        tracemalloc.start()
        for edit in edits:
            _hooked(edit, sealed=True)
            kept.callback(edit.remove)
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        registry = edits[0].registry
        looked, passes = registry.lookups, 0
        for attempt in range(args.repeats + 1):
            with registry.disabled():
                times["base"].append(one_pass(model, ids))
            times["shared"].append(one_pass(model, ids))
            passes += 2
            if stacked_ok:
                with registry.disabled(), stacked(twins):
                    times["stacked"].append(one_pass(model, ids))
            if not attempt:
                times = {name: [] for name in times}
        row: dict[str, Any] = {"edits": count, "bytes": bytes_per_edit(edits, traced)}
        row["lookups_per_pass"] = (registry.lookups - looked) / passes
    row.update({name: medians(values) for name, values in times.items() if values})
    return row


def loaded(embedded: bool) -> tuple[Any, Any, str]:
    """(model, tokenizer, label): the embedded model through the package's loader, or the tests' tiny llama."""
    if embedded:
        from pytest_factedit.model.load import load

        lm = load(None, "cpu")
        return lm.model.eval(), lm.tokenizer, f"embedded {lm.spec.name} ({lm.dtype})"
    from tests.tiny import piece_tokenizer, tiny_model

    tok = piece_tokenizer((NAMING, OTHER))
    return tiny_model("llama", len(tok)), tok, "tiny random llama (2 layers, width 32, fp32)"


def print_table(label: str, rows: list[dict[str, Any]]) -> None:
    import torch

    from pytest_factedit.run.model_holder import machine_info

    info = machine_info()
    print(f"\n{label}; {info['cpu']} ({info['cpu_capability']}), {torch.get_num_threads()} threads")
    print(f"prefill B={ROWS} x T={TOKENS}, then one greedy step: median seconds; base: every edit off\n")
    print(
        "| edits | prefill base | prefill shared | prefill stacked | step base | step shared | step stacked "
        "| trie lookups / pass | gains B/edit | tables B/edit | index B/edit |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        stacked = row.get("stacked")
        cells = [
            f"{row['edits']:,}",
            *(f"{row[name][0]:.4f}" for name in ("base", "shared")),
            f"{stacked[0]:.4f}" if stacked else "(skipped)",
            *(f"{row[name][1]:.4f}" for name in ("base", "shared")),
            f"{stacked[1]:.4f}" if stacked else "(skipped)",
            f"{row['lookups_per_pass']:.0f}",
            *(f"{row['bytes'][k]:,.0f}" for k in ("gains", "tables", "index")),
        ]
        print("| " + " | ".join(cells) + " |")


def stacked_allowed(rows: list[dict[str, Any]], count: int, limit: float) -> bool:
    """Run the stacked reference at `count` edits if its prefill, extrapolated from the last count's
    overhead over the base (linear in the edits), stays under `limit` seconds."""
    if not rows:
        return True
    last = rows[-1]
    if "stacked" not in last:
        return False
    overhead = max(last["stacked"][0] - last["base"][0], 0.0) * count / last["edits"]
    return last["base"][0] + overhead <= limit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedded", action="store_true", help="the embedded Gemma 3 270M instead of the tiny model")
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per count (median)")
    parser.add_argument("--stacked-limit", type=float, default=6.0, help="largest predicted stacked prefill (s)")
    parser.add_argument("--json", type=Path, help="append the rows to this JSON-lines file")
    args = parser.parse_args()
    model, tok, label = loaded(args.embedded)
    ids = prompt_ids(tok)
    rows: list[dict[str, Any]] = []
    for count in args.counts:
        rows.append(measure_count(model, tok, ids, count, args, stacked_allowed(rows, count, args.stacked_limit)))
        print(f"  {count:,} edits measured", file=sys.stderr)
    print_table(label, rows)
    if args.json:
        with args.json.open("a", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps({"model": label, **row}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
