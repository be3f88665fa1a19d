"""The JSON shapes a run writes, typed and built here only: case records (results.jsonl, schema_version 1),
the sequential/batch block, and the run summary (summary.json)."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypedDict

from ..metrics.answers import ProbedAnswer, matches
from ..metrics.spec import METRIC_BY_NAME
from ..metrics.verdict import judge

if TYPE_CHECKING:
    from ..run.many import ManyOutcome
    from ..run.outcome import CaseOutcome

RECORD_SCHEMA_VERSION = 1
SUMMARY_SCHEMA_VERSION = 1
_VERSIONED = ("pytest-factedit", "torch", "transformers", "peft", "pytest", "gguf")


class RunInfo(TypedDict, total=False):
    """What every record of a run repeats about it: the run id, the model, where it ran, library versions."""

    run_id: str
    model: dict[str, Any]
    device: str | None
    dtype: str | None
    versions: dict[str, str | None]
    load_seconds: float
    conversion_seconds: float | None


class MetricRecord(TypedDict):
    value: float | None
    threshold: float
    passed: bool
    direction: str
    protocol: str
    samples: int


class AnswerRecord(TypedDict, total=False):
    group: str
    prompt: str
    expected: list[str]
    base: str
    base_correct: bool
    edited: str | None
    edited_correct: bool  # only once the edited model answered
    edited_says_old: bool  # only for prompts and paraphrases


class ManyPosition(TypedDict):
    position: int
    retained_at_end: float | None


class _RecordBase(TypedDict):
    schema_version: int
    run_id: str
    case_id: str
    case_file: str
    status: str  # ran | skipped | error
    reason: str
    model: dict[str, Any]
    device: str | None
    dtype: str | None
    metrics: dict[str, MetricRecord]
    answers: list[AnswerRecord]
    seed: int | None
    versions: dict[str, str | None]


class CaseRecord(_RecordBase, total=False):
    """One line of results.jsonl. An error record holds only the base keys; `sequence`/`batch` only in those modes."""

    method: dict[str, Any]
    target_modules: list[str]
    feedforward_modules: list[str]
    targets_rule: str | None
    localization: dict[str, Any] | None
    scores: dict[str, float]
    adapters: dict[str, Any] | None
    old: list[str]
    new: list[str]
    timings: dict[str, float]
    base_restored: bool | None
    sequence: ManyPosition
    batch: ManyPosition


class ManyMetricRecord(TypedDict):
    value: float | None
    samples: int
    protocol: str
    threshold: float | None


class ManyRecord(TypedDict, total=False):
    """The end-of-run block of `--factedit-mode sequential|batch` (summary.json `sequence`/`batch`)."""

    mode: str
    cases: int
    seconds: float
    base_restored: bool | None
    retained_by_case: dict[str, float]
    metrics: dict[str, ManyMetricRecord]
    adapter: dict[str, Any]  # batch: the one adapter, the cases it holds, its modules and stages


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _answer_entry(answer: ProbedAnswer, old: tuple[str, ...]) -> AnswerRecord:
    entry: AnswerRecord = {
        "group": answer.group,
        "prompt": answer.prompt,
        "expected": list(answer.expected),
        "base": answer.base,
        "base_correct": matches(answer.base, answer.expected),
        "edited": answer.edited,
    }
    if answer.edited is not None:
        entry["edited_correct"] = matches(answer.edited, answer.expected)
        if answer.group != "controls":
            entry["edited_says_old"] = matches(answer.edited, old)
    return entry


def _metric_entries(outcome: CaseOutcome) -> dict[str, MetricRecord]:
    out: dict[str, MetricRecord] = {}
    for name, value in outcome.metrics.items():
        threshold = outcome.thresholds[name]
        out[name] = {
            "value": value.value,
            "threshold": threshold,
            "passed": judge(name, value.value, threshold, value.samples).passed,
            "direction": METRIC_BY_NAME[name].direction,
            "protocol": value.protocol,
            "samples": value.samples,
        }
    return out


def case_record(outcome: CaseOutcome, case_file: str, run: RunInfo) -> CaseRecord:
    """The JSON record of one case; `run` holds run_id, model, device, dtype and versions."""
    targets = outcome.targets
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "run_id": run["run_id"],
        "case_id": outcome.case.id,
        "case_file": case_file,
        "status": outcome.status,
        "reason": outcome.reason,
        "model": run["model"],
        "device": run["device"],
        "dtype": run["dtype"],
        "method": {
            "name": outcome.settings.name,
            "settings": outcome.settings.as_record(),
            "stages": outcome.stages,
            "trainable_parameters": outcome.trainable_parameters,
        },
        "target_modules": list(targets.modules) if targets else [],
        "feedforward_modules": list(targets.feedforward) if targets else [],
        "targets_rule": targets.rule if targets else None,
        "localization": outcome.localization.as_record() if outcome.localization else None,
        "metrics": _metric_entries(outcome),
        "scores": outcome.scores,
        "adapters": outcome.adapters,
        "answers": [_answer_entry(a, outcome.case.old) for a in outcome.answers],
        "old": list(outcome.case.old),
        "new": list(outcome.case.new),
        "timings": {k: round(v, 6) for k, v in outcome.timings.items()},
        "base_restored": outcome.base_restored,
        "seed": outcome.settings.seed,
        "versions": run["versions"],
    }


def error_record(case_id: str, case_file: str, message: str, run: RunInfo) -> CaseRecord:
    """The record of a case that could not run (the error is kept, the other cases go on)."""
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "run_id": run["run_id"],
        "case_id": case_id,
        "case_file": case_file,
        "status": "error",
        "reason": message,
        "model": run["model"],
        "device": run["device"],
        "dtype": run["dtype"],
        "metrics": {},
        "answers": [],
        "seed": None,
        "versions": run["versions"],
    }


def outcome_record(outcome: CaseOutcome, case_file: str, run: RunInfo) -> CaseRecord:
    """A case record, or an error record when the outcome is an error."""
    if outcome.status == "error":
        return error_record(outcome.case.id, case_file, outcome.reason, run)
    return case_record(outcome, case_file, run)


def many_record(result: ManyOutcome, mode: str, thresholds: Mapping[str, float]) -> ManyRecord:
    """The end-of-run block of a sequential or batch run, with the threshold each metric is gated at."""
    block: ManyRecord = {
        "mode": mode,
        "cases": len(result.outcomes),
        "seconds": round(result.seconds, 3),
        "base_restored": result.base_restored,
        "retained_by_case": result.retained_by_case,
        "metrics": {
            v.name: {
                "value": v.value,
                "samples": v.samples,
                "protocol": v.protocol,
                "threshold": thresholds.get(v.name),
            }
            for v in result.metrics.values()
        },
    }
    if result.batch:
        block["adapter"] = result.batch  # batch mode: the one adapter and the cases it holds
    return block


def summary_record(
    records: Iterable[CaseRecord], run: RunInfo, wall_seconds: float, mode: str, many_key: str, many: ManyRecord | None
) -> dict[str, Any]:
    """summary.json: counts of the run's cases and failed metrics, where it ran, and the many-edit block."""
    records = list(records)
    statuses = [r["status"] for r in records]
    failed = sum(1 for r in records for v in r.get("metrics", {}).values() if not v["passed"])
    summary: dict[str, Any] = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "run_id": run["run_id"],
        "model": run["model"],
        "device": run["device"],
        "dtype": run["dtype"],
        "cases": len(records),
        "ran": statuses.count("ran"),
        "skipped": statuses.count("skipped"),
        "errors": statuses.count("error"),
        "failed_metrics": failed,
        "wall_seconds": round(wall_seconds, 3),
        "versions": run["versions"],
        "mode": mode,
    }
    if many is not None:
        summary[many_key] = many
    return summary
