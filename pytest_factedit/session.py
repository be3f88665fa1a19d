"""Run state of one pytest session: the loaded model, per-case outcomes and the report writer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cases import FactCase
from .report import RunWriter, new_run_id, summarize


@dataclass(frozen=True)
class Options:
    """The --model / --factedit-* options, as given."""

    model: str
    device: str
    method: str | None
    seed: int | None
    reports_dir: Path
    run_id: str | None
    localize: str | None = None
    show_trace: bool = False
    save_adapters: Path | None = None
    mode: str = "isolated"


class FactEditSession:
    """Loads the model once, runs each case once, and (on the controller) writes the reports."""

    def __init__(self, options: Options, is_worker: bool) -> None:
        self.options = options
        self.is_worker = is_worker
        self.run_id = options.run_id or new_run_id()
        self.started = time.perf_counter()
        self.lm: Any = None
        self._outcomes: dict[tuple[str, str], Any] = {}
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._cache: Any = None
        self.writer = None if is_worker else RunWriter(options.reports_dir, self.run_id)
        self.case_errors: set[str] = set()
        self.run_info: dict[str, Any] = {"run_id": self.run_id, "model": {"name": options.model},
                                         "device": None, "dtype": None, "versions": {}}
        self.many_cases: list[tuple[str, FactCase]] = []  # sequential/batch mode: the collected cases, in order
        self.many: dict[str, Any] | None = None  # sequential/batch mode: the check with every edit in place

    def load_model(self) -> None:
        """Load the model (once); raises models.ModelLoadError with what was tried and the fix."""
        if self.lm is not None:
            return
        from . import models
        from .records import library_versions
        from .runner import BaseAnswerCache

        self.lm = models.load(self.options.model, self.options.device)
        self._cache = BaseAnswerCache()
        self.run_info.update(
            model={"name": self.lm.spec.name, "kind": self.lm.spec.kind, "source": self.lm.spec.source,
                   "weights_hash": self.lm.weights_hash, "class": type(self.lm.model).__name__},
            device=self.lm.device, dtype=self.lm.dtype, versions=library_versions(),
            load_seconds=round(self.lm.load_seconds, 3), conversion_seconds=self.lm.conversion_seconds)

    def settings_for(self, case: FactCase) -> Any:
        from .edit import resolve_settings

        return resolve_settings(case.method, {"name": self.options.method, "seed": self.options.seed,
                                              "localize": self.options.localize})

    def record(self, case_file: str, case: FactCase) -> dict[str, Any]:
        """Run the case once (later calls reuse it) and return its JSON record; errors become records."""
        key = (case_file, case.id)
        if self.options.mode != "isolated":
            self.run_many()
        if key not in self._records:
            from .records import case_record, error_record
            from .runner import run_case

            try:
                self.load_model()
                save_dir = self.options.save_adapters / case.id if self.options.save_adapters else None
                outcome = run_case(self.lm, case, self.settings_for(case), self._cache, save_dir)
                self._records[key] = case_record(outcome, case_file, self.run_info)
                if save_dir is not None and outcome.status == "ran":
                    from .export import write_manifest

                    write_manifest(save_dir, self._records[key])
            except Exception as exc:  # one broken case must not stop the others
                self._records[key] = error_record(case.id, case_file, f"{type(exc).__name__}: {exc}",
                                                  self.run_info)
        return self._records[key]

    @property
    def report_key(self) -> str:
        """Where records and the summary keep the sequential/batch block: `sequence` or `batch`."""
        return "sequence" if self.options.mode == "sequential" else self.options.mode

    def run_many(self) -> dict[str, Any]:
        """Sequential or batch mode: edit every collected case on one model (once), then check them all."""
        if self.many is not None:
            return self.many
        from .many import run_batch, run_sequence
        from .records import case_record, error_record
        from .runner import thresholds_for

        self.load_model()
        files = {case.id: case_file for case_file, case in self.many_cases}
        cases = [case for _, case in self.many_cases]
        if self.options.mode == "batch":
            result = run_batch(self.lm, cases, self.settings_for,
                               self.options.save_adapters / "batch" if self.options.save_adapters else None)
        else:
            result = run_sequence(self.lm, cases, self.settings_for)
        for position, outcome in enumerate(result.outcomes):
            case_file = files[outcome.case.id]
            record = case_record(outcome, case_file, self.run_info) if outcome.status != "error" else \
                error_record(outcome.case.id, case_file, outcome.reason, self.run_info)
            record[self.report_key] = {"position": position,
                                       "retained_at_end": result.retained_by_case.get(outcome.case.id)}
            self._records[(case_file, outcome.case.id)] = record
        thresholds = thresholds_for(self.many_cases[0][1]) if self.many_cases else {}
        self.many = {
            "mode": self.options.mode, "cases": len(result.outcomes), "seconds": round(result.seconds, 3),
            "base_restored": result.base_restored, "retained_by_case": result.retained_by_case,
            "metrics": {v.name: {"value": v.value, "samples": v.samples, "protocol": v.protocol,
                                 "threshold": thresholds.get(v.name)}
                        for v in (result.edits_retained, result.controls_retained)}}
        if result.batch:
            self.many["adapter"] = result.batch  # batch mode: the one adapter and the cases it holds
            if self.options.save_adapters and result.batch.get("adapters", {}).get("names"):
                from .export import write_batch_manifest

                write_batch_manifest(self.options.save_adapters / "batch", self.many,
                                     [r for r in self._records.values() if r.get("status") == "ran"])
        if not result.base_restored:
            raise RuntimeError(f"{self.options.mode} mode: the weights differ from the base after restoring them")
        return self.many

    def collect_record(self, record: dict[str, Any]) -> None:
        """Controller side: keep a record that arrived with a test report (own process or xdist worker)."""
        if self.writer is not None:
            self.writer.add(record)

    def finish(self) -> None:
        """Write summary.json (controller only, and only when a case ran)."""
        if self.writer is None or not self.writer.records:
            return
        first = self.writer.records[0]  # records from xdist workers carry the model facts this process lacks
        run = {**self.run_info, "model": first["model"], "device": first["device"], "dtype": first["dtype"],
               "versions": first["versions"]}
        summary = summarize(self.writer.records, run, time.perf_counter() - self.started)
        summary["mode"] = self.options.mode
        if self.many is not None:
            summary[self.report_key] = self.many
        self.writer.finish(summary)
