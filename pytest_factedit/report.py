"""Run outputs: atomic JSONL/JSON files under reports/<run-id>/, and rich tables for the terminal."""

from __future__ import annotations

import io
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .metricspec import METRICS

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
LATEST_LINK = "latest"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def point_latest(reports_dir: Path, run_dir: Path) -> None:
    """Make reports/latest a symlink to the run folder, replaced atomically."""
    link = reports_dir / LATEST_LINK
    tmp = reports_dir / f".{LATEST_LINK}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


class RunWriter:
    """Keeps reports/<run-id>/results.jsonl valid after every case, and summary.json at the end."""

    def __init__(self, reports_dir: Path, run_id: str) -> None:
        self.reports_dir = reports_dir
        self.run_dir = reports_dir / run_id
        self.records: list[dict[str, Any]] = []
        self._keys: set[tuple[str, str]] = set()

    def add(self, record: dict[str, Any]) -> bool:
        """Add a case record (once per case) and rewrite results.jsonl atomically; False if already there."""
        key = (record["case_file"], record["case_id"])
        if key in self._keys:
            return False
        self._keys.add(key)
        self.records.append(record)
        self.flush()
        return True

    def flush(self) -> None:
        write_atomic(self.run_dir / RESULTS_FILE,
                     "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))
        point_latest(self.reports_dir, self.run_dir)

    def finish(self, summary: dict[str, Any]) -> None:
        self.flush()
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")


def summarize(records: Sequence[dict[str, Any]], run: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    statuses = [r["status"] for r in records]
    failed = sum(1 for r in records for v in r.get("metrics", {}).values() if not v["passed"])
    return {"schema_version": 1, "run_id": run["run_id"], "model": run["model"], "device": run["device"],
            "dtype": run["dtype"], "cases": len(records), "ran": statuses.count("ran"),
            "skipped": statuses.count("skipped"), "errors": statuses.count("error"),
            "failed_metrics": failed, "wall_seconds": round(wall_seconds, 3), "versions": run["versions"]}


def _console(color: bool, width: int) -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=color, no_color=not color, width=width,
                   color_system="standard" if color else None, highlight=False)


def _render(renderable: Any, color: bool, width: int) -> str:
    console = _console(color, width)
    console.print(renderable)
    return console.file.getvalue()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


_SHORT_NAMES = {"new_fact_accuracy": "new fact", "forget_rate": "forget", "paraphrase_accuracy": "paraphrase",
                "control_retention": "controls", "latency_overhead": "latency"}


def _threshold_label(records: Sequence[dict[str, Any]], metric: str) -> str | None:
    """'>=0.9' when every case uses the same threshold for `metric`, else None (shown per cell)."""
    found = {(r["metrics"][metric]["direction"], r["metrics"][metric]["threshold"])
             for r in records if metric in r.get("metrics", {})}
    if len(found) != 1:
        return None
    direction, threshold = found.pop()
    return f"{'>=' if direction == 'higher' else '<='}{threshold:g}"


def summary_table(records: Iterable[dict[str, Any]], color: bool, width: int = 120) -> str:
    """Case x metric table: value vs threshold (in the header when all cases share it), ok/FAIL."""
    from rich import box
    from rich.table import Table

    records = list(records)
    labels = {spec.name: _threshold_label(records, spec.name) for spec in METRICS}
    table = Table(title="pytest-factedit: fact edits", box=box.SIMPLE_HEAD if color else box.ASCII2,
                  show_edge=False, pad_edge=False)
    table.add_column("case", overflow="fold", min_width=12)
    for spec in METRICS:
        label = labels[spec.name]
        table.add_column(_SHORT_NAMES[spec.name] + (f"\n{label}" if label else ""), justify="right", no_wrap=True)
    table.add_column("edit\nsec", justify="right", no_wrap=True)
    for record in records:
        if record["status"] != "ran":
            label = "SKIPPED" if record["status"] == "skipped" else "ERROR"
            style = "yellow" if record["status"] == "skipped" else "bold red"
            table.add_row(record["case_id"], f"[{style}]{label}[/]", *[""] * len(METRICS))
            continue
        cells = []
        for spec in METRICS:
            metric = record["metrics"].get(spec.name)
            if metric is None:
                cells.append("")
                continue
            verdict = "[green]ok[/]" if metric["passed"] else "[bold red]FAIL[/]"
            relation = ">=" if metric["direction"] == "higher" else "<="
            shown_threshold = "" if labels[spec.name] else f"{relation}{metric['threshold']:g}"
            cells.append(f"{_fmt(metric['value'])}{shown_threshold} {verdict}")
        cells.append(f"{record['timings'].get('edit_seconds', 0):.1f}")
        table.add_row(record["case_id"], *cells)
    return _render(table, color, width)


def answers_table(title: str, rows: Sequence[dict[str, Any]], width: int = 120) -> str:
    """Plain-text table for a failing item: prompt, expected, base answer, edited answer."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.ASCII, show_lines=False)
    for column in ("prompt", "expected", "base answer", "edited answer", "ok"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["prompt"], " / ".join(row["expected"]), row["base"].split("\n")[0],
                      (row["edited"] or "").split("\n")[0], "yes" if row["ok"] else "NO")
    return _render(table, False, width)
