"""Run state of one pytest session (or one `factedit edit`): the loaded model, each case's record, the writer."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cases.ids import inside
from .edit import resolve_settings
from .errors import FactEditError, RestoreError
from .metrics.spec import METRICS, thresholds_with
from .model.weights import weights_checksum
from .report.files import RESULTS_FILE, RunWriter, new_run_id
from .report.manifest import write_batch_manifest, write_manifest
from .report.records import (
    CaseRecord,
    ManyRecord,
    RunInfo,
    SuiteRecord,
    error_record,
    library_versions,
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
    """A folder holding a `_defaults.yaml`: the collected cases below it and its `suite_thresholds`."""

    folder: str
    members: tuple[tuple[str, FactCase], ...]
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
        self._base_checksum: tuple[tuple[object, ...], ...] = ()
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

    @classmethod
    def writing_reports(cls, options: Options) -> FactEditSession:
        """A session that writes reports/<run-id>/ (the pytest controller, not an xdist worker)."""
        options = dataclasses.replace(options, run_id=options.run_id or new_run_id())
        return cls(options, RunWriter(options.reports_dir, options.run_id))

    def load_model(self) -> LoadedModel:
        """Load the model (once); raises ModelLoadError with what was tried and the fix."""
        if self.lm is None:
            from .model.load import load
            from .model.probe_cache import probe_folder
            from .run.probing import BaseAnswerCache

            self.lm = load(self.options.model, self.options.device, self.options.trust_remote_code)
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
                    "load_seconds": round(lm.load_seconds, 3),
                    "conversion_seconds": lm.conversion_seconds,
                }
            )
        return self.lm

    def settings_for(self, case: FactCase) -> EditSettings:
        return resolve_settings(case.method, self.options.overrides())

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
                record = error_record(case.id, case_file, f"{type(exc).__name__}: {exc}", self.run_info)
                changed = isinstance(exc, RestoreError)
            self._records[key] = self._base_checked(record, changed)
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
            self._records[(record["case_file"], outcome.case.id)] = record
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
            tuple(writer.problems.values()) if writer else (),
            tuple(self.suite_rows()),
        )

    def suite(self, suite: Suite, metric: str) -> SuiteRecord:
        """One metric pooled over a suite's cases (each run now if it has not run yet)."""
        records = [self.record(case_file, case) for case_file, case in suite.members]
        return pooled(suite.folder, metric, records, suite.thresholds.get(metric))

    def suite_rows(self) -> list[SuiteRecord]:
        """Every suite's pooled share metrics over the records this run has, for the summary."""
        have = self.writer.records if self.writer is not None else list(self._records.values())
        by_case = {(r["case_file"], r["case_id"]): r for r in have}
        rows = []
        for suite in self.suites:
            records = [by_case[(f, case.id)] for f, case in suite.members if (f, case.id) in by_case]
            rows += [
                pooled(suite.folder, spec.name, records, suite.thresholds.get(spec.name))
                for spec in METRICS
                if spec.samples is not None
            ]
        return rows

    def collect_record(self, record: CaseRecord) -> None:
        """Controller side: keep a record that arrived with a test report (own process or xdist worker)."""
        if self.writer is not None:
            self.writer.add(record)

    def finish(self) -> None:
        """Write summary.json (with a writer, and only when a case ran)."""
        if self.writer is None or not self.writer.records:
            return
        first = self.writer.records[0]  # records from xdist workers carry the model facts this process lacks
        run: RunInfo = {
            **self.run_info,
            "model": first["model"],
            "device": first["device"],
            "dtype": first["dtype"],
            "versions": first["versions"],
        }
        self.writer.finish(
            summary_record(
                self.writer.records,
                run,
                time.perf_counter() - self.started,
                self.options.mode,
                self.options.many_key,
                self.many,
                self.suite_rows(),
            )
        )
