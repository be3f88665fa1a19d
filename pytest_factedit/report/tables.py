"""The words of a run: the case x metric table, the failing item's answers table, the many-edit line and the
lines of the terminal summary. The plugin and the CLI only print what is composed here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import terminal_text
from ..metrics.spec import COLUMNS, METRIC_BY_NAME, MetricSpec
from ..metrics.verdict import judge
from .console import literal, natural_width, render
from .heatmap import render_heatmap
from .records import CaseRecord, ManyRecord, SuiteRecord, record_evidence


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _verdict(passed: bool | None) -> str:
    return {True: " [green]ok[/]", False: " [bold red]FAIL[/]", None: ""}[passed]


def arrow(delta: float | None) -> str:
    """A change as the tables show it: ▲/▼ with its size, '=' when none, '' when nothing was compared."""
    if delta is None:
        return ""
    if abs(delta) < 5e-4:
        return "="
    return f"{'▲' if delta > 0 else '▼'}{abs(delta):.2f}"


def _delta_markup(metric: str, comparison: dict[str, Any]) -> str:
    """The arrow, red when it is worse than the baseline beyond its tolerance, green when better."""
    text = arrow(comparison["delta"])
    if text in ("", "="):
        return text
    better = (comparison["delta"] > 0) == (METRIC_BY_NAME[metric].direction == "higher")
    style = "bold red" if comparison["regressed"] else ("green" if better else "yellow")
    return f"[{style}]{text}[/]"


def baseline_cell(record: CaseRecord) -> str:
    """The summary's `vs baseline` cell: '=' when no column's metric moved, else each that did, with its arrow.
    A timing moves on every run, so it is named only when it regressed beyond its tolerance."""
    metrics = record.get("metrics", {})
    compared = [
        (name, metrics[name]["baseline"]) for name in COLUMNS if name in metrics and metrics[name].get("baseline")
    ]
    if not compared:
        return "[dim]no baseline[/]" if record["status"] == "ran" else ""
    moved = [
        f"{METRIC_BY_NAME[name].label}{_delta_markup(name, c)}"
        for name, c in compared
        if arrow(c["delta"]) not in ("", "=") and (METRIC_BY_NAME[name].samples is not None or c["regressed"])
    ]
    return " ".join(moved) if moved else "="


def _threshold_label(records: Sequence[CaseRecord], spec: MetricSpec) -> str | None:
    """'>=0.9' when every case uses the same threshold for a metric, else None (shown per cell)."""
    found = {r["metrics"][spec.name]["threshold"] for r in records if spec.name in r.get("metrics", {})}
    if len(found) != 1:
        return None
    threshold = found.pop()
    return f"{spec.relation}{threshold:g}" if threshold is not None else "recorded"


def _case_cells(record: CaseRecord, labels: dict[str, str | None]) -> list[str]:
    cells = []
    for name in COLUMNS:
        metric = record["metrics"].get(name)
        if metric is None:
            cells.append("")
            continue
        spec = METRIC_BY_NAME[name]
        threshold = metric["threshold"]
        shown = "" if labels[name] or threshold is None else f"{spec.relation}{threshold:g}"
        cells.append(f"{_fmt(metric['value'])}{shown}{_verdict(metric['passed'])}")
    cells.append(f"{record.get('timings', {}).get('edit_seconds', 0):.1f}")
    return cells


def _compared(records: Sequence[CaseRecord]) -> bool:
    return any(m.get("baseline") for r in records for m in r.get("metrics", {}).values())


def suite_table(rows: Sequence[SuiteRecord], color: bool, width: int = 120) -> str:
    """One suite folder's pooled rates, a row per metric: value, Wilson 95% interval, hits/samples, and the
    threshold with its verdict (when `suite_thresholds` gates it)."""
    from rich import box
    from rich.table import Table

    cases = max(row["cases"] for row in rows)
    table = Table(
        title=f"suite {literal(rows[0]['folder'])}: {cases} cases pooled",
        box=box.SIMPLE_HEAD if color else box.SIMPLE,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    compared = any(row.get("baseline") for row in rows)
    for column in ("metric", "rate", "95% interval", "hits", "gate") + (("vs baseline",) if compared else ()):
        table.add_column(column, justify="left" if column == "metric" else "right", no_wrap=True)
    for row in rows:
        if row["value"] is None or row["interval"] is None:
            continue
        spec = METRIC_BY_NAME[row["metric"]]
        low, high = row["interval"]
        gate = f"{spec.relation}{row['threshold']:g}{_verdict(row['passed'])}" if row["threshold"] is not None else ""
        cells = [row["metric"], f"{row['value']:.3f}", f"{low:.3f}-{high:.3f}", f"{row['hits']}/{row['samples']}", gate]
        table.add_row(*cells, *([_suite_delta(row)] if compared else []))
    return render(table, color, max(width, natural_width(table)))


def _suite_delta(row: SuiteRecord) -> str:
    """A suite row against the baseline: the arrow over the shared samples and McNemar's p when it moved."""
    c = row.get("baseline")
    if not c or not c["shared"]:
        return ""
    if not c["right_to_wrong"] and not c["wrong_to_right"]:
        return "="
    gated = row["threshold"] is not None or METRIC_BY_NAME[row["metric"]].gated_by_default  # has an item
    verdict = (" [bold red]FAIL[/]" if gated else " [yellow]worse[/]") if c["regressed"] else ""
    return f"{_delta_markup(row['metric'], c)} p={c['p_value']:.2g}{verdict}"


def summary_table(records: Iterable[CaseRecord], color: bool, width: int = 120) -> str:
    """Case x metric table, one metric (so one protocol) per column: value vs threshold (in the header when
    every case shares it), ok/FAIL."""
    from rich import box
    from rich.table import Table

    records = list(records)
    labels = {name: _threshold_label(records, METRIC_BY_NAME[name]) for name in COLUMNS}
    table = Table(
        title="pytest-factedit: fact edits",
        box=box.SIMPLE_HEAD if color else box.SIMPLE,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    longest = max((len(terminal_text(r["case_id"])) for r in records), default=4)
    table.add_column("case", no_wrap=True, min_width=min(longest, 64), overflow="ellipsis")  # never split an id
    for name in COLUMNS:
        label = labels[name]
        table.add_column(METRIC_BY_NAME[name].label + (f"\n{label}" if label else ""), justify="right", no_wrap=True)
    table.add_column("edit\nsec", justify="right", no_wrap=True)
    compared = _compared(records)
    if compared:
        table.add_column("vs\nbaseline", overflow="fold")
    for record in records:
        extra = [baseline_cell(record)] if compared else []
        if record["status"] != "ran":
            label = "SKIPPED" if record["status"] == "skipped" else "ERROR"
            style = "yellow" if record["status"] == "skipped" else "bold red"
            table.add_row(literal(record["case_id"]), f"[{style}]{label}[/]", *[""] * len(COLUMNS), *extra)
            continue
        table.add_row(literal(record["case_id"]), *_case_cells(record, labels), *extra)
    return render(table, color, max(width, natural_width(table)))  # a narrow terminal wraps; nothing is cut


def uninformative_notes(records: Iterable[CaseRecord]) -> list[str]:
    """A line per case with paraphrases the base model did not answer with `old`: not counted, to reword."""
    notes = []
    for record in records:
        paraphrases = [a for a in record.get("answers", []) if a["group"] == "paraphrases"]
        idle = [a for a in paraphrases if not a.get("informative", True)]
        if idle:
            example = idle[0]
            notes.append(
                f"note: {record['case_id']}: {len(idle)} of {len(paraphrases)} paraphrases are uninformative (the "
                f"unedited model does not answer them with {' / '.join(record['old'])!r}: {example['prompt']!r} -> "
                f"{example['base'].strip()!r}); they are not counted: reword them"
            )
    return notes


def answers_table(title: str, rows: Sequence[dict[str, Any]], width: int = 120) -> str:
    """Plain-text table for a failing item: prompt, expected, base answer, edited answer, each as written."""
    from rich import box
    from rich.table import Table

    table = Table(title=literal(title), box=box.ASCII, show_lines=False)
    for column in ("prompt", "expected", "base answer", "edited answer", "ok"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            literal(row["prompt"]),
            literal(" / ".join(row["expected"])),
            literal(row["base"].split("\n")[0]),
            literal((row["edited"] or "").split("\n")[0]),
            "yes" if row["ok"] else "NO",
        )
    return render(table, False, width)


def failure_details(metric: str, record: CaseRecord) -> str:
    """Why a metric of a case failed: the answers it counted (from the metric table's samples), or the timings."""
    spec = METRIC_BY_NAME[metric]
    if spec.samples is None:  # a timing metric: the two timings it divides
        t = record["timings"]
        return (
            f"base {t['base_seconds_per_token'] * 1000:.1f} ms/token, "
            f"edited {t['edited_seconds_per_token'] * 1000:.1f} ms/token"
        )
    evidence = record_evidence(record)
    rows = [
        {
            "prompt": s.answer.prompt,
            "expected": s.shown_expected,
            "base": s.answer.base,
            "edited": s.answer.edited,
            "ok": s.hit,
        }
        for s in spec.samples(evidence)
    ]
    return answers_table(f"{record['case_id']}: {metric}", rows)


def many_failure_details(metric: str, many: ManyRecord) -> str:
    """Why an end-of-run metric failed: for a metric over the edited prompts, the edits no longer (fully) held."""
    if "prompts" not in METRIC_BY_NAME[metric].reads or METRIC_BY_NAME[metric].samples is None:
        return ""
    lost = [case for case, share in many["retained_by_case"].items() if share < 1.0]
    return f"\nedits no longer (fully) held: {', '.join(lost)}" if lost else ""


def many_line(many_key: str, many: ManyRecord) -> str:
    """One line on a sequential or batch run: each end-of-run metric against its threshold, the bytes the kept
    edits hold, and the restore."""
    parts = [
        f"{name} {m['value']:.3f} ({_gate(name, m['threshold'])}{m['samples']} samples)"
        if m["value"] is not None
        else f"{name} n/a"
        for name, m in many["metrics"].items()
    ]
    per_edit = many.get("memory", {}).get("bytes_per_edit")
    if per_edit is not None:
        parts.append(f"{per_edit:,.0f} bytes per kept edit")
    aside = many.get("set_aside") or {}
    if any(aside.values()):
        counts = ", ".join(f"{group} {n}" for group, n in aside.items() if n)
        parts.append(f"set aside as naming another edited subject: {counts}")
    return f"{many_key} of {many['cases']} edits: " + ", ".join(parts) + f"; base restored: {many['base_restored']}"


def _gate(name: str, threshold: float | None) -> str:
    return "" if threshold is None else f"{METRIC_BY_NAME[name].relation} {threshold:g}, "


@dataclass(frozen=True)
class RunView:
    """What the terminal summary shows besides the case records."""

    results_file: Path | None  # None: the reports could not be written
    show_trace: bool = False
    many_key: str = ""
    many: ManyRecord | None = None
    problems: tuple[str, ...] = ()
    suites: tuple[SuiteRecord, ...] = ()
    outputs: tuple[str, ...] = ()  # "baseline: PATH", "html: PATH"


def summary_lines(records: Sequence[CaseRecord], color: bool, width: int, view: RunView) -> list[str]:
    """The terminal summary, line by line: the table, heatmaps, the many-edit line, problems, the results file."""
    text = summary_table(records, color, width)
    for folder in dict.fromkeys(row["folder"] for row in view.suites):
        text += suite_table([row for row in view.suites if row["folder"] == folder], color, width)
    if view.show_trace:
        text += "".join(
            render_heatmap(trace, r["case_id"], color, width) for r in records if (trace := r.get("localization"))
        )
    lines = [many_line(view.many_key, view.many)] if view.many is not None else []
    lines += uninformative_notes(records)
    lines += [f"pytest-factedit: {problem}" for problem in view.problems]
    if view.results_file is not None:
        lines.append(f"results: {view.results_file}")
    return text.splitlines() + [terminal_text(line, newlines=False) for line in lines + list(view.outputs)]


def suite_details(row: SuiteRecord) -> str:
    """The pooled numbers behind a suite verdict."""
    interval = row["interval"]
    span = f"; Wilson 95% interval [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
    return f"pooled over {row['cases']} cases of {row['folder']}: {row['hits']} of {row['samples']} samples{span}"


def _flip_lines(flipped: Sequence[dict[str, Any]], limit: int = 12) -> list[str]:
    lines = [
        f"  {'right -> wrong' if f['before'] else 'wrong -> right'}  [{f['group']}] {f['prompt']!r}"
        for f in flipped[:limit]
    ]
    return lines + ([f"  ... and {len(flipped) - limit} more"] if len(flipped) > limit else [])


def baseline_failure(case_id: str, metric: str, value: float | None, comparison: dict[str, Any]) -> str:
    """Why a case metric fails against the baseline: the values, the tolerance and the flipped prompts."""
    lines = [
        f"{case_id}: {metric} = {_fmt(value)}, worse than the baseline's {_fmt(comparison['value'])} "
        f"({arrow(comparison['delta'])}; tolerance {comparison['tolerance']:g})"
    ]
    flipped = comparison["flipped"]
    if flipped:
        lines.append(f"flipped prompts ({len(flipped)}):")
        lines += _flip_lines(flipped)
    return "\n".join(lines)


def suite_baseline_failure(row: SuiteRecord, comparison: dict[str, Any]) -> str:
    """Why a suite metric fails against the baseline: the paired counts, McNemar's p, the flipped prompts."""
    lines = [
        f"{row['folder']}: {row['metric']} is worse than the baseline on the {comparison['shared']} samples both runs "
        f"share: {_fmt(comparison['value'])} -> {_fmt(comparison['current'])} ({arrow(comparison['delta'])}; "
        f"tolerance {comparison['tolerance']:g}); right -> wrong {comparison['right_to_wrong']}, wrong -> right "
        f"{comparison['wrong_to_right']}, one-sided McNemar p = {comparison['p_value']:.3g} "
        f"(alpha {comparison['alpha']:g})"
    ]
    if comparison["flipped"]:
        lines.append("flipped prompts (case: group):")
        lines += _flip_lines(comparison["flipped"])
    return "\n".join(lines)


def metric_failure(record: CaseRecord, metric: str) -> str | None:
    """Why a case's metric fails (a missed threshold with the answers it counted, and a regression against
    the baseline with the flipped prompts), or None when it passes; a metric item and `fact_edit` both say it."""
    entry = record["metrics"][metric]
    verdict = judge(metric, entry["value"], entry["threshold"], entry["samples"], entry.get("reason", ""))
    problems = [verdict.explanation, failure_details(metric, record)] if verdict.passed is False else []
    comparison = entry.get("baseline")
    if comparison and comparison["regressed"]:
        problems.append(baseline_failure(record["case_id"], metric, entry["value"], comparison))
    return terminal_text("\n".join(problems)) if problems else None
