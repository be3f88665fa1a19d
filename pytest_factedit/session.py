"""Run state of one pytest session (or one `factedit edit`): the model holder, each case's record, the writer."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .cases.ids import inside
from .errors import RestoreError, explained
from .metrics.spec import thresholds_with
from .report.baseline import Baseline, suite_row, suite_rows, summary_problems, write_baseline
from .report.files import RESULTS_FILE, RunWriter, new_run_id, write_outputs
from .report.manifest import write_manifest
from .report.records import (
    CaseRecord,
    ManyRecord,
    RunInfo,
    SuiteRecord,
    error_record,
    many_case_records,
    many_record,
    outcome_record,
    run_facts,
    summary_record,
    with_base_reloaded,
)
from .report.saved_sequence import write_many_manifest
from .report.tables import RunView
from .run.model_holder import ModelHolder
from .run.options import Options

if TYPE_CHECKING:
    from .model.load import LoadedModel
    from .run.planned import PlannedCase, Suite


class FactEditSession:
    """Runs each case once on the held model, keeps its record, and (with a writer) writes the reports."""

    def __init__(self, options: Options, writer: RunWriter | None) -> None:
        self.options = options
        self.run_id = options.run_id or new_run_id()
        self.started = time.perf_counter()
        self.writer = writer
        # --factedit-baseline, read at start-up: a bad file, or one without a weights hash, stops the run here
        self.baseline = (
            Baseline.read(options.baseline, options.baseline_any_model, dict(options.tolerances), options.alpha)
            if options.baseline
            else None
        )
        self.held = ModelHolder(options, self.baseline.check_weights if self.baseline else lambda _: None)
        self._records: dict[tuple[str, str], CaseRecord] = {}
        self.case_errors: set[str] = set()
        self.case_ids: dict[str, Path] = {}  # every collected case id, and the file that holds it
        self.many_cases: list[tuple[str, PlannedCase]] = []  # sequential/batch mode: the collected cases, in order
        self.many: ManyRecord | None = None  # sequential/batch mode: the check with every edit in place
        self.suites: list[Suite] = []  # the folders whose cases are pooled (set after collection)
        self.cases: dict[tuple[str, str], PlannedCase] = {}  # (case file, id) -> case, for the suite items
        self.planned_suite_items: list[tuple[Suite, str]] = []  # xdist controller: suite items it will report
        self.extra_problems: list[str] = []  # what the summary must say beyond the writer's problems
        self.outputs: list[str] = []  # files written at the end besides the reports (baseline, HTML)
        self._probed_together = False  # isolated mode: every case's base rows decoded in one pass yet

    @classmethod
    def writing_reports(cls, options: Options) -> FactEditSession:
        """A session that writes reports/<run-id>/ (the pytest controller, not an xdist worker)."""
        run_id = options.run_id or new_run_id()
        return cls(dataclasses.replace(options, run_id=run_id), RunWriter(options.reports_dir, run_id))

    @property
    def run_info(self) -> RunInfo:
        """What every record repeats: the run id, and the held model's facts (its name alone until it loads)."""
        # facts holds RunInfo's model keys (run/ sits below report/, so model_holder.py types it as a dict)
        return {"run_id": self.run_id, **self.held.facts}  # type: ignore[typeddict-item]

    def load_model(self) -> LoadedModel:
        """Load the model (once); raises ModelLoadError with what was tried and the fix."""
        return self.held.load()

    def compared(self, record: CaseRecord) -> CaseRecord:
        """The record compared with --factedit-baseline, when one is given (a failed comparison: its error)."""
        return self.baseline.compared(record, self.run_info) if self.baseline is not None else record

    def has_record(self, case_file: str, case_id: str) -> bool:
        return (case_file, case_id) in self._records or self.options.mode != "isolated"

    def record(self, case_file: str, planned: PlannedCase) -> CaseRecord:
        """Run the case once (later calls reuse it) and return its JSON record; errors become records."""
        key = (case_file, planned.case.id)
        if self.options.mode != "isolated":
            self.run_many()
        if key not in self._records:
            changed = False
            try:
                record = self._run_isolated(case_file, planned)
            except Exception as exc:  # one broken case must not stop the others
                record = error_record(planned.case.id, case_file, explained(exc), self.run_info)
                changed = isinstance(exc, RestoreError)
            note = self.held.restore_base(changed)  # the whole model checked: no case runs on what one left
            self._records[key] = self.compared(with_base_reloaded(record, note) if note else record)
        return self._records[key]

    def _run_isolated(self, case_file: str, planned: PlannedCase) -> CaseRecord:
        from .run.case import run_case

        lm = self.load_model()
        assert self.held.cache is not None
        if not self._probed_together:
            self._probed_together = True
            self._probe_together(lm)
        case = planned.case
        save_dir = inside(self.options.save_adapters, case.id) if self.options.save_adapters else None
        outcome = run_case(lm, case, planned.settings, self.held.cache, save_dir)
        record = outcome_record(outcome, case_file, self.run_info)
        if save_dir is not None and outcome.status == "ran":
            write_manifest(save_dir, record)
        return record

    def _probe_together(self, lm: LoadedModel) -> None:
        """Before the first isolated case, every collected case's base rows in one pass (run/base_pass.py),
        into the cache each case's probe reads; not under xdist, where a worker runs only some cases. A pass
        that fails leaves each case to probe alone (and report its own error)."""
        from .run.base_pass import probed_before_any_edit

        planned = list(self.cases.values())
        if self.held.worker is not None or len(planned) < 2 or self.held.cache is None:
            return
        settings = {id(p.case): p.settings for p in planned}
        try:
            seconds = probed_before_any_edit(lm, [p.case for p in planned], lambda c: settings[id(c)], self.held.cache)
        except Exception:  # each case probes again and reports what failed
            return
        self.held.facts["base_pass_seconds"] = round(seconds, 3)

    def run_many(self) -> ManyRecord:
        """Sequential or batch mode: edit every collected case on one model (once), then check them all."""
        if self.many is not None:
            return self.many
        from .run.many import run_planned

        folder = "batch" if self.options.mode == "batch" else "sequence"
        save_dir = inside(self.options.save_adapters, folder) if self.options.save_adapters else None
        cases = [planned for _, planned in self.many_cases]
        result = run_planned(self.load_model(), cases, self.options.mode, save_dir, self.held.cache)
        if result.base_pass_seconds is not None:
            self.held.facts["base_pass_seconds"] = round(result.base_pass_seconds, 3)
        files = {planned.case.id: case_file for case_file, planned in self.many_cases}
        for record in many_case_records(result, files, self.run_info, self.options.many_key):
            self._records[(record["case_file"], record["case_id"])] = self.compared(record)
        thresholds = thresholds_with(cases[0].case.thresholds) if cases else {}
        self.many = many_record(result, self.options.mode, thresholds)
        if save_dir is not None:
            write_many_manifest(save_dir, self.options.mode, self.many, list(self._records.values()))
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
            tuple(suite_rows(self.suites, self.records(), self.baseline)),
            tuple(self.outputs),
        )

    def suite(self, suite: Suite, metric: str) -> SuiteRecord:
        """One metric pooled over a suite's cases (each run now if it has not run yet)."""
        records = [self.record(case_file, self.cases[(case_file, case_id)]) for case_file, case_id in suite.members]
        return suite_row(suite, metric, records, self.baseline)

    def records(self) -> list[CaseRecord]:
        """The records this process holds: the writer's (the controller, all workers') or its own."""
        return list(self.writer.records) if self.writer is not None else list(self._records.values())

    def collect_record(self, record: CaseRecord) -> None:
        """Controller side: keep a record that arrived with a test report (own process or xdist worker)."""
        if self.writer is not None:
            self.writer.add(record)

    def finish(self) -> None:
        """Write summary.json, and the baseline and HTML page when asked (with a writer, when a case ran)."""
        if self.writer is None or not self.writer.records:
            return
        from .report.html import write_html

        records, run = self.writer.records, run_facts(self.run_info, self.writer.records)
        block = self.baseline.block(run, records) if self.baseline is not None else None
        suites = suite_rows(self.suites, records, self.baseline)
        elapsed = time.perf_counter() - self.started
        mode, many_key = self.options.mode, self.options.many_key
        summary = summary_record(records, run, elapsed, mode, many_key, self.many, suites, block)
        if block is not None:
            self.outputs.append(f"compared with the baseline {self.options.baseline}")
            self.extra_problems += summary_problems(block)
        self.writer.finish(summary)
        written, problems = write_outputs(
            [
                ("baseline saved", self.options.save_baseline, lambda path: write_baseline(path, records, run)),
                ("html", self.options.html, lambda path: write_html(path, records, summary)),
            ]
        )
        self.outputs += written
        self.extra_problems += problems
