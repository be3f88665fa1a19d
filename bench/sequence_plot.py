"""A long sequential run by position, from its checkpoint folder (`bench/sequential.py --checkpoint DIR`).

    python bench/sequence_plot.py /tmp/seq1000                       # the table by blocks of 100 edits
    python bench/sequence_plot.py /tmp/seq1000 --record bench/results/sequential26-n1000.json \\
        --plot docs/sequence.png                                        # and the plot, with what held at the end
    python bench/sequence_plot.py /tmp/seq1000 --upto 400 --record at400.json   # a --stop-after 400 part's

Reads DIR/outcomes.jsonl (each case as measured right after its own edit, with the run's seconds so far)
and, with --record, the end-of-run block the finished run wrote (which edits still held after the last
one). Prints, per block of positions: the median edit seconds; the mean seconds per case (base probe,
edit, edited probe with its latency timing: what sets the whole run's time); the right-after figures;
the share of the block's edits still held at the end. The plot shows the same by position. Works on a
run still going: it reads what is logged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from sequence_checkpoint import OUTCOMES
from sequential import RUN_TARGET_FACTS, RUN_TARGET_SECONDS

RIGHT_AFTER = ("new_fact_accuracy", "paraphrase_accuracy", "neighbour_retention", "control_retention")


def logged(folder: Path) -> list[dict[str, Any]]:
    """The logged cases, in order; a line cut short by a kill ends the log."""
    entries = []
    for line in (folder / OUTCOMES).read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


PER_CASE = ("base_probe_seconds", "edit_seconds", "probe_seconds")  # a case's phases, one after another


def per_case_seconds(entries: list[dict[str, Any]]) -> list[float | None]:
    """Each case's seconds: its base probe, edit and edited probe (latency timing included); a case that
    was skipped or failed has only the phases it reached. (The run's seconds between two logged cases are
    the same, except across a resumed part's model load and base answers.)"""
    return [sum(e.get("timings", {}).get(phase, 0.0) for phase in PER_CASE) or None for e in entries]


def _value(entry: dict[str, Any], metric: str) -> float | None:
    found = entry.get("metrics", {}).get(metric)
    return None if found is None else found["value"]


def _shown(values: list[float | None], how: str = "mean", digits: int = 3) -> str:
    """The mean or median of the known values, or n/a."""
    kept = [v for v in values if v is not None]
    return f"{getattr(statistics, how)(kept):.{digits}f}" if kept else "n/a"


def print_blocks(entries: list[dict[str, Any]], held: dict[str, float] | None, size: int) -> None:
    """The markdown table by blocks of `size` positions."""
    spans = per_case_seconds(entries)
    print("| positions | ran | edit s, median | s per case, mean | " + " | ".join(RIGHT_AFTER) + " | held at end |")
    print("|---|---:|---:|---:|" + "---:|" * len(RIGHT_AFTER) + "---:|")
    for start in range(0, len(entries), size):
        block = entries[start : start + size]
        ran = [e for e in block if e["status"] == "ran"]
        edits = [e["timings"].get("edit_seconds") for e in ran]
        right_after = " | ".join(_shown([_value(e, m) for e in ran]) for m in RIGHT_AFTER)
        at_end = _shown([held.get(e["case_id"]) for e in ran]) if held is not None else "not finished"
        print(
            f"| {start + 1}-{start + len(block)} | {len(ran)} | {_shown(edits, 'median', 1)} | "
            f"{_shown(spans[start : start + size], 'mean', 1)} | {right_after} | {at_end} |"
        )
    print(f"\n{len(entries)} cases logged, {entries[-1]['run_seconds'] / 60:.0f} min of run so far" if entries else "")


def _rolling(values: list[float | None], width: int) -> list[float | None]:
    """The mean of the last `width` known values at each position (None before the first)."""
    out: list[float | None] = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - width + 1) : i + 1] if v is not None]
        out.append(statistics.mean(window) if window else None)
    return out


def plot(entries: list[dict[str, Any]], held: dict[str, float] | None, path: Path, width: int) -> None:
    """Edit seconds, the run's minutes and the right-after (and, finished, at-end) figures by position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [e["position"] + 1 for e in entries]
    fig, (seconds, minutes, figures) = plt.subplots(1, 3, figsize=(14, 4.2))
    edits = [e.get("timings", {}).get("edit_seconds") for e in entries]
    seconds.plot(xs, edits, ".", alpha=0.25, label="edit (localize + stages)")
    seconds.plot(xs, _rolling(edits, width), "-", label=f"edit, mean of {width}")
    seconds.plot(xs, _rolling(per_case_seconds(entries), width), "-", label=f"per case, mean of {width}")
    seconds.set_ylabel("seconds")
    minutes.plot(xs, [e["run_seconds"] / 60 for e in entries], "-", label="whole run so far")
    target = f"target at {RUN_TARGET_FACTS:,} edits"
    minutes.axhline(RUN_TARGET_SECONDS / 60, color="grey", linestyle="--", label=target)
    minutes.set_ylabel("minutes")
    for metric in RIGHT_AFTER:
        figures.plot(xs, _rolling([_value(e, metric) for e in entries], width), "-", label=f"{metric} right after")
    if held is not None:
        at_end = [held.get(e["case_id"]) if e["status"] == "ran" else None for e in entries]
        figures.plot(xs, _rolling(at_end, width), "k--", label="edit held at the end")
    figures.set_ylabel(f"mean of {width}")
    figures.set_ylim(0, 1.05)
    for ax in (seconds, minutes, figures):
        ax.set_xlabel("position in the sequence")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    seconds.set_ylim(bottom=0)
    fig.suptitle(f"pytest-factedit: {len(entries)} sequential edits (embedded model, fp32 CPU, {os.cpu_count()} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the --checkpoint folder of bench/sequential.py")
    parser.add_argument("--record", type=Path, help="the finished run's --record file (what held at the end)")
    parser.add_argument("--plot", type=Path, help="write a PNG here (needs matplotlib)")
    parser.add_argument("--block", type=int, default=100, help="positions per table row")
    parser.add_argument(
        "--upto", type=int, metavar="K", help="only the first K positions (the part a --stop-after K run checked)"
    )
    args = parser.parse_args()
    entries = logged(args.folder)[: args.upto]
    if not entries:
        raise SystemExit(f"{args.folder / OUTCOMES}: no case logged yet")
    held = json.loads(args.record.read_text(encoding="utf-8"))["retained_by_case"] if args.record else None
    print_blocks(entries, held, args.block)
    if args.plot:
        plot(entries, held, args.plot, width=max(1, args.block // 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
