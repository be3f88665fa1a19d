"""A run as one self-contained HTML page: header, case x metric table, suite tables, baseline deltas, and per
case its method, answers (flips highlighted) and localization heatmaps (inline SVG).

The page loads nothing (no network, no other file) so it can be mailed or kept as a CI artifact, reads
without JavaScript, and prints. Case files are untrusted input: every value from a record is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import printable
from ..infra.files import write_atomic
from ..metrics.answers import FACT_GROUPS, GROUPS
from ..metrics.spec import COLUMNS, METRIC_BY_NAME
from .heatmap import STORED_NOTE, heatmap_svg, xml_text

_SAYS_RANK = {"old": 0, None: 1, "new": 2}  # a fact answer moving up this scale moved towards the edit
_STATUS = {"ran": ("ok", "ran"), "skipped": ("skip", "SKIPPED"), "error": ("error", "ERROR")}
_RESTORED: dict[object, str] = {True: "yes", False: "<b class='wrong'>no</b> (reloaded)"}  # by base_restored

_CSS = """
:root{--ok:#1a7f37;--okbg:#dafbe1;--fail:#cf222e;--failbg:#ffebe9;--warn:#7d4e00;--warnbg:#fff8c5;
--muted:#57606a;--line:#d0d7de;--head:#f6f8fa}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
margin:0 auto;padding:20px 28px 40px;max-width:1500px;background:#fff}
h1{font-size:22px;margin:0 0 6px}h1 code{font-size:18px;background:none}
h2{font-size:18px;margin:28px 0 8px;padding-bottom:4px;
border-bottom:1px solid var(--line)}h3{font-size:14px;margin:14px 0 6px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12px}
code{background:var(--head);padding:0 3px;border-radius:3px}
.scroll{overflow-x:auto;max-width:100%}.tall{max-height:85vh;overflow:auto}
table{border-collapse:collapse;margin:4px 0 12px;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--head);position:sticky;top:0;z-index:1;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.muted{color:var(--muted)}.small{font-size:12px}
.badge{display:inline-block;padding:0 7px;border-radius:10px;font-size:11px;font-weight:700;line-height:18px}
.badge.ok{background:var(--okbg);color:var(--ok)}.badge.fail,.badge.error{background:var(--fail);color:#fff}
.badge.skip{background:var(--warnbg);color:var(--warn)}.badge.none{background:var(--head);color:var(--muted)}
td.failed{background:var(--failbg)}td.skip{background:var(--warnbg)}td.error{background:var(--failbg)}
.delta{display:block;font-size:11px;color:var(--muted)}.delta.up{color:var(--ok)}
.delta.regressed{color:var(--fail);font-weight:700}.delta.worse{color:var(--warn)}
.banner{border:1px solid var(--line);border-radius:6px;padding:8px 14px;margin:10px 0}
.banner.warn{background:var(--warnbg);border-color:#d4a72c}.banner.fail{background:var(--failbg);border-color:var(--fail)}
.banner.ok{background:var(--okbg);border-color:#4ac26b}.banner ul{margin:4px 0;padding-left:20px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0 10px}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0}
details.case{border:1px solid var(--line);border-radius:6px;margin:8px 0;padding:0 14px}
details.case[open]{padding-bottom:10px}details.case.failing{border-left:5px solid var(--fail)}
details.case>summary{cursor:pointer;padding:8px 0;font-weight:600}
details.case>summary .muted{font-weight:400}
.ans{white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
font-size:12px}
.right{color:var(--ok)}.wrong{color:var(--fail)}
tr.flip-good td{background:var(--okbg)}tr.flip-bad td{background:var(--failbg)}
tr.flip td:first-child{border-left:4px solid var(--ok)}tr.flip-bad td:first-child{border-left-color:var(--fail)}
tr.idle td{color:var(--muted);background:#fafbfc;font-style:italic}
.heatmaps{display:flex;flex-wrap:wrap;gap:12px 28px}.heatmaps svg{max-width:none}
@media print{body{padding:0;max-width:none;font-size:11px}th{position:static}.scroll,.tall{overflow:visible;
max-height:none}details.case{break-inside:avoid-page}a{color:inherit;text-decoration:none}}
"""
_SCRIPT = (  # printing opens every case; without JavaScript the page is the same, closed cases stay closed
    '<script>addEventListener("beforeprint",function(){'
    'document.querySelectorAll("details").forEach(function(d){d.open=true})})</script>'
)


def _e(value: object) -> str:
    """A value as HTML text: escaped (quotes too, so attributes are safe), None as empty."""
    return "" if value is None else xml_text(value)


def _real(value: object) -> bool:
    """A number a format spec can take (true and false are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: object, digits: int = 2) -> str:
    """A number rounded; anything else a record may hold (read back from disk) as escaped text."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if _real(value) else _e(value)


def _thousands(value: object) -> str:
    """A count with thousands separators, or (not a number) escaped text."""
    return f"{value:,}" if _real(value) else _e(value)


def _label(name: str) -> str:
    spec = METRIC_BY_NAME.get(name)
    return spec.label if spec else name


def _threshold(name: str, threshold: object) -> str:
    """'≥0.8' / '≤1.5' in the metric's direction; 'recorded' when nothing gates it (plain text: escape it)."""
    spec = METRIC_BY_NAME.get(name)
    relation = "\u2264" if spec and spec.direction == "lower" else "\u2265"
    if threshold is None:
        return "recorded"
    return f"{relation}{threshold:g}" if _real(threshold) else f"{relation}{threshold}"


def _badge(passed: object) -> str:
    passed = passed if isinstance(passed, bool) else None
    kind, text = {True: ("ok", "ok"), False: ("fail", "FAIL"), None: ("none", "\u2013")}[passed]
    title = ' title="not judged: no threshold, or nothing measured"' if passed is None else ""
    return f'<span class="badge {kind}"{title}>{text}</span>'


def _table(head: Sequence[str], rows: Iterable[str], tall: bool = False, cls: str = "") -> str:
    """A table in a horizontally scrolling box; `head` cells are HTML already."""
    heads = "".join(f"<th>{h}</th>" for h in head)
    box = "scroll tall" if tall else "scroll"
    body = "".join(rows)
    return f'<div class="{box}"><table class="{cls}"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table></div>'


# Baseline deltas (written by the baseline comparison when a run is compared with an earlier one).


def _gated(name: str, row: Mapping[str, Any]) -> bool:
    """Whether a metric row is an item (so a regression fails the run): it has a threshold, or is gated by
    default. A recorded-only row that got worse is shown as worse, not as a failure."""
    spec = METRIC_BY_NAME.get(name)
    return row.get("threshold") is not None or bool(spec and spec.gated_by_default)


def _regressed(name: str, row: Mapping[str, Any]) -> bool:
    return bool((row.get("baseline") or {}).get("regressed")) and _gated(name, row)


def _delta(
    name: str,
    baseline: Mapping[str, Any] | None,
    direction: str | None = None,
    digits: int = 2,
    gated: bool = True,
) -> str:
    """'▲ +0.10' (went up), '▼ -0.10' (went down), '=': the arrow is the sign, as in the terminal; the colour
    says better (green) or worse (red when it regressed) in the metric's direction."""
    if not baseline:
        return ""
    delta, before = baseline.get("delta") if _real(baseline.get("delta")) else None, baseline.get("value")
    spec = METRIC_BY_NAME.get(name)
    direction = spec.direction if spec else (direction or "higher")
    tip = f"baseline {_num(before, 3)}, tolerance {baseline.get('tolerance', 'n/a')}"
    if delta is None:
        text, kind = ("not in baseline" if before is None else f"was {_num(before, digits)}"), ""
    else:
        better = delta > 0 if direction == "higher" else delta < 0
        arrow = "=" if abs(delta) < 5e-4 else ("\u25b2" if delta > 0 else "\u25bc")
        text, kind = f"{arrow} {delta:+.{digits}f}", ("up" if better else "")
    if baseline.get("regressed"):
        kind, text = ("regressed", text + " regressed") if gated else ("worse", text + " worse")
    return f'<span class="delta {kind}" title="{_e(tip)}">{_e(text)}</span>'


def _baseline_banner(summary: Mapping[str, Any] | None) -> str:
    """The comparison's warnings and the cases only one side has, where nobody can miss them."""
    baseline = (summary or {}).get("baseline")
    if not baseline:
        return ""
    items = [f"<li>{_e(w)}</li>" for w in baseline.get("warnings") or []]
    for key, words in (
        ("missing_in_run", "in the baseline, not in this run"),
        ("missing_in_baseline", "in this run, not in the baseline"),
    ):
        cases = baseline.get(key) or []
        if cases:
            items.append(f"<li>{len(cases)} case(s) {words}: {', '.join(f'<code>{_e(c)}</code>' for c in cases)}</li>")
    kind = "warn" if items else "ok"
    listing = f"<ul>{''.join(items)}</ul>" if items else " no warnings; every case is in both runs."
    title = f"<b>Compared with baseline</b> <code>{_e(baseline.get('path'))}</code>:"
    return f'<div class="banner {kind}" id="baseline">{title}{listing}</div>'


# The header: where and how the run ran, and its counts.


def _counts(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> dict[str, int]:
    """The run's counts: summary.json's, else counted from the records (a run cut short has no summary)."""
    statuses = [r.get("status") for r in records]
    counted = {
        "cases": len(records),
        "ran": statuses.count("ran"),
        "skipped": statuses.count("skipped"),
        "errors": statuses.count("error"),
        "failed_metrics": sum(1 for r in records for m in r.get("metrics", {}).values() if m.get("passed") is False),
    }
    given = {key: (summary or {}).get(key) for key in counted}
    return {key: number if type(number) is int else counted[key] for key, number in given.items()}


def _regressions(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> int:
    """Case metrics and suite rows the baseline comparison marked regressed, among those that are items."""
    cases = sum(1 for r in records for name, m in (r.get("metrics") or {}).items() if _regressed(name, m))
    suites = sum(1 for row in (summary or {}).get("suites") or [] if _regressed(str(row.get("metric", "")), row))
    return cases + suites


def _verdict_banner(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> str:
    """One line a reader sees first: PASS, or what failed (metrics, suite rows, errors, regressions)."""
    counts = _counts(records, summary)
    suites_failed = sum(1 for row in (summary or {}).get("suites", []) if row.get("passed") is False)
    regressed = _regressions(records, summary)
    problems = [
        f"{counts['failed_metrics']} failed metric(s)" if counts["failed_metrics"] else "",
        f"{suites_failed} failed suite metric(s)" if suites_failed else "",
        f"{counts['errors']} case error(s)" if counts["errors"] else "",
        f"{regressed} regression(s) against the baseline" if regressed else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        return f'<div class="banner fail"><b>FAIL</b>: {_e(", ".join(problems))}</div>'
    return '<div class="banner ok"><b>PASS</b>: every gated metric met its threshold</div>'


def _header(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> str:
    first = records[0] if records else {}
    info = summary or first
    model = info.get("model") or {}
    counts = _counts(records, summary)
    versions = info.get("versions") or {}
    wall = (summary or {}).get("wall_seconds")
    rows = {
        "model": f"<b>{_e(model.get('name'))}</b> <span class='muted'>{_e(model.get('class'))}</span>"
        + (f" weights <code>{_e(str(model['weights_hash'])[:12])}</code>" if model.get("weights_hash") else "")
        + (f" <span class='muted'>({_e(model.get('source'))})</span>" if model.get("source") else ""),
        "device": f"{_e(info.get('device'))} / {_e(info.get('dtype'))}"
        + (f", mode {_e(summary.get('mode'))}" if summary and summary.get("mode") else ""),
        "wall time": "n/a (no summary.json)" if wall is None else f"{_num(wall, 1)} s",
        "cases": f"{counts['cases']}: {counts['ran']} ran, {counts['skipped']} skipped, {counts['errors']} errors; "
        f"{counts['failed_metrics']} failed metrics",
        "versions": ", ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in versions.items() if v),
    }
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows.items())
    return (
        f"<h1>pytest-factedit run <code>{_e(info.get('run_id'))}</code></h1>"
        f'<dl class="meta">{meta}</dl>{_verdict_banner(records, summary)}'
    )


# The case x metric table.


def _shared_threshold(records: Sequence[Mapping[str, Any]], name: str) -> str | None:
    """'≥0.9' when every case gates a metric at the same threshold (shown once, in the header), else None."""
    found = {r["metrics"][name].get("threshold") for r in records if name in r.get("metrics", {})}
    return _threshold(name, found.pop()) if len(found) == 1 else None


def _metric_cell(name: str, entry: Mapping[str, Any] | None, shared: str | None) -> str:
    if entry is None:
        return "<td></td>"
    threshold = "" if shared else f' <span class="muted">{_e(_threshold(name, entry.get("threshold")))}</span>'
    cls = "num failed" if entry.get("passed") is False else "num"
    tip = f' title="{_e(entry["reason"])}"' if entry.get("reason") else ""
    delta = _delta(name, entry.get("baseline"), entry.get("direction"), gated=_gated(name, entry))
    return f'<td class="{cls}"{tip}>{_num(entry.get("value"))}{threshold} {_badge(entry.get("passed"))}{delta}</td>'


def _case_link(index: int, record: Mapping[str, Any]) -> str:
    return f'<td><a href="#case-{index}">{_e(record.get("case_id"))}</a></td>'


def _status_cell(record: Mapping[str, Any]) -> str:
    """A skipped or errored case: one cell across the metrics, with the reason."""
    kind, word = _STATUS.get(record.get("status", "error"), ("error", str(record.get("status")).upper()))
    badge = f'<span class="badge {kind}">{_e(word)}</span>'
    return f'<td class="{kind}" colspan="{len(COLUMNS) + 1}">{badge} {_e(record.get("reason"))}</td>'


def _summary_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Case x metric (the metrics gated by default), value against threshold, verdict, baseline delta."""
    shared = {name: _shared_threshold(records, name) for name in COLUMNS}
    head = ["case"] + [
        f'<span title="{_e(name)}: {_e(METRIC_BY_NAME[name].definition)}">{_e(_label(name))}</span>'
        + (f'<br><span class="muted small">{_e(shared[name])}</span>' if shared[name] else "")
        for name in COLUMNS
    ]
    head.append("edit s")
    rows = []
    for index, record in enumerate(records, start=1):
        if record.get("status", "ran") != "ran":
            cells = _status_cell(record)
        else:
            metrics = record.get("metrics", {})
            cells = "".join(_metric_cell(name, metrics.get(name), shared[name]) for name in COLUMNS)
            cells += f'<td class="num">{_num(record.get("timings", {}).get("edit_seconds"), 1)}</td>'
        rows.append(f"<tr>{_case_link(index, record)}{cells}</tr>")
    return "<h2>Cases</h2>" + _table(head, rows, tall=True, cls="summary")


# Suite tables and the many-edit block.


def _suite_row(row: Mapping[str, Any], with_baseline: bool) -> str:
    """Folder, metric, pooled value (and its delta), Wilson interval, hits/samples, threshold and verdict."""
    interval = row.get("interval")
    name = row.get("metric", "")
    gate = (
        "" if row.get("threshold") is None else f"{_e(_threshold(name, row['threshold']))} {_badge(row.get('passed'))}"
    )
    bounds = interval if isinstance(interval, list) and len(interval) == 2 else None
    numbers = [
        _num(row.get("value"), 3) + _delta(name, row.get("baseline"), digits=3, gated=_gated(name, row)),
        f"{_num(bounds[0], 3)} \u2013 {_num(bounds[1], 3)}" if bounds is not None else "n/a",
        f"{_e(row.get('hits'))}/{_e(row.get('samples'))}",
        _e(row.get("cases")),
    ]
    cells = [f'<td>{_e(_label(name))} <span class="muted small">{_e(name)}</span></td>']
    cells += [f'<td class="num">{c}</td>' for c in numbers]
    cells.append(f'<td class="num{" failed" if row.get("passed") is False else ""}">{gate}</td>')
    if with_baseline:
        cells.append(f"<td>{_suite_baseline(row.get('baseline'), _gated(name, row))}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _suite_baseline(baseline: Mapping[str, Any] | None, gated: bool = True) -> str:
    """The paired comparison behind a suite delta: shared samples, flips each way, the test's p-value."""
    if not baseline:
        return ""
    p_value = baseline.get("p_value")
    words = (
        f"{_e(baseline.get('shared'))} shared, {_e(baseline.get('right_to_wrong'))} right\u2192wrong, "
        f"{_e(baseline.get('wrong_to_right'))} wrong\u2192right"
        + (f", p={p_value:.3g} (\u03b1 {_e(baseline.get('alpha'))})" if _real(p_value) else "")
    )
    word = (" regressed" if gated else " worse") if baseline.get("regressed") else ""
    cls = ("delta regressed" if gated else "delta worse") if baseline.get("regressed") else "muted small"
    return f'<span class="{cls}">{words}{word}</span>'


def _suite_tables(summary: Mapping[str, Any] | None) -> str:
    rows = list((summary or {}).get("suites") or [])
    if not rows:
        return ""
    has_baseline = any(row.get("baseline") for row in rows)
    head = ["metric", "value", "Wilson 95%", "hits/samples", "cases", "threshold"] + (
        ["vs baseline"] if has_baseline else []
    )
    out = ["<h2>Suites</h2>"]
    for folder in dict.fromkeys(row.get("folder") for row in rows):
        mine = [row for row in rows if row.get("folder") == folder]
        body = [_suite_row(row, has_baseline) for row in mine]
        out.append(f"<h3>suite <code>{_e(folder)}</code></h3>" + _table(head, body, cls="suite"))
    return "".join(out)


def _many_block(summary: Mapping[str, Any] | None) -> str:
    """The end-of-run block of a sequential or batch run: each metric with every edit in place."""
    out = []
    for key in ("sequence", "batch"):
        many = (summary or {}).get(key)
        if not many:
            continue
        rows = [
            f"<tr><td>{_e(_label(name))} <span class='muted small'>{_e(name)}</span></td>"
            f"<td class='num'>{_num(m.get('value'), 3)}</td><td class='num'>{_e(m.get('samples'))}</td>"
            f"<td class='num'>{_e(_threshold(name, m.get('threshold')))}</td></tr>"
            for name, m in (many.get("metrics") or {}).items()
        ]
        per_edit = (many.get("memory") or {}).get("bytes_per_edit")
        held = f"; {_num(per_edit, 0)} bytes per kept edit" if per_edit is not None else ""
        aside = {group: n for group, n in (many.get("set_aside") or {}).items() if n}
        if aside:
            counts = ", ".join(f"{_e(group)} {_e(n)}" for group, n in aside.items())
            held += f"; set aside as naming another edited subject: {counts}"
        out.append(
            f"<h2>{_e(key)} of {_e(many.get('cases'))} edits</h2><p class='muted'>{_num(many.get('seconds'), 1)} s; "
            f"base restored: {_e(many.get('base_restored'))}{held}</p>"
            + _table(["metric", "value", "samples", "threshold"], rows)
        )
    return "".join(out)


# One case: what was edited and how, every metric, every answer, the heatmaps.


def flip(answer: Mapping[str, Any]) -> str | None:
    """'good' or 'bad' when what an answer says changed between the base and the edited model, else None.

    Prompts and paraphrases flip when the fact they name (new / old / neither) changed, towards `new` being
    good; neighbours and controls when right/wrong changed.
    """
    if answer.get("edited") is None:
        return None
    if answer.get("group") in FACT_GROUPS:
        if "edited_says" not in answer or answer.get("base_says") == answer["edited_says"]:
            return None
        return (
            "good" if _SAYS_RANK.get(answer["edited_says"], 1) > _SAYS_RANK.get(answer.get("base_says"), 1) else "bad"
        )
    before, after = answer.get("base_correct"), answer.get("edited_correct")
    if after is None or before == after:
        return None
    return "good" if after else "bad"


def _judged(answer: Mapping[str, Any], edited: bool) -> str:
    """Right or wrong, before or after; for a fact prompt, which of new/old it names."""
    if answer.get("group") in FACT_GROUPS:
        key = "edited_says" if edited else "base_says"
        if key not in answer:
            return '<span class="muted">\u2013</span>'
        says = answer[key]
        cls = {"new": "right", "old": "wrong"}.get(says, "muted")
        return f'<span class="{cls}">{"says " + _e(says) if says else "neither"}</span>'
    correct = answer.get("edited_correct" if edited else "base_correct")
    if correct is None:
        return '<span class="muted">\u2013</span>'
    return '<span class="right">\u2713 right</span>' if correct else '<span class="wrong">\u2717 wrong</span>'


_FLIP_WORDS = {("good", True): "towards the edit", ("bad", True): "away from new", ("good", False): "now right"}


def _idle(answer: Mapping[str, Any]) -> bool:
    """A paraphrase the unedited model did not answer with `old`: the rates do not count it (reword it)."""
    return answer.get("group") == "paraphrases" and answer.get("informative") is False


def _answer_note(answer: Mapping[str, Any], flipped: str | None) -> str:
    fact = answer.get("group") in FACT_GROUPS
    notes = [f"<b>flip</b> ({_FLIP_WORDS.get((flipped, fact), 'now wrong')})"] if flipped else []
    if _idle(answer):
        notes.append("not counted: the unedited model did not answer <i>old</i>; reword it")
    elif fact and answer.get("informative") is False:
        notes.append("not in the base-conditioned rates: the unedited model did not answer <i>old</i>")
    if answer.get("shares_old"):
        notes.append("its answer is the edited fact's <i>old</i>")
    if answer.get("unchanged"):
        notes.append("given without an answer: the unedited model's first words must stay")
    return "; ".join(notes)


def _answer_row(number: int, answer: Mapping[str, Any]) -> str:
    flipped = flip(answer)
    classes = (["flip", f"flip-{flipped}"] if flipped else []) + (["idle"] if _idle(answer) else [])
    logprobs = answer.get("logprobs") or {}
    tip = ", ".join(f"{k} {v:.2f}" for k, v in logprobs.items() if isinstance(v, (int, float)))
    title = f' title="mean log-probability per token after the edit: {_e(tip)}"' if tip else ""
    edited = answer.get("edited")
    cells = [
        f'<td class="num">{number}</td>',
        f"<td>{_e(answer.get('prompt'))}</td>",
        f"<td>{_e(' / '.join(answer.get('expected') or []))}</td>",
        f'<td class="ans">{_e(answer.get("base"))}</td>',
        f"<td>{_judged(answer, edited=False)}</td>",
        f'<td class="ans">{_e(edited) if edited is not None else "<span class=muted>not asked</span>"}</td>',
        f"<td>{_judged(answer, edited=True)}</td>",
        f"<td class='small'>{_answer_note(answer, flipped)}</td>",
    ]
    return f'<tr class="{" ".join(classes)}"{title}>{"".join(cells)}</tr>'


def _answers(record: Mapping[str, Any]) -> str:
    answers = record.get("answers") or []
    groups = list(GROUPS) + [g for g in dict.fromkeys(a.get("group") for a in answers) if g not in GROUPS]
    head = ["#", "prompt", "expected", "base answer", "before", "edited answer", "after", "note"]
    out = []
    for group in groups:
        mine = [a for a in answers if a.get("group") == group]
        if not mine:
            continue
        flips = sum(1 for a in mine if flip(a))
        counts = f"{len(mine)} answers" + (f", {flips} flipped" if flips else "")
        rows = [_answer_row(number, answer) for number, answer in enumerate(mine, start=1)]
        out.append(
            f"<h3>{_e(group)} <span class='muted small'>{counts}</span></h3>" + _table(head, rows, cls="answers")
        )
    return "".join(out)


def _stages(method: Mapping[str, Any]) -> str:
    parts = []
    for stage in method.get("stages") or []:
        goal = "goal reached" if stage.get("reached_goal") else "goal not reached"
        loss = stage.get("final_loss")
        parts.append(
            f"<b>{_e(stage.get('name'))}</b> {_e(stage.get('steps'))} steps, {_num(stage.get('seconds'))} s"
            + (f", loss {loss:.3f}" if isinstance(loss, (int, float)) else "")
            + f", {goal}"
        )
    return "; ".join(parts)


def _pairs(values: Mapping[str, Any], unit: str = "", digits: int = 3) -> str:
    """'key value, ...' of a flat mapping (timings, scores), numbers rounded."""
    shown = [
        f"{_e(k.replace('_', ' '))} <b>{v:.{digits}f}{unit}</b>" if isinstance(v, float) else f"{_e(k)} <b>{_e(v)}</b>"
        for k, v in values.items()
    ]
    return ", ".join(shown)


def _timings(timings: Mapping[str, Any]) -> str:
    """'edit 9.15 s, base per token 30.3 ms, ...' from the record's `*_seconds` and `*_seconds_per_token`."""
    shown = []
    for key, value in timings.items():
        if not isinstance(value, (int, float)):
            continue
        if key.endswith("_seconds_per_token"):
            shown.append(
                f"{_e(key[: -len('_seconds_per_token')].replace('_', ' '))} per token <b>{value * 1000:.1f} ms</b>"
            )
        else:
            shown.append(f"{_e(key.removesuffix('_seconds').replace('_', ' '))} <b>{value:.2f} s</b>")
    return ", ".join(shown)


def _settings(method: Mapping[str, Any]) -> str:
    settings = method.get("settings") or {}
    rows = "".join(f"<tr><td>{_e(k)}</td><td class='mono'>{_e(v)}</td></tr>" for k, v in settings.items())
    return f"<details><summary>{len(settings)} settings</summary><table>{rows}</table></details>" if settings else ""


def _fact(record: Mapping[str, Any]) -> str:
    if not record.get("old"):
        return ""
    old, new = (" / ".join(record.get(key) or []) for key in ("old", "new"))
    return f"<b>{_e(old)}</b> \u2192 <b>{_e(new)}</b>"


def _case_meta(record: Mapping[str, Any]) -> str:
    method = record.get("method") or {}
    modules = record.get("target_modules") or []
    rows = {
        "fact": _fact(record),
        "case file": f"<code>{_e(record.get('case_file'))}</code>",
        "method": f"<b>{_e(method.get('name'))}</b>"
        + (
            f", {_thousands(method['trainable_parameters'])} trainable parameters"
            if method.get("trainable_parameters")
            else ""
        )
        + (f", seed {_e(record.get('seed'))}" if record.get("seed") is not None else "")
        + _settings(method),
        "stages": _stages(method),
        "targets": _e(record.get("targets_rule") or "")
        + ("<br>" + " ".join(f"<code>{_e(m)}</code>" for m in modules) if modules else ""),
        "timings": _timings(record.get("timings") or {}),
        "scores": _pairs(record.get("scores") or {}),
        "base restored": _RESTORED.get(record.get("base_restored"), ""),
    }
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows.items() if v)
    return f'<dl class="meta">{meta}</dl>'


def _case_metrics(record: Mapping[str, Any]) -> str:
    """Every metric the record holds, gated or recorded, in the metric table's order."""
    metrics = record.get("metrics") or {}
    if not metrics:
        return ""
    names = [n for n in METRIC_BY_NAME if n in metrics] + [n for n in metrics if n not in METRIC_BY_NAME]
    has_baseline = any(m.get("baseline") for m in metrics.values())
    head = ["metric", "value", "threshold", "verdict", "hits/samples", "protocol", "note"]
    rows = []
    for name in names:
        m = metrics[name]
        hits = f"{m['hits']}/{m.get('samples')}" if m.get("hits") is not None else f"{_e(m.get('samples'))} samples"
        cls = ' class="failed"' if m.get("passed") is False else ""
        rows.append(
            f"<tr><td>{_e(_label(name))} <span class='muted small'>{_e(name)}</span></td>"
            f"<td class='num'>{_num(m.get('value'), 3)}"
            f"{_delta(name, m.get('baseline'), m.get('direction'), 3, _gated(name, m))}</td>"
            f"<td class='num'>{_e(_threshold(name, m.get('threshold')))}</td><td{cls}>{_badge(m.get('passed'))}</td>"
            f"<td class='num'>{hits}</td><td class='small'>{_e(m.get('protocol'))}</td>"
            f"<td class='small'>{_e(m.get('reason'))}</td></tr>"
        )
    note = " <span class='muted small'>(deltas against the baseline)</span>" if has_baseline else ""
    return f"<h3>metrics{note}</h3>" + _table(head, rows, cls="metrics")


def _baseline_flips(record: Mapping[str, Any]) -> str:
    """Answers whose verdict changed since the baseline run, per metric."""
    rows = []
    for name, m in (record.get("metrics") or {}).items():
        for changed in (m.get("baseline") or {}).get("flipped") or []:
            before, after = changed.get("before"), changed.get("after")
            kind = "flip flip-good" if after and not before else "flip flip-bad"
            rows.append(
                f'<tr class="{kind}"><td>{_e(_label(name))}</td><td>{_e(changed.get("group"))}</td>'
                f"<td>{_e(changed.get('prompt'))}</td><td>{'right' if before else 'wrong'}</td>"
                f"<td>{'right' if after else 'wrong'}</td></tr>"
            )
    if not rows:
        return ""
    return "<h3>changed since the baseline</h3>" + _table(["metric", "group", "prompt", "baseline", "now"], rows)


def _heatmaps(record: Mapping[str, Any]) -> str:
    localization = record.get("localization")
    if not localization or not localization.get("grids"):
        return ""
    svgs = "".join(
        heatmap_svg(localization, str(record.get("case_id", "")), i) for i in range(len(localization["grids"]))
    )
    chosen = (
        f"chosen: MLP layers {_e(localization.get('mlp_layers'))} (subject's last token), attention layers "
        f"{_e(localization.get('attention_layers'))} (last token); {_num(localization.get('seconds'))} s, "
        f"{_e(localization.get('precision'))}{STORED_NOTE if localization.get('stored') else ''}"
    )
    return f"<h3>localization <span class='muted small'>{chosen}</span></h3><div class='scroll heatmaps'>{svgs}</div>"


def _failing(record: Mapping[str, Any]) -> list[str]:
    """The labels of what went wrong in a case: failed metrics and baseline regressions."""
    metrics = record.get("metrics") or {}
    failed = [_label(n) for n, m in metrics.items() if m.get("passed") is False]
    regressed = [f"{_label(n)} regressed" for n, m in metrics.items() if _regressed(n, m)]
    return failed + regressed


def _case_section(index: int, record: Mapping[str, Any]) -> str:
    """A <details> per case, open when it failed, errored or regressed."""
    status = record.get("status", "ran")
    failing = _failing(record)
    kind, word = _STATUS.get(status, ("error", str(status).upper()))
    if status == "ran" and failing:
        kind, word = "fail", "FAIL"
    is_open = " open" if kind != "ok" else ""
    method = (record.get("method") or {}).get("name")
    what = " \u00b7 ".join(x for x in (method, "failed: " + ", ".join(failing) if failing else "") if x)
    reason = f'<div class="banner {"warn" if status == "skipped" else "fail"}">{_e(record.get("reason"))}</div>'
    return (
        f'<details class="case{" failing" if kind in ("fail", "error") else ""}" id="case-{index}"{is_open}>'
        f'<summary><span class="badge {kind}">{_e(word)}</span> {_e(record.get("case_id"))} '
        f'<span class="muted">{_e(what)}</span></summary>'
        + (reason if record.get("reason") else "")
        + _case_meta(record)
        + _case_metrics(record)
        + _baseline_flips(record)
        + _answers(record)
        + _heatmaps(record)
        + "</details>"
    )


def _drawn(part: str, draw: Callable[..., str], *args: Any) -> str:
    """One part of the page. A value it cannot draw (a record changed by hand) costs that part, said in its
    place, not the page: a report writer never fails a green run or `factedit report`."""
    try:
        return draw(*args)
    except Exception as exc:
        why = f"{part} could not be drawn: {type(exc).__name__}: {str(exc)[:200]}"
        return f'<div class="banner fail">{_e(why)}</div>'


def html_report(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> str:
    """The whole page of a run (results.jsonl records, and summary.json when there is one) as one string."""
    records = list(records)
    run_id = (summary or (records[0] if records else {})).get("run_id")
    body = (
        _drawn("the header", _header, records, summary)
        + _drawn("the baseline banner", _baseline_banner, summary)
        + (_drawn("the case table", _summary_table, records) if records else "<p>No case records.</p>")
        + _drawn("the suite tables", _suite_tables, summary)
        + _drawn("the sequential/batch block", _many_block, summary)
        + (
            "<h2>Case details</h2>"
            + "".join(_drawn(f"case {i}", _case_section, i, r) for i, r in enumerate(records, start=1))
            if records
            else ""
        )
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>pytest-factedit {_e(run_id)}</title><style>{_CSS}</style></head>"
        f"<body>{body}{_SCRIPT}</body></html>\n"
    )
    return printable(page)  # a lone surrogate from a JSON escape cannot stop the write


def write_html(path: Path | str, records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> Path:
    """Write the page atomically (a browser or CI never reads half a page); returns the path."""
    path = Path(path)
    write_atomic(path, html_report(records, summary))
    return path
