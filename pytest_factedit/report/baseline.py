"""Baselines: a run's metrics and every sample's outcome saved as JSON, and a later run compared with them.

A case metric regresses when it is worse than its baseline by more than its tolerance; a suite metric
when a paired McNemar test on the samples both runs share finds it significantly worse, or when its
rate over those samples drops by more than the tolerance. Better never fails.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from ..errors import BaselineError, explained, shown
from ..infra.files import write_atomic
from ..metrics.measure import CaseEvidence
from ..metrics.spec import METRIC_BY_NAME, METRICS, MetricSpec, threshold_problem, worse_by
from ..metrics.verdict import mcnemar_worse_p
from .records import (
    BaselineBlock,
    CaseRecord,
    RunInfo,
    SuiteRecord,
    error_in_place_of,
    pooled,
    record_evidence,
    with_metric_baselines,
)
from .shape import Misfit, described, json_value, misfit, utf8_text

if TYPE_CHECKING:
    from ..run.planned import Suite

BASELINE_SCHEMA_VERSION = 1
BASELINE_KIND = "pytest-factedit baseline"
FLIPS_SHOWN = 8  # a suite comparison keeps this many flipped prompts: the message names them, the count says all
_EPSILON = 1e-9  # floating noise in a difference of equal rates is not a regression


class SampleOutcome(TypedDict):
    group: str
    prompt: str
    hit: bool


class BaselineMetric(TypedDict, total=False):
    value: float | None
    samples: int
    outcomes: list[SampleOutcome]  # share metrics only: each counted answer, right or wrong


class _BaselineCaseBase(TypedDict):
    metrics: dict[str, BaselineMetric]


class BaselineCase(_BaselineCaseBase, total=False):
    case_file: str
    status: str
    method: dict[str, Any]


class BaselineModel(TypedDict, total=False):
    name: str | None
    kind: str | None
    source: str | None
    weights_hash: str | None


class BaselineFile(TypedDict, total=False):
    """The baseline file, as read back: every key a comparison or a warning reads has its type."""

    schema_version: int
    kind: str
    created: str
    run_id: str | None
    model: BaselineModel
    device: str | None
    dtype: str | None
    versions: dict[str, str | None]
    machine: dict[str, str | None]
    cases: dict[str, BaselineCase]


class Flip(TypedDict):
    group: str
    prompt: str
    before: bool  # right in the baseline
    after: bool  # right now


class CaseComparison(TypedDict):
    """`record["metrics"][name]["baseline"]`: this metric against the baseline's value."""

    value: float | None  # the baseline's value
    delta: float | None  # now - baseline (None when either side has no value)
    tolerance: float
    regressed: bool
    flipped: list[Flip]


class SuiteComparison(TypedDict):
    """`suite row["baseline"]`: a pooled metric against the baseline, paired on the samples both runs share."""

    value: float | None  # the baseline's rate over the shared samples
    current: float | None  # this run's rate over the same samples
    delta: float | None
    shared: int
    right_to_wrong: int
    wrong_to_right: int
    p_value: float
    alpha: float
    tolerance: float
    regressed: bool
    flipped: list[Flip]  # the first FLIPS_SHOWN right -> wrong, prefixed with their case id


def tolerance_for(metric: str, tolerances: Mapping[str, float]) -> float:
    """--factedit-tolerance for `metric`, else the metric table's default (0 for answers)."""
    return tolerances.get(metric, METRIC_BY_NAME[metric].baseline_tolerance)


def sample_outcomes(evidence: CaseEvidence, spec: MetricSpec) -> list[SampleOutcome]:
    """Each answer the metric counts, and whether it hit (share metrics; [] otherwise)."""
    if spec.samples is None:
        return []
    return [{"group": s.answer.group, "prompt": s.answer.prompt, "hit": s.hit} for s in spec.samples(evidence)]


def _outcomes_by_metric(record: CaseRecord) -> dict[str, list[SampleOutcome]]:
    """Every share metric's sample outcomes in a record that ran (its evidence rebuilt once)."""
    if record["status"] != "ran":
        return {}
    evidence = record_evidence(record)
    return {spec.name: sample_outcomes(evidence, spec) for spec in METRICS if spec.samples is not None}


def _baseline_case(record: CaseRecord) -> BaselineCase:
    metrics: dict[str, BaselineMetric] = {}
    outcomes = _outcomes_by_metric(record)
    for spec in METRICS:
        entry = record["metrics"].get(spec.name)
        if entry is None:
            continue
        metrics[spec.name] = {"value": entry["value"], "samples": entry["samples"]}
        if spec.samples is not None:
            metrics[spec.name]["outcomes"] = outcomes.get(spec.name, [])
    return {
        "case_file": record["case_file"],
        "status": record["status"],
        "method": record.get("method", {}),
        "metrics": metrics,
    }


def baseline_of(records: Iterable[CaseRecord], run: RunInfo) -> dict[str, Any]:
    """The baseline file's content: where the run ran, and per case every metric with its samples."""
    return {
        "schema_version": BASELINE_SCHEMA_VERSION,
        "kind": BASELINE_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": run.get("run_id"),
        "model": run.get("model", {}),
        "device": run.get("device"),
        "dtype": run.get("dtype"),
        "versions": run.get("versions", {}),
        "machine": run.get("machine") or {},
        "cases": {r["case_id"]: _baseline_case(r) for r in records},
    }


def write_baseline(path: Path, records: Sequence[CaseRecord], run: RunInfo) -> Path:
    """Write the baseline of `records` to `path` atomically (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(baseline_of(records, run), indent=1, sort_keys=True) + "\n")
    return path


_FIX = "save the baseline again with --factedit-save-baseline PATH (on main) rather than editing it"
_REQUIRED = ("schema_version", "kind", "cases", "model", "versions")


def _check_shape(path: Path, data: Any) -> dict[str, Any]:
    """The baseline whole against BaselineFile, then every metric value in its metric's range: a value a
    comparison cannot read must stop the run at start-up, and a NaN would never regress."""
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND:
        raise BaselineError(
            'not a pytest-factedit baseline (no "kind": "pytest-factedit baseline"). Fix: write one with '
            "--factedit-save-baseline PATH",
            path=path,
        )
    version = data.get("schema_version")
    if version != BASELINE_SCHEMA_VERSION:
        raise BaselineError(
            f"expected schema_version {BASELINE_SCHEMA_VERSION}, found {described(version, type(version) is int)}. "
            "Fix: save the baseline again with this version (--factedit-save-baseline)",
            path=path,
            key="schema_version",
        )
    found = misfit(data, BaselineFile, required=_REQUIRED, values=False) or _value_misfit(data["cases"])
    if found is not None:
        raise BaselineError(f"{found.message}. Fix: {_FIX}", path=path, key=found.key or None)
    return data


def _value_misfit(cases: Mapping[str, BaselineCase]) -> Misfit | None:
    """The first metric value out of its metric's range (a share in [0, 1], a ratio >= 0, always finite),
    or sample count below 0."""
    for case_id, case in cases.items():
        for name, metric in case["metrics"].items():
            where = f"cases.{case_id}.metrics.{name}"
            problem = _value_problem(name, metric.get("value"))
            if problem:
                return Misfit(f"{where}.value", problem)
            if metric.get("samples", 0) < 0:
                return Misfit(f"{where}.samples", "expected a count of 0 or more, found a negative one")
    return None


def _value_problem(name: str, value: float | None) -> str:
    if value is None:
        return ""
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        return "expected a finite number, found NaN, infinity or a number too large for a float"
    return threshold_problem(name, value) if name in METRIC_BY_NAME else ""


def read_baseline(path: Path) -> dict[str, Any]:
    """A baseline file, checked whole; BaselineError with the file, the key and the fix otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BaselineError(
            f"cannot read the baseline: {exc.strerror or exc}. Fix: save one first with --factedit-save-baseline "
            "PATH (on main), or pass the path of an existing file",
            path=path,
        ) from exc
    text = utf8_text(data, path, BaselineError, _FIX)
    return _check_shape(Path(path), json_value(text, path, BaselineError, _FIX))


def _keyed(outcomes: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, int], bool]:
    """Outcomes keyed by (group, prompt, occurrence), so that a prompt given twice pairs with its twin."""
    seen: Counter[tuple[str, str]] = Counter()
    keyed = {}
    for outcome in outcomes:
        pair = (str(outcome["group"]), str(outcome["prompt"]))
        keyed[pair + (seen[pair],)] = bool(outcome["hit"])
        seen[pair] += 1
    return keyed


def flips(before: Iterable[Mapping[str, Any]], after: Iterable[Mapping[str, Any]]) -> list[Flip]:
    """The shared samples whose outcome changed, right -> wrong first."""
    return _flips(_keyed(before), _keyed(after))


def _flips(old: Mapping[tuple[str, str, int], bool], new: Mapping[tuple[str, str, int], bool]) -> list[Flip]:
    changed: list[Flip] = [
        {"group": key[0], "prompt": key[1], "before": old[key], "after": new[key]}
        for key in old
        if key in new and old[key] != new[key]
    ]
    return sorted(changed, key=lambda f: f["after"])


def compare_metric(
    name: str, value: float | None, now: Sequence[SampleOutcome], base: BaselineMetric, tolerance: float
) -> CaseComparison:
    """One case metric against its baseline; it regresses when worse by more than `tolerance`."""
    before = base.get("value")
    delta = None if value is None or before is None else value - before
    regressed = value is not None and before is not None and worse_by(name, value, before) > tolerance + _EPSILON
    return {
        "value": before,
        "delta": delta,
        "tolerance": tolerance,
        "regressed": bool(regressed),
        "flipped": flips(base.get("outcomes", []), now),
    }


def compare_case(record: CaseRecord, baseline: Mapping[str, Any], tolerances: Mapping[str, float]) -> CaseRecord:
    """Add `baseline` to each metric of `record` that its baseline case also holds (in place; returned)."""
    base_case = baseline["cases"].get(record["case_id"])
    if base_case is None or record["status"] != "ran":
        return record
    outcomes = _outcomes_by_metric(record)
    comparisons = {}
    for spec in METRICS:
        entry = record["metrics"].get(spec.name)
        base = base_case["metrics"].get(spec.name)
        if entry is not None and base is not None:
            comparisons[spec.name] = compare_metric(
                spec.name, entry["value"], outcomes.get(spec.name, []), base, tolerance_for(spec.name, tolerances)
            )
    return with_metric_baselines(record, comparisons)


def _suite_pairs(
    metric: str, records: Iterable[CaseRecord], baseline: Mapping[str, Any]
) -> tuple[int, int, int, int, list[Flip]]:
    """(shared samples, right before, right -> wrong, wrong -> right, flips) over the suite's cases."""
    spec = METRIC_BY_NAME[metric]
    shared = right_before = 0
    changed: list[Flip] = []
    for record in records:
        base = baseline["cases"].get(record["case_id"], {}).get("metrics", {}).get(metric)
        if base is None or record["status"] != "ran":
            continue
        old, new = _keyed(base.get("outcomes", [])), _keyed(sample_outcomes(record_evidence(record), spec))
        both = [key for key in old if key in new]
        shared += len(both)
        right_before += sum(old[key] for key in both)
        changed += [{**f, "group": f"{record['case_id']}: {f['group']}"} for f in _flips(old, new)]
    worse = sum(1 for f in changed if f["before"])
    return shared, right_before, worse, len(changed) - worse, changed


def compare_suite(
    row: SuiteRecord, records: Iterable[CaseRecord], baseline: Mapping[str, Any], tolerance: float, alpha: float
) -> SuiteComparison:
    """A suite's pooled metric against the baseline, on the samples both runs share (McNemar, one-sided)."""
    shared, right_before, worse, better, changed = _suite_pairs(row["metric"], records, baseline)
    before = right_before / shared if shared else None
    current = (right_before - worse + better) / shared if shared else None
    p_value = mcnemar_worse_p(worse, better)
    dropped = before is not None and current is not None and before - current > tolerance + _EPSILON
    return {
        "value": before,
        "current": current,
        "delta": None if before is None or current is None else current - before,
        "shared": shared,
        "right_to_wrong": worse,
        "wrong_to_right": better,
        "p_value": p_value,
        "alpha": alpha,
        "tolerance": tolerance,
        "regressed": bool(p_value < alpha or dropped),
        "flipped": sorted(changed, key=lambda f: f["after"])[:FLIPS_SHOWN],
    }


ANY_MODEL = "--factedit-baseline-any-model"
WEIGHTS_FIX = (
    f"Fix: compare runs of the same model, save a new baseline with --factedit-save-baseline, or pass {ANY_MODEL} "
    "to compare with it anyway"
)


def weights_problem(baseline: Mapping[str, Any], weights_hash: str | None) -> str:
    """Why this model cannot be compared with the baseline ('' when it can): other weights give other
    answers, and a baseline without a weights hash cannot say which weights it was made with. With
    `weights_hash` None only the second is known (at start-up, before the model loads)."""
    saved = baseline["model"].get("weights_hash")
    if not saved:
        return "expected the weights hash of the model the baseline was made with, found none"
    if weights_hash and saved != weights_hash:
        name = shown(baseline["model"].get("name"), 40, typed=False)
        return (
            f"the baseline was made with other weights ({saved[:16]}, model {name}) than this run's "
            f"({weights_hash[:16]})"
        )
    return ""


def environment_warnings(baseline: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """Where this run differs from the baseline's machine (device, dtype, library versions): answers are
    deterministic on one machine, not across them."""
    warnings = [
        f"{key} differs from the baseline's: {baseline.get(key)} there, {run.get(key)} here"
        for key in ("device", "dtype")
        if run.get(key) and baseline.get(key) and run.get(key) != baseline.get(key)
    ]
    here, there = run.get("machine") or {}, baseline.get("machine") or {}
    warnings += [
        f"{key} differs from the baseline's: {there[key]} there, {here[key]} here"
        for key in ("cpu", "cpu_capability")
        if here.get(key) and there.get(key) and here[key] != there[key]
    ]
    versions, saved = run.get("versions") or {}, baseline.get("versions") or {}
    changed = [
        f"{name} {saved[name]} -> {versions[name]}" for name in saved if versions.get(name, saved[name]) != saved[name]
    ]
    if changed:
        warnings.append("library versions differ from the baseline's: " + ", ".join(changed))
    return warnings


def missing_cases(baseline: Mapping[str, Any], records: Iterable[CaseRecord]) -> tuple[list[str], list[str]]:
    """(baseline cases this run lacks, this run's cases the baseline lacks)."""
    ran = [r["case_id"] for r in records]
    return [c for c in baseline["cases"] if c not in ran], [c for c in ran if c not in baseline["cases"]]


@dataclass(frozen=True)
class Baseline:
    """--factedit-baseline as this run compares with it: the file (read and checked at start-up, so a bad
    one stops the run before the model loads) and the comparison's options."""

    path: Path
    data: dict[str, Any]
    any_model: bool  # --factedit-baseline-any-model: compare with other weights, or none recorded
    tolerances: dict[str, float]
    alpha: float

    @classmethod
    def read(cls, path: Path, any_model: bool, tolerances: dict[str, float], alpha: float) -> Baseline:
        baseline = cls(path, read_baseline(path), any_model, tolerances, alpha)
        baseline.check_weights(None)  # a baseline with no weights hash stops the run here
        return baseline

    def check_weights(self, weights_hash: str | None) -> None:
        """Refuse a baseline of other weights, or of none recorded (None: before the model loads), unless
        --factedit-baseline-any-model says to compare anyway (the summary then warns: `block`)."""
        problem = weights_problem(self.data, weights_hash)
        if problem and not self.any_model:
            raise BaselineError(f"{problem}. {WEIGHTS_FIX}", path=self.path, key="model.weights_hash")

    def compared(self, record: CaseRecord, run: RunInfo) -> CaseRecord:
        """The record with each metric's comparison against the baseline.

        A comparison that fails becomes the case's error: the case stays run once, and its record and the
        summary are still written.
        """
        try:
            return compare_case(record, self.data, self.tolerances)
        except Exception as exc:  # the baseline was checked at start-up: this is a bug, kept in the record
            return error_in_place_of(
                record, f"comparing it with the baseline {self.path} failed: {explained(exc)}", run
            )

    def block(self, run: RunInfo, records: Iterable[CaseRecord]) -> BaselineBlock:
        """summary.json's `baseline`: the file, where this machine differs, and the cases one side lacks."""
        in_run, in_baseline = missing_cases(self.data, records)
        return {
            "path": str(self.path),
            "warnings": self._weights_notes(run) + environment_warnings(self.data, dict(run)),
            "missing_in_run": in_run,
            "missing_in_baseline": in_baseline,
        }

    def _weights_notes(self, run: RunInfo) -> list[str]:
        """The summary's warning when the baseline was compared with other weights, or with none recorded
        (the run got here only with --factedit-baseline-any-model)."""
        problem = weights_problem(self.data, (run.get("model") or {}).get("weights_hash"))
        return [f"compared with it anyway ({ANY_MODEL}): {problem}"] if problem else []


def suite_row(suite: Suite, metric: str, records: list[CaseRecord], baseline: Baseline | None) -> SuiteRecord:
    """`metric` pooled over `records` of `suite`, with its paired comparison against the baseline (when one
    is given and the metric counts samples)."""
    row = pooled(suite.folder, metric, records, suite.thresholds.get(metric))
    if baseline is not None and METRIC_BY_NAME[metric].samples is not None:
        tolerance = tolerance_for(metric, baseline.tolerances)
        row["baseline"] = compare_suite(row, records, baseline.data, tolerance, baseline.alpha)
    return row


def suite_rows(suites: Iterable[Suite], records: Iterable[CaseRecord], baseline: Baseline | None) -> list[SuiteRecord]:
    """Every suite's pooled share metrics over those of its cases `records` holds, for the summary."""
    by_case = {(r["case_file"], r["case_id"]): r for r in records}
    rows = []
    for suite in suites:
        members = [by_case[key] for key in suite.members if key in by_case]
        rows += [suite_row(suite, spec.name, members, baseline) for spec in METRICS if spec.samples is not None]
    return rows


def missing_lines(block: BaselineBlock) -> list[tuple[str, list[str]]]:
    """The baseline's missing cases as the summary names them."""
    return [
        ("cases in the baseline that this run did not run", block["missing_in_run"]),
        ("cases of this run that the baseline lacks (not compared)", block["missing_in_baseline"]),
    ]


def summary_problems(block: BaselineBlock) -> list[str]:
    """What the terminal summary says of the baseline: its warnings, and the cases one side lacks."""
    missing = [f"baseline: {kind}: {', '.join(ids)}" for kind, ids in missing_lines(block) if ids]
    return [f"baseline: {warning}" for warning in block["warnings"]] + missing
