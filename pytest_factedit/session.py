"""Run state of one pytest session (or one `factedit edit`): the loaded model, each case's record, the writer."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cases.ids import inside
from .edit import resolve_settings
from .errors import BaselineError, FactEditError, RestoreError, explained
from .metrics.spec import METRIC_BY_NAME, METRICS, thresholds_with
from .model.weights import weights_checksum
from .report.baseline import (
    ANY_MODEL,
    WEIGHTS_FIX,
    compare_case,
    compare_suite,
    environment_warnings,
    missing_cases,
    read_baseline,
    tolerance_for,
    weights_problem,
    write_baseline,
)
from .report.files import RESULTS_FILE, RunWriter, new_run_id
from .report.manifest import write_batch_manifest, write_manifest
from .report.records import (
    CaseRecord,
    ManyRecord,
    RunInfo,
    SuiteRecord,
    error_record,
    library_versions,
    machine_info,
    many_record,
    outcome_record,
    pooled,
    summary_record,
)
from .report.tables import RunView
from .run.options import Options

if TYPE_CHECKING:
    from .cases.schema import FactCase
    from .edit.settings import EditSettings
    from .model.load import LoadedModel
    from .run.probing import BaseAnswerCache


@dataclass(frozen=True)
class Suite:
    """A folder holding a `_defaults.yaml`: the cases below it, (case file, case id), and its `suite_thresholds`
    (with --factedit-threshold on top)."""

    folder: str
    members: tuple[tuple[str, str], ...]
    thresholds: dict[str, float]


class FactEditSession:
    """Loads the model once, runs each case once, and (with a writer) writes the reports."""

    def __init__(self, options: Options, writer: RunWriter | None) -> None:
        self.options = options
        self.run_id = options.run_id or new_run_id()
        self.started = time.perf_counter()
        self.lm: LoadedModel | None = None
        self._records: dict[tuple[str, str], CaseRecord] = {}
        self._cache: BaseAnswerCache | None = None
        self._base_checksum = ""
        self.writer = writer
        self.case_errors: set[str] = set()
        self.case_ids: dict[str, Path] = {}  # every collected case id, and the file that holds it
        self.run_info: RunInfo = {
            "run_id": self.run_id,
            "model": {"name": options.model},
            "device": None,
            "dtype": None,
            "versions": {},
        }
        self.many_cases: list[tuple[str, FactCase]] = []  # sequential/batch mode: the collected cases, in order
        self.many: ManyRecord | None = None  # sequential/batch mode: the check with every edit in place
        self.suites: list[Suite] = []  # the folders whose cases are pooled (set after collection)
        self.cases: dict[tuple[str, str], FactCase] = {}  # (case file, id) -> case, for the suite items
        self.planned_suite_items: list[tuple[Suite, str]] = []  # xdist controller: suite items it will report
        self.worker: tuple[int, int] | None = None  # xdist worker: (its number, how many workers)
        # --factedit-baseline, read at start-up: a bad file stops the run before the model loads
        self.baseline: dict[str, Any] | None = read_baseline(options.baseline) if options.baseline else None
        self.check_baseline_weights(None)  # a baseline with no weights hash stops the run here
        self.extra_problems: list[str] = []  # what the summary must say beyond the writer's problems
        self.outputs: list[str] = []  # files written at the end besides the reports (baseline, HTML)

    @classmethod
    def writing_reports(cls, options: Options) -> FactEditSession:
        """A session that writes reports/<run-id>/ (the pytest controller, not an xdist worker)."""
        options = dataclasses.replace(options, run_id=options.run_id or new_run_id())
        return cls(options, RunWriter(options.reports_dir, options.run_id))

    def load_model(self) -> LoadedModel:
        """Load the model (once); raises ModelLoadError with what was tried and the fix."""
        if self.lm is None:
            from .model.load import load, share_machine
            from .model.probe_cache import probe_folder
            from .run.probing import BaseAnswerCache

            if self.worker is not None:
                self.run_info["worker"] = share_machine(*self.worker)
            lm = load(self.options.model, **self.options.load_settings())
            self.check_baseline_weights(lm.weights_hash)
            self.lm = lm
            self._base_checksum = weights_checksum(self.lm.model)
            # a reload gives the same weights: answers stand
            self._cache = self._cache or BaseAnswerCache(None if self.options.fresh_probes else probe_folder())
            lm = self.lm
            model = {
                "name": lm.spec.name,
                "kind": lm.spec.kind,
                "source": lm.spec.source,
                "weights_hash": lm.weights_hash,
                "class": type(lm.model).__name__,
            }
            self.run_info.update(
                {
                    "model": model,
                    "device": lm.device,
                    "dtype": lm.dtype,
                    "versions": library_versions(),
                    "machine": machine_info(),
                    "load_seconds": round(lm.load_seconds, 3),
                    "memory_estimate": lm.memory.line() if lm.memory else None,
                    "conversion_seconds": lm.conversion_seconds,
                }
            )
        return self.lm

    def check_baseline_weights(self, weights_hash: str | None) -> None:
        """Refuse a baseline of other weights, or of none recorded (None: before the model loads), unless
        --factedit-baseline-any-model says to compare anyway (the summary then warns: `baseline_block`)."""
        problem = weights_problem(self.baseline, weights_hash) if self.baseline is not None else ""
        if problem and not self.options.baseline_any_model:
            raise BaselineError(f"{problem}. {WEIGHTS_FIX}", path=self.options.baseline, key="model.weights_hash")

    def settings_for(self, case: FactCase) -> EditSettings:
        return resolve_settings(case.method, self.options.overrides())

    def for_this_run(self, case: FactCase) -> FactCase:
        """The case with --factedit-threshold over its YAML thresholds."""
        if not self.options.thresholds:
            return case
        return dataclasses.replace(case, thresholds={**case.thresholds, **dict(self.options.thresholds)})

    def suite_thresholds(self, thresholds: dict[str, float]) -> dict[str, float]:
        """A suite's `suite_thresholds` with --factedit-threshold on top."""
        return {**thresholds, **dict(self.options.thresholds)}

    def compared(self, record: CaseRecord) -> CaseRecord:
        """The record with each metric's comparison against --factedit-baseline (when one is given).

        A comparison that fails becomes the case's error: the case stays run once, and its record and the
        summary are still written.
        """
        if self.baseline is None:
            return record
        try:
            return compare_case(record, self.baseline, dict(self.options.tolerances))
        except Exception as exc:  # the baseline was checked at start-up: this is a bug, kept in the record
            message = f"comparing it with the baseline {self.options.baseline} failed: {explained(exc)}"
            failed = error_record(record["case_id"], record["case_file"], message, self.run_info)
            if "base_restored" in record:
                failed["base_restored"] = record["base_restored"]
            return failed

    def has_record(self, case_file: str, case: FactCase) -> bool:
        return (case_file, case.id) in self._records or self.options.mode != "isolated"

    def record(self, case_file: str, case: FactCase) -> CaseRecord:
        """Run the case once (later calls reuse it) and return its JSON record; errors become records."""
        key = (case_file, case.id)
        if self.options.mode != "isolated":
            self.run_many()
        if key not in self._records:
            changed = False
            try:
                record = self._run_isolated(case_file, case)
            except Exception as exc:  # one broken case must not stop the others
                record = error_record(case.id, case_file, explained(exc), self.run_info)
                changed = isinstance(exc, RestoreError)
            self._records[key] = self.compared(self._base_checked(record, changed))
        return self._records[key]

    def _base_checked(self, record: CaseRecord, changed: bool) -> CaseRecord:
        """After every case, the whole model is checked against the base; a changed one is reloaded.

        So no later case is measured on weights an earlier one left behind, and the record says it.
        """
        if self.lm is None or (not changed and weights_checksum(self.lm.model) == self._base_checksum):
            return record
        note = "the base weights differed after this case, so the base model was reloaded for the next case"
        self.lm = None
        try:
            self.load_model()
        except FactEditError as exc:
            note += f" (the reload failed: {exc})"
        record["base_restored"] = False
        record["reason"] = f"{record['reason']}; {note}" if record.get("reason") else note
        return record

    def base_problem(self) -> str:
        """'' when the loaded model equals the base; else the base is reloaded and the message says so."""
        if self.lm is None or weights_checksum(self.lm.model) == self._base_checksum:
            return ""
        self.lm = None
        self.load_model()
        return "the model's weights differed from the base after this test, so the base model was reloaded"

    def _run_isolated(self, case_file: str, case: FactCase) -> CaseRecord:
        from .run.case import run_case

        lm = self.load_model()
        assert self._cache is not None
        save_dir = inside(self.options.save_adapters, case.id) if self.options.save_adapters else None
        outcome = run_case(lm, case, self.settings_for(case), self._cache, save_dir)
        record = outcome_record(outcome, case_file, self.run_info)
        if save_dir is not None and outcome.status == "ran":
            write_manifest(save_dir, record)
        return record

    def run_many(self) -> ManyRecord:
        """Sequential or batch mode: edit every collected case on one model (once), then check them all."""
        if self.many is not None:
            return self.many
        from .run.many import run_batch, run_sequence

        lm = self.load_model()
        files = {case.id: case_file for case_file, case in self.many_cases}
        cases = [case for _, case in self.many_cases]
        batch_dir = inside(self.options.save_adapters, "batch") if self.options.save_adapters else None
        if self.options.mode == "batch":
            result = run_batch(lm, cases, self.settings_for, batch_dir)
        else:
            result = run_sequence(lm, cases, self.settings_for)
        for position, outcome in enumerate(result.outcomes):
            record = outcome_record(outcome, files[outcome.case.id], self.run_info)
            record[self.options.many_key] = {
                "position": position,  # type: ignore[literal-required]
                "retained_at_end": result.retained_by_case.get(outcome.case.id),
            }
            self._records[(record["case_file"], outcome.case.id)] = self.compared(record)
        thresholds = thresholds_with(self.many_cases[0][1].thresholds) if self.many_cases else {}
        self.many = many_record(result, self.options.mode, thresholds)
        if batch_dir is not None and result.batch.get("adapters", {}).get("names"):
            write_batch_manifest(batch_dir, self.many, [r for r in self._records.values() if r["status"] == "ran"])
        if not result.base_restored:
            raise RestoreError(f"{self.options.mode} mode: the weights differ from the base after restoring them")
        return self.many

    def open_reports(self) -> None:
        """Create this run's report folder now (before the model loads); FactEditError says what to fix."""
        if self.writer is not None:
            self.writer.open()

    def summary_view(self) -> RunView:
        """What the terminal summary shows besides the records: where they went, problems, the many-edit block."""
        writer = self.writer
        written = writer is not None and "write" not in writer.problems
        return RunView(
            writer.run_dir / RESULTS_FILE if written and writer else None,
            self.options.show_trace,
            self.options.many_key,
            self.many,
            (tuple(writer.problems.values()) if writer else ()) + tuple(self.extra_problems),
            tuple(self.suite_rows()),
            tuple(self.outputs),
        )

    def suite(self, suite: Suite, metric: str) -> SuiteRecord:
        """One metric pooled over a suite's cases (each run now if it has not run yet)."""
        records = [self.record(case_file, self.cases[(case_file, case_id)]) for case_file, case_id in suite.members]
        return self.suite_row(suite, metric, records)

    def suite_row(self, suite: Suite, metric: str, records: list[CaseRecord]) -> SuiteRecord:
        """`metric` pooled over `records` of `suite`, with its paired comparison against the baseline."""
        row = pooled(suite.folder, metric, records, suite.thresholds.get(metric))
        if self.baseline is not None and METRIC_BY_NAME[metric].samples is not None:
            tolerance = tolerance_for(metric, dict(self.options.tolerances))
            row["baseline"] = compare_suite(row, records, self.baseline, tolerance, self.options.alpha)
        return row

    def records(self) -> list[CaseRecord]:
        """The records this process holds: the writer's (the controller, all workers') or its own."""
        return list(self.writer.records) if self.writer is not None else list(self._records.values())

    def suite_rows(self) -> list[SuiteRecord]:
        """Every suite's pooled share metrics over the records this run has, for the summary."""
        by_case = {(r["case_file"], r["case_id"]): r for r in self.records()}
        rows = []
        for suite in self.suites:
            records = [by_case[key] for key in suite.members if key in by_case]
            rows += [self.suite_row(suite, spec.name, records) for spec in METRICS if spec.samples is not None]
        return rows

    def collect_record(self, record: CaseRecord) -> None:
        """Controller side: keep a record that arrived with a test report (own process or xdist worker)."""
        if self.writer is not None:
            self.writer.add(record)

    def _run_facts(self) -> RunInfo:
        first = self.writer.records[0] if self.writer and self.writer.records else None
        if first is None:
            return self.run_info
        # records from xdist workers carry the model facts this process lacks
        keys = ("model", "device", "dtype", "versions", "machine")
        return {**self.run_info, **{k: first.get(k) for k in keys}}  # type: ignore[typeddict-item]

    def baseline_block(self, run: RunInfo) -> dict[str, Any] | None:
        """summary.json's `baseline`: the file, where this machine differs, and the cases one side lacks."""
        if self.baseline is None:
            return None
        in_run, in_baseline = missing_cases(self.baseline, self.records())
        return {
            "path": str(self.options.baseline),
            "warnings": self._weights_notes(run) + environment_warnings(self.baseline, dict(run)),
            "missing_in_run": in_run,
            "missing_in_baseline": in_baseline,
        }

    def _weights_notes(self, run: RunInfo) -> list[str]:
        """The summary's warning when the baseline was compared with other weights, or with none recorded
        (the run got here only with --factedit-baseline-any-model)."""
        assert self.baseline is not None
        problem = weights_problem(self.baseline, (run.get("model") or {}).get("weights_hash"))
        return [f"compared with it anyway ({ANY_MODEL}): {problem}"] if problem else []

    def finish(self) -> None:
        """Write summary.json, and the baseline and HTML page when asked (with a writer, when a case ran)."""
        if self.writer is None or not self.writer.records:
            return
        run = self._run_facts()
        summary = summary_record(
            self.writer.records,
            run,
            time.perf_counter() - self.started,
            self.options.mode,
            self.options.many_key,
            self.many,
            self.suite_rows(),
        )
        block = self.baseline_block(run)
        if block is not None:
            self.outputs.append(f"compared with the baseline {self.options.baseline}")
            summary["baseline"] = block
            self.extra_problems += [f"baseline: {w}" for w in block["warnings"]]
            self.extra_problems += [f"baseline: {kind}: {', '.join(ids)}" for kind, ids in missing_lines(block) if ids]
        self.writer.finish(summary)
        self._write_outputs(run, summary)

    def _write_outputs(self, run: RunInfo, summary: dict[str, Any]) -> None:
        """--factedit-save-baseline and --factedit-html; a failed write is said in the summary, never raised."""
        from .report.html import write_html

        assert self.writer is not None
        jobs = [("baseline saved", self.options.save_baseline, lambda p: write_baseline(p, self.writer.records, run))]
        jobs.append(("html", self.options.html, lambda p: write_html(p, self.writer.records, summary)))
        for name, path, write in jobs:
            if path is None:
                continue
            try:
                self.outputs.append(f"{name}: {write(path)}")
            except OSError as exc:
                self.extra_problems.append(f"could not write the {name} to {path}: {exc.strerror or exc}")
            except Exception as exc:  # a writer's bug: said, never a failed run when every test passed
                self.extra_problems.append(f"could not write the {name} to {path}: {explained(exc)}")


def missing_lines(block: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The baseline's missing cases as the summary names them."""
    return [
        ("cases in the baseline that this run did not run", block["missing_in_run"]),
        ("cases of this run that the baseline lacks (not compared)", block["missing_in_baseline"]),
    ]
