"""The JSON shapes a run writes, typed, built and changed here only: case records (results.jsonl,
schema_version 1), the sequential/batch block, and the run summary (summary.json)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from ..metrics.answers import FACT_GROUPS, ProbedAnswer, matches
from ..metrics.measure import CaseEvidence, MetricValue
from ..metrics.spec import METRIC_BY_NAME
from ..metrics.verdict import judge, wilson_interval
from ..run.outcome import Status
from .shape import Misfit, misfit, shape_problem

if TYPE_CHECKING:
    from ..run.many import ManyOutcome
    from ..run.outcome import CaseOutcome

RECORD_SCHEMA_VERSION = 2  # 2: neighbours, base-conditioned rates, first-named answers, recorded metrics
SUMMARY_SCHEMA_VERSION = 1


class RunInfo(TypedDict, total=False):
    """What every record of a run repeats about it: the run id, the model, where it ran, library versions."""

    run_id: str
    model: dict[str, Any]
    device: str | None
    dtype: str | None
    versions: dict[str, str | None]
    load_seconds: float
    memory_estimate: str | None
    load_notes: list[str]  # what the load said: where from and in how long, and any product library it chose
    conversion_seconds: float | None
    worker: str  # an xdist worker: its share of the machine (GPU or CPU threads)
    machine: dict[str, str | None]  # the CPU and its instruction set: answers are deterministic on one kind
    base_pass_seconds: float  # every case's base rows decoded at once before the first case (not in its timings)


class _MetricBase(TypedDict):
    value: float | None
    threshold: float | None  # None: recorded only
    passed: bool | None  # None: not judged (no threshold, or nothing measured: see `reason`)
    direction: str
    protocol: str  # greedy_generation | mean_token_logprob | step_time
    samples: int


class MetricRecord(_MetricBase, total=False):
    hits: int  # share metrics: samples that hit
    reason: str  # why nothing was measured
    baseline: Any  # report/baseline.py CaseComparison, with --factedit-baseline


class _SuiteBase(TypedDict):
    folder: str
    metric: str
    cases: int
    hits: int
    samples: int
    value: float | None
    interval: list[float] | None
    threshold: float | None
    passed: bool | None


class SuiteRecord(_SuiteBase, total=False):
    """One metric pooled over the cases of a suite folder, with its Wilson 95% interval."""

    baseline: Any  # report/baseline.py SuiteComparison, with --factedit-baseline


class AnswerRecord(TypedDict, total=False):
    group: str  # one of metrics/answers.py GROUPS
    prompt: str
    expected: list[str]
    base: str
    base_correct: bool
    edited: str | None
    edited_correct: bool  # only once the edited model answered
    base_says: str | None  # prompts and paraphrases: which of new/old the answer names first (None: neither)
    edited_says: str | None
    edited_mentions_new: bool
    edited_mentions_old: bool
    informative: bool  # prompts and paraphrases: the base model answered with `old`, so the rates count it
    shares_old: bool  # neighbours: the answer is the edited fact's `old` (the hardest kind)
    unchanged: bool  # same_subject without `answer:`: `expected` holds the base model's first words
    logprobs: dict[str, float]  # after the edit, mean log-probability per token of each candidate answer


class _ManyPositionBase(TypedDict):
    position: int
    retained_at_end: float | None


class ManyPosition(_ManyPositionBase, total=False):
    answers_at_end: list[str]  # an edited case: its prompts' answers once every edit was in place


class _RecordBase(TypedDict):
    schema_version: int
    run_id: str
    case_id: str
    case_file: str
    status: Status
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
    chat: bool
    system: str | None
    timings: dict[str, float]
    base_restored: bool | None
    sequence: ManyPosition
    batch: ManyPosition
    machine: dict[str, str | None]


class _ManyMetricBase(TypedDict):
    value: float | None
    samples: int
    protocol: str
    threshold: float | None


class ManyMetricRecord(_ManyMetricBase, total=False):
    reason: str  # why nothing was measured


class ManyRecord(TypedDict, total=False):
    """The end-of-run block of `--factedit-mode sequential|batch` (summary.json `sequence`/`batch`)."""

    mode: str
    cases: int
    seconds: float
    base_restored: bool | None
    retained_by_case: dict[str, float]
    metrics: dict[str, ManyMetricRecord]
    adapter: dict[str, Any]  # batch: the one adapter, the cases it holds, its modules and stages
    memory: dict[str, int | float | None]  # sequential: bytes the kept gated edits hold, in all and per edit
    set_aside: dict[str, int]  # held rows not counted at the end, per group: they name another edited subject


class BaselineBlock(TypedDict):
    """summary.json `baseline`: the file compared with, its warnings, and the cases one side lacks."""

    path: str
    warnings: list[str]
    missing_in_run: list[str]
    missing_in_baseline: list[str]


class RunSummary(TypedDict, total=False):
    """summary.json, as `factedit report` reads it back (summary_record writes it)."""

    schema_version: int
    run_id: str
    model: dict[str, Any]
    device: str | None
    dtype: str | None
    cases: int
    ran: int
    skipped: int
    errors: int
    failed_metrics: int
    wall_seconds: float
    load_seconds: float  # the model's load in this process (none under xdist: the workers load it)
    conversion_seconds: float | None  # its first conversion to the safetensors cache (None: the cache served)
    memory_estimate: str | None  # the load's estimate of the memory a case needs, as the terminal shows it
    load_notes: list[str]  # the load's notes: where from, in how long, and any product library it chose
    base_pass_seconds: float  # a pass over every case's base rows before the first case, when one ran
    versions: dict[str, str | None]
    mode: str
    suites: list[SuiteRecord]
    sequence: ManyRecord
    batch: ManyRecord
    baseline: BaselineBlock


_READ_KEYS = ("schema_version", "case_id", "status", "metrics")  # what every reader of a record needs


def case_record_problem(data: Any) -> str | None:
    """Why a line read back from results.jsonl is no case record this version can read (None: it is one)."""
    found = shape_problem(data, CaseRecord, "record", required=_READ_KEYS)
    if found:
        return found
    if data["schema_version"] > RECORD_SCHEMA_VERSION:
        return (
            f"record.schema_version: {data['schema_version']} is from a newer pytest-factedit (this one reads up "
            f"to {RECORD_SCHEMA_VERSION}: upgrade it to read this file)"
        )
    return None


def summary_misfit(data: Any) -> Misfit | None:
    """Where a summary.json read back does not fit RunSummary (None: it does); values are not echoed."""
    return misfit(data, RunSummary, "", required=("schema_version",), values=False)


def record_evidence(record: CaseRecord) -> CaseEvidence:
    """What the metric table measures, rebuilt from a record (its answers, the edited fact, its timings)."""
    return CaseEvidence(
        tuple(ProbedAnswer.from_record(a) for a in record["answers"]),
        tuple(record.get("old", ())),
        tuple(record.get("new", ())),
        record.get("timings", {}),
    )


def _answer_entry(answer: ProbedAnswer, evidence: CaseEvidence) -> AnswerRecord:
    entry: AnswerRecord = {
        "group": answer.group,
        "prompt": answer.prompt,
        "expected": list(answer.expected),
        "base": answer.base,
        "edited": answer.edited,
    }
    if answer.group in FACT_GROUPS:
        entry.update(
            {
                "base_says": evidence.says(answer.base),
                "base_correct": evidence.says(answer.base) == "new",
                "informative": evidence.base_said_old(answer),
            }
        )
        if answer.edited is not None:
            entry.update(
                {
                    "edited_says": evidence.says(answer.edited),
                    "edited_correct": evidence.says(answer.edited) == "new",
                    "edited_mentions_new": matches(answer.edited, evidence.new),
                    "edited_mentions_old": matches(answer.edited, evidence.old),
                }
            )
    else:
        entry["base_correct"] = evidence.right(answer, answer.base)
        if answer.edited is not None:
            entry["edited_correct"] = evidence.right(answer, answer.edited)
        if answer.group == "neighbours":
            entry["shares_old"] = answer.shares_old
        if answer.unchanged:
            entry["unchanged"] = True
    if answer.logprobs:
        entry["logprobs"] = dict(answer.logprobs)
    return entry


def metric_entry(value: MetricValue, threshold: float | None) -> MetricRecord:
    """A measured metric as a record holds it, judged against its threshold (None: recorded only)."""
    entry: MetricRecord = {
        "value": value.value,
        "threshold": threshold,
        "passed": judge(value.name, value.value, threshold, value.samples, value.reason).passed,
        "direction": METRIC_BY_NAME[value.name].direction,
        "protocol": value.protocol,
        "samples": value.samples,
    }
    if value.hits is not None:
        entry["hits"] = value.hits
    if value.reason:
        entry["reason"] = value.reason
    return entry


def _metric_entries(outcome: CaseOutcome) -> dict[str, MetricRecord]:
    return {name: metric_entry(value, outcome.thresholds.get(name)) for name, value in outcome.metrics.items()}


def case_record(outcome: CaseOutcome, case_file: str, run: RunInfo) -> CaseRecord:
    """The JSON record of one case; `run` holds run_id, model, device, dtype and versions."""
    targets = outcome.targets
    evidence = outcome.evidence()
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
        "answers": [_answer_entry(a, evidence) for a in outcome.answers],
        "old": list(outcome.case.old),
        "new": list(outcome.case.new),
        "chat": outcome.case.chat,
        "system": outcome.case.system,
        "timings": {k: round(v, 6) for k, v in outcome.timings.items()},
        "base_restored": outcome.base_restored,
        "seed": outcome.settings.seed,
        "versions": run["versions"],
        "machine": run.get("machine", {}),
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
        "machine": run.get("machine", {}),
    }


def outcome_record(outcome: CaseOutcome, case_file: str, run: RunInfo) -> CaseRecord:
    """A case record, or an error record when the outcome is an error."""
    if outcome.status == "error":
        return error_record(outcome.case.id, case_file, outcome.reason, run)
    return case_record(outcome, case_file, run)


def many_case_records(
    result: ManyOutcome, case_files: Mapping[str, str], run: RunInfo, many_key: str
) -> list[CaseRecord]:
    """The record of every case of a sequential or batch run (`case_files` by case id), each with its
    position in the run, how much of its edit was left once every edit was in place, and its prompts'
    answers then."""
    records = []
    for position, outcome in enumerate(result.outcomes):
        record = outcome_record(outcome, case_files[outcome.case.id], run)
        place: ManyPosition = {"position": position, "retained_at_end": result.retained_by_case.get(outcome.case.id)}
        if outcome.case.id in result.answers_at_end:
            place["answers_at_end"] = result.answers_at_end[outcome.case.id]
        # many_key is `sequence` or `batch`, both ManyPosition keys of CaseRecord; mypy wants a literal key
        record[many_key] = place  # type: ignore[literal-required]
        records.append(record)
    return records


def with_base_reloaded(record: CaseRecord, note: str) -> CaseRecord:
    """`record` of a case after which the base weights differed (so the base was reloaded), the note
    added to its reason (in place; returned)."""
    record["base_restored"] = False
    record["reason"] = f"{record['reason']}; {note}" if record.get("reason") else note
    return record


def with_metric_baselines(record: CaseRecord, comparisons: Mapping[str, Any]) -> CaseRecord:
    """`record` with each named metric's comparison against the baseline (in place; returned)."""
    for name, comparison in comparisons.items():
        record["metrics"][name]["baseline"] = comparison
    return record


def error_in_place_of(record: CaseRecord, message: str, run: RunInfo) -> CaseRecord:
    """The error record that replaces `record` when a step after its run failed; it keeps the base check."""
    failed = error_record(record["case_id"], record["case_file"], message, run)
    if "base_restored" in record:
        failed["base_restored"] = record["base_restored"]
    return failed


def run_facts(run: RunInfo, records: Sequence[CaseRecord]) -> RunInfo:
    """`run` with the model facts of the first record: under xdist only the workers loaded the model."""
    if not records:
        return run
    keys = ("model", "device", "dtype", "versions", "machine")
    # the keys are RunInfo's, read from a record that repeats them; mypy cannot type a dict built by key
    return {**run, **{k: records[0].get(k) for k in keys}}  # type: ignore[typeddict-item]


def many_record(result: ManyOutcome, mode: str, thresholds: Mapping[str, float]) -> ManyRecord:
    """The end-of-run block of a sequential or batch run, with the threshold each metric is gated at."""
    block: ManyRecord = {
        "mode": mode,
        "cases": len(result.outcomes),
        "seconds": round(result.seconds, 3),
        "base_restored": result.base_restored,
        "retained_by_case": result.retained_by_case,
        "metrics": {v.name: _many_metric(v, thresholds.get(v.name)) for v in result.metrics.values()},
    }
    if result.memory:
        block["memory"] = memory_per_edit(result.memory)
    if any(result.set_aside.values()):
        block["set_aside"] = result.set_aside
    if result.batch:
        block["adapter"] = result.batch  # batch mode: the one adapter and the cases it holds
    return block


def _many_metric(value: MetricValue, threshold: float | None) -> ManyMetricRecord:
    entry: ManyMetricRecord = {
        "value": value.value,
        "samples": value.samples,
        "protocol": value.protocol,
        "threshold": threshold,
    }
    if value.reason:
        entry["reason"] = value.reason
    return entry


def memory_per_edit(held: Mapping[str, int]) -> dict[str, int | float | None]:
    """The bytes the kept edits hold (edit/gate_memory.py: `edits`, `gains`, `tables`, `index`, `routers`),
    with their sum and the sum per edit (None with no kept edit: merged edits add no bytes beside the weights)."""
    total = sum(count for part, count in held.items() if part != "edits")
    per_edit = round(total / held["edits"], 1) if held["edits"] else None
    return {**held, "bytes": total, "bytes_per_edit": per_edit}


def pooled(folder: str, metric: str, records: Iterable[CaseRecord], threshold: float | None) -> SuiteRecord:
    """One metric pooled over the ran cases of a suite: hits over samples, with its Wilson 95% interval."""
    hits = samples = cases = 0
    for record in records:
        entry = record.get("metrics", {}).get(metric)
        if entry is not None and entry.get("hits") is not None and entry["samples"]:
            hits, samples, cases = hits + entry["hits"], samples + entry["samples"], cases + 1
    value = hits / samples if samples else None
    return {
        "folder": folder,
        "metric": metric,
        "cases": cases,
        "hits": hits,
        "samples": samples,
        "value": value,
        "interval": list(wilson_interval(hits, samples)) if samples else None,
        "threshold": threshold,
        "passed": judge(metric, value, threshold, samples).passed,
    }


def summary_record(
    records: Iterable[CaseRecord],
    run: RunInfo,
    wall_seconds: float,
    mode: str,
    many_key: str,
    many: ManyRecord | None,
    suites: Sequence[SuiteRecord] = (),
    baseline: BaselineBlock | None = None,
) -> dict[str, Any]:
    """summary.json: counts of the run's cases and failed metrics, where it ran, its seconds (and those of the
    model's load and conversion and of the base pass, where they ran here), the many-edit block, every
    suite's pooled rates with their intervals, and the baseline compared with."""
    records = list(records)
    statuses = [r["status"] for r in records]
    failed = sum(1 for r in records for v in r.get("metrics", {}).values() if v["passed"] is False)
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
        "suites": list(suites),
    }
    # in no case's record
    for key in ("load_seconds", "conversion_seconds", "memory_estimate", "load_notes", "base_pass_seconds"):
        if key in run:
            summary[key] = run[key]
    if many is not None:
        summary[many_key] = many
    if baseline is not None:
        summary["baseline"] = baseline
    return summary
