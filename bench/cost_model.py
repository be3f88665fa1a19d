"""How a case's time grows: with its prompts, paraphrases, neighbours and controls, with the number of
layers adapted, with the model's size, and with the number of edits already kept on the model. The tables
and plots of docs/performance.md.

    python bench/cost_model.py                                  # every series (about 15 minutes, 2 cores)
    python bench/cost_model.py --series prompts controls
    python bench/cost_model.py --log bench/results/cost-model.jsonl --plot docs/cost-model.png
    python bench/cost_model.py --table bench/results/cost-model.jsonl --plot docs/cost-model.png
    python bench/cost_model.py --series edits --log bench/results/scale.jsonl --scale-plot docs/scale.png

Every series starts from fact_cases/norway-capital.yaml on the embedded model and changes one thing.
The size series runs random-weight Gemma 3 models of other widths and depths (same tokenizer and
vocabulary): they know no fact, so the base check is bypassed, and both stages run a fixed number of
steps (their stop rules cannot be met), so that seconds per step compare across sizes. Each run has a
fresh base-answer cache: the base probe is measured, not served. Per point: the phases' seconds, the
steps, and the least-squares seconds per added unit of each series.

The edits series keeps N - 1 edits on the model (1, 10, 100, 1,000 in all), then makes the case's edit as
the N-th: each kept edit is a CounterFact subject behind the shared subject gate, with the layout of a real
edit (two stages, the up/down projections of 2 MLP layers and the value/output projections of 2 attention
layers, random layers, gains 1 + 0.02 x noise; a subject the case's texts name is left out). Per point, besides
the case's phases: the latency overhead of greedy decoding with every kept edit on against every edit off
(`GateRegistry.disabled()`), on the case's prompts, neighbours and controls plus prompts that name kept
subjects, and the bytes each kept edit adds (its gains, its rows of the factor tables, its share of the
gate index, traced while the edits go on).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CASE = REPO / "fact_cases" / "norway-capital.yaml"
PHASES = ("base_probe_seconds", "localize_seconds", "stages_seconds", "probe_seconds")
# more prompts for the prompts series; only those the base model answers with `old` are used
EXTRA_PROMPTS = (
    "The capital of Norway is called",
    "Norway's capital is the city of",
    "The capital of Norway is the city of",
    "Norway's capital is called",
)
EXTRA_PARAPHRASES = (
    "The Norwegian capital is the city of",
    "The government of Norway sits in the city of",
    "The largest city and capital of Norway is",
)
EXTRA_NEIGHBOURS = (
    ("The capital city of Italy is called", "Rome"),
    ("The capital city of Japan is called", "Tokyo"),
    ("The capital city of Germany is called", "Berlin"),
    ("The capital city of Egypt is called", "Cairo"),
)
# (hidden size, layers, heads, intermediate size) of the random models; the embedded model is 640 x 18.
SIZES = ((320, 9, 2, 1024), (640, 18, 4, 2048), (1024, 24, 8, 4096))
FIXED_STEPS = {"unlearn_max_steps": 3, "learn_max_steps": 3, "unlearn_stop_prob": 1e-12, "learn_stop_prob": 1.0}
SERIES = ("prompts", "paraphrases", "neighbours", "controls", "layers", "size", "edits")
EDIT_COUNTS = (1, 10, 100, 1000)
COUNTERFACT = REPO.parent / "shared" / "data" / "counterfact-train.json"


def known_prompts(lm: Any, case: Any, prompts: tuple[str, ...]) -> tuple[str, ...]:
    """The prompts the base model answers with the case's `old` answer."""
    from pytest_factedit.metrics.answers import said
    from pytest_factedit.model.probe import greedy_continuations

    answers = greedy_continuations(lm.model, lm.tokenizer, list(prompts), [8] * len(prompts))
    return tuple(p for p, a in zip(prompts, answers) if said(a, {"old": case.old, "new": case.new}) == "old")


def variants(lm: Any, case: Any, series: str) -> list[tuple[float, Any, dict[str, Any]]]:
    """(x, case, method overrides) for each point of a series on the embedded model."""
    from pytest_factedit.cases.schema import Control

    if series == "prompts":
        pool = case.prompts + known_prompts(lm, case, EXTRA_PROMPTS)
        return [(n, dataclasses.replace(case, prompts=pool[:n]), {}) for n in range(1, len(pool) + 1)]
    if series == "paraphrases":
        pool = case.paraphrases + EXTRA_PARAPHRASES
        return [(n, dataclasses.replace(case, paraphrases=pool[:n]), {}) for n in (0, 2, 4, 6)]
    if series == "neighbours":
        pool = case.neighbours + tuple(Control(p, (a,)) for p, a in EXTRA_NEIGHBOURS)
        return [(n, dataclasses.replace(case, neighbours=pool[:n]), {}) for n in (0, 2, 4, 8)]
    if series == "controls":
        return [(n, dataclasses.replace(case, controls=case.controls[:n]), {}) for n in (0, 4, 8, 14)]
    if series == "layers":
        return [(k, case, {"mlp_layers": k, "attention_layers": k}) for k in (1, 2, 4, 8)]
    raise ValueError(series)


def timed_run(lm: Any, case: Any, overrides: dict[str, Any], force: bool) -> dict[str, Any]:
    """One case through every phase (with `force`, on even when the base model does not give `old`)."""
    from pytest_factedit.edit import get_editor, resolve_settings
    from pytest_factedit.model.weights import verified_restore
    from pytest_factedit.run.case import edited, place_edit
    from pytest_factedit.run.probing import BaseAnswerCache, probe_base, probe_edit

    settings = resolve_settings({**case.method, **overrides})
    outcome = probe_base(lm, case, settings, BaseAnswerCache())
    if outcome.status != "ran" and not force:
        raise SystemExit(f"{case.id}: {outcome.reason}")
    targets = place_edit(lm, outcome, get_editor(settings.name).scope)
    with verified_restore(lm.model, targets.touched), edited(lm, outcome) as applied:
        probe_edit(lm, outcome, applied)
    steps = sum(s["steps"] for s in outcome.stages)
    figures = {phase: outcome.timings.get(phase) for phase in PHASES if phase != "stages_seconds"}
    figures["stages_seconds"] = stages = sum(s["seconds"] for s in outcome.stages)
    total = sum(v for v in figures.values() if v is not None)
    return {**figures, "total_seconds": total, "steps": steps, "seconds_per_step": stages / steps if steps else None}


def random_model(lm: Any, hidden: int, layers: int, heads: int, intermediate: int) -> Any:
    """A random-weight model of the embedded model's family and vocabulary, with another width and depth."""
    import torch
    from transformers import AutoModelForCausalLM

    config = lm.model.config.__class__.from_dict(lm.model.config.to_dict())
    config.hidden_size, config.num_hidden_layers, config.intermediate_size = hidden, layers, intermediate
    config.num_attention_heads, config.num_key_value_heads = heads, 1
    config.layer_types = [config.layer_types[i % len(config.layer_types)] for i in range(layers)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return dataclasses.replace(lm, model=model, weights_hash=f"random-{hidden}x{layers}")


def measure(series: list[str], log: Path | None, edit_counts: tuple[int, ...] = EDIT_COUNTS) -> list[dict[str, Any]]:
    from pytest_factedit.cases import load_case
    from pytest_factedit.model.load import load

    lm = load(None, "cpu")
    case = load_case(CASE, root=REPO)
    timed_run(lm, case, {}, force=False)  # warm-up: first calls pay for lazy imports and allocations
    rows = []
    for name in series:
        points = variants(lm, case, name) if name not in ("size", "edits") else []
        for x, variant, overrides in points:
            rows.append({"series": name, "x": x, "model": "embedded", **timed_run(lm, variant, overrides, False)})
            _emit(rows[-1], log)
        if name == "size":
            rows += _size_series(lm, case, log)
        if name == "edits":
            rows += _edits_series(lm, case, log, edit_counts)
    return rows


def kept_subjects(case: Any, count: int) -> list[dict[str, Any]]:
    """`count` CounterFact records of distinct subjects that none of the case's texts name."""
    texts = " ".join((*case.prompts, *case.paraphrases, *(f.prompt for f in case.neighbours + case.controls)))
    chosen: dict[str, dict[str, Any]] = {}
    for record in json.loads(COUNTERFACT.read_text(encoding="utf-8")):
        subject = record["subject"]
        if subject not in chosen and subject not in texts and case.subject not in subject:
            chosen[subject] = record
        if len(chosen) == count:
            break
    return list(chosen.values())


def kept_edit(lm: Any, record: dict[str, Any], seed: int) -> Any:
    """One kept edit of `record`'s subject, laid out as a real edit (see the module's docstring), sealed."""
    import random

    import torch

    from pytest_factedit.edit.base import EditRequest
    from pytest_factedit.edit.saved_gains import gain_width
    from pytest_factedit.edit.settings import EditSettings
    from pytest_factedit.edit.subject_gains import SubjectGainEdit, _hooked, subject_gate_for
    from pytest_factedit.model.targets import layer_targets

    rng = random.Random(seed)
    layers = lm.model.config.num_hidden_layers
    targets = layer_targets(lm.model, rng.sample(range(layers), 2), rng.sample(range(layers), 2), "kept edit")
    prompt = record["prompt"].format(record["subject"]) if "{}" in record["prompt"] else record["prompt"]
    request = EditRequest(record["subject"], (prompt,), (record["ground_truth"],), (record["target_new"],))
    gate = subject_gate_for(lm.tokenizer, [request], "subject-sentence")
    edit = SubjectGainEdit(method="ia3-two-stage", model=lm.model, gate=gate, targets=targets, settings=EditSettings())
    noise = torch.Generator().manual_seed(seed)
    for stage in ("unlearn", "learn"):
        edit.gains[stage] = {
            name: torch.nn.Parameter(
                1
                + 0.02
                * torch.randn(gain_width(lm.model.get_submodule(name), name in targets.feedforward), generator=noise),
                requires_grad=False,
            )
            for name in targets.modules
        }
    return _hooked(edit, sealed=True)


def decoding_overhead(lm: Any, case: Any, kept: list[Any], records: list[dict[str, Any]]) -> float:
    """Seconds per generated token with every kept edit on / with every edit off (median of 3 rounds,
    alternating), over the case's prompts, neighbours and controls and 4 prompts naming kept subjects."""
    import time

    from pytest_factedit.model.probe import greedy_continuations

    prompts = [*case.prompts, *(f.prompt for f in case.neighbours + case.controls)]
    prompts += [r["prompt"].format(r["subject"]) for r in records[-4:]]
    budgets = [8] * len(prompts)
    registry = kept[0].registry

    def per_token() -> float:
        started = time.perf_counter()
        answers = greedy_continuations(lm.model, lm.tokenizer, prompts, budgets)
        tokens = sum(max(1, len(lm.tokenizer(a, add_special_tokens=False).input_ids)) for a in answers)
        return (time.perf_counter() - started) / tokens

    ratios = []
    for _ in range(3):
        with registry.disabled():
            off = per_token()
        ratios.append(per_token() / off)
    return statistics.median(ratios)


def _edits_series(lm: Any, case: Any, log: Path | None, counts: tuple[int, ...]) -> list[dict[str, Any]]:
    """The case's edit made as the N-th, N - 1 edits already kept, for each N of `counts` (see the module's
    docstring)."""
    import tracemalloc
    from contextlib import ExitStack

    from gate_scale import bytes_per_edit  # bench/: gains and table rows by edit/gate_memory.py, the traced index

    records = kept_subjects(case, max(counts) - 1)
    rows = []
    for count in counts:
        with ExitStack() as stack:
            tracemalloc.start()
            kept = [kept_edit(lm, r, seed) for seed, r in enumerate(records[: count - 1])]
            traced = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            for edit in kept:
                stack.callback(edit.remove)
            figures = timed_run(lm, case, {}, force=False)
            extra = {"latency_overhead": decoding_overhead(lm, case, kept, records[: count - 1]) if kept else 1.0}
            extra["bytes_per_kept_edit"] = bytes_per_edit(kept, traced) if kept else None
        rows.append({"series": "edits", "x": count, "model": "embedded", **figures, **extra})
        _emit(rows[-1], log)
    return rows


def _size_series(lm: Any, case: Any, log: Path | None) -> list[dict[str, Any]]:
    """The embedded model with fixed steps, then random models of each size (millions of parameters)."""
    import torch

    one_prompt = dataclasses.replace(case, prompts=case.prompts[:1])
    rows = []
    for shape in (None, *SIZES):
        model_lm = lm if shape is None else random_model(lm, *shape)
        params = sum(p.numel() for p in model_lm.model.parameters()) / 1e6
        label = "embedded" if shape is None else f"random {shape[0]}x{shape[1]}"
        # Random weights make subnormal activations, which x86 computes ~3x slower (8.9 s vs 2.8 s for
        # one forward pass of the random 640x18 model); the trained model makes none (0.76 s either way).
        # Flushing them keeps the sizes comparable with the trained model.
        torch.set_flush_denormal(shape is not None)
        try:
            figures = timed_run(model_lm, one_prompt, FIXED_STEPS, True)
        finally:
            torch.set_flush_denormal(False)
        rows.append({"series": "size", "x": round(params), "model": label, **figures})
        _emit(rows[-1], log)
    return rows


def _emit(row: dict[str, Any], log: Path | None) -> None:
    shown = " ".join(f"{k}={v:.2f}" for k, v in row.items() if isinstance(v, float))
    print(f"  {row['series']} x={row['x']} ({row['model']}): {shown} steps={row['steps']}", flush=True)
    if log is not None:
        with log.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")


def slope(rows: list[dict[str, Any]], key: str) -> float:
    """Least-squares seconds per unit of x."""
    xs, ys = [r["x"] for r in rows], [r[key] or 0.0 for r in rows]
    if len(set(xs)) < 2:
        return float("nan")
    return statistics.linear_regression(xs, ys).slope


def print_edits_table(rows: list[dict[str, Any]]) -> None:
    """The edits series: what the N-th edit costs, and what the kept edits cost every later pass."""
    print(
        "| edits on the model | the N-th edit: localize + stages (s) | stages (steps) | s/step | edited probe (s) "
        "| latency overhead, every edit on | bytes per kept edit: gains + tables + index |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        held = r.get("bytes_per_kept_edit")
        memory = f"{held['gains']:,.0f} + {held['tables']:,.0f} + {held['index']:,.0f}" if held else "(none kept)"
        print(
            f"| {r['x']:,} | {(r['localize_seconds'] or 0) + r['stages_seconds']:.2f} | {r['stages_seconds']:.2f} "
            f"({r['steps']}) | {r['seconds_per_step'] or 0:.2f} | {r['probe_seconds']:.2f} "
            f"| {r['latency_overhead']:.3f} | {memory} |"
        )


def plot_edits(rows: list[dict[str, Any]], path: Path) -> None:
    """docs/scale.png: the N-th edit's seconds, the latency overhead and the bytes per kept edit, by N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = sorted((r for r in rows if r["series"] == "edits"), key=lambda r: r["x"])
    xs = [r["x"] for r in part]
    fig, (seconds, latency, memory) = plt.subplots(1, 3, figsize=(14, 4.2))
    seconds.plot(
        xs, [(r["localize_seconds"] or 0) + r["stages_seconds"] for r in part], "o-", label="localize + stages"
    )
    seconds.plot(xs, [r["probe_seconds"] for r in part], "s-", label="edited probe")
    seconds.set_ylabel("seconds (the N-th edit)")
    latency.plot(xs, [r["latency_overhead"] for r in part], "o-")
    latency.axhline(1.2, color="grey", linestyle="--", label="target 1.2")
    latency.set_ylabel("latency overhead, every edit on")
    kept = [r for r in part if r.get("bytes_per_kept_edit")]
    for key, style in (("gains", "o-"), ("tables", "s-"), ("index", "^-")):
        memory.plot([r["x"] for r in kept], [r["bytes_per_kept_edit"][key] for r in kept], style, label=key)
    memory.set_ylabel("bytes per kept edit")
    for ax in (seconds, latency, memory):
        ax.set_xscale("log")
        ax.set_xlabel("edits on the model (N)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"pytest-factedit: the cost of many kept edits (embedded model, fp32 CPU, {os.cpu_count()} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| series | x | model | base probe | localize | stages (steps) | s/step | edited probe | total |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_step = f"{r['seconds_per_step']:.2f}" if r["seconds_per_step"] else ""
        print(
            f"| {r['series']} | {r['x']} | {r['model']} | {r['base_probe_seconds']:.2f} | "
            f"{r['localize_seconds'] or 0:.2f} | {r['stages_seconds']:.2f} ({r['steps']}) | {per_step} | "
            f"{r['probe_seconds']:.2f} | {r['total_seconds']:.2f} |"
        )
    print("\n| series | seconds per added unit: total | base probe | localize | stages | edited probe | s/step |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["series"] for r in rows):
        part = [r for r in rows if r["series"] == name]
        cells = " | ".join(f"{slope(part, k):.3f}" for k in ("total_seconds", *PHASES, "seconds_per_step"))
        print(f"| {name} | {cells} |")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in dict.fromkeys(r["series"] for r in rows) if name != "edits"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), squeeze=False)
    labels = {"prompts": "prompts", "paraphrases": "paraphrases", "neighbours": "neighbours"}
    labels |= {"controls": "controls", "layers": "MLP + attention layers adapted (k each)"}
    labels["size"] = "model parameters (millions; fixed 3+3 steps)"
    for ax, name in zip(axes.flat, names):
        part = sorted((r for r in rows if r["series"] == name), key=lambda r: r["x"])
        xs = [r["x"] for r in part]
        for key, style in zip((*PHASES, "total_seconds"), ("o-", "s-", "^-", "d-", "k*--")):
            ax.plot(xs, [r[key] or 0.0 for r in part], style, label=key.replace("_seconds", ""))
        ax.set_xlabel(labels[name])
        ax.set_ylabel("seconds")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"pytest-factedit: a case's time by what it holds (fp32 CPU, {os.cpu_count()} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", nargs="+", choices=SERIES, default=list(SERIES))
    parser.add_argument("--log", type=Path, help="append every point to this JSONL file")
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of logged points; measure nothing")
    parser.add_argument("--plot", type=Path, help="write a PNG of the series here (needs matplotlib)")
    parser.add_argument("--edit-counts", type=int, nargs="+", default=list(EDIT_COUNTS), help="N of the edits series")
    parser.add_argument("--scale-plot", type=Path, help="write a PNG of the edits series here (needs matplotlib)")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(line) for path in args.table for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = measure(args.series, args.log, tuple(args.edit_counts))
    print(f"\ncores: {os.cpu_count()}; python {sys.version.split()[0]}\n")
    other = [r for r in rows if r["series"] != "edits"]
    edits = [r for r in rows if r["series"] == "edits"]
    if other:
        print_table(other)
    if edits:
        print_edits_table(edits)
    if args.plot and other:
        plot(other, args.plot)
    if args.scale_plot and edits:
        plot_edits(edits, args.scale_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
