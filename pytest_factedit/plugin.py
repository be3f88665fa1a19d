"""pytest11 entry point: options, YAML collection, run state and the terminal summary (glue only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .cases import DEFAULTS_FILE, is_case_file
from .items import RECORD_PROPERTY, SESSION_KEY, CaseFile, MetricItem, sequence_items
from .models import DEFAULT_MODEL
from .session import FactEditSession, Options

CASE_FOLDER_NAME = "fact_cases"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("factedit", "pytest-factedit: fact edits as tests")
    group.addoption("--model", dest="factedit_model", default=DEFAULT_MODEL, metavar="NAME",
                    help=f"model to edit: {DEFAULT_MODEL} (embedded, default), phi3, a Hugging Face id, "
                         "a local folder or a .gguf file")
    group.addoption("--factedit-device", dest="factedit_device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="where to run: auto picks CUDA (bf16) when present, else CPU (fp32)")
    group.addoption("--factedit-method", dest="factedit_method", default=None, metavar="NAME",
                    help="editing method for every case (overrides method.name in YAML)")
    group.addoption("--factedit-localize", dest="factedit_localize", default=None,
                    choices=("trace", "attribution", "none", "random"),
                    help="where the edit goes: trace (causal tracing, default), attribution (gradient estimate "
                         "confirmed by real patches), none (every layer) or random (ablation); overrides "
                         "method.localize in YAML")
    group.addoption("--factedit-show-trace", dest="factedit_show_trace", action="store_true", default=False,
                    help="print each case's layer x position localization heatmap in the summary")
    group.addoption("--factedit-mode", dest="factedit_mode", default="isolated",
                    choices=("isolated", "sequential", "batch"),
                    help="isolated (default): every case edits the base model and is undone; sequential: the "
                         "cases are applied one after another to one model (each merged before the next), then "
                         "every earlier edit and every control is checked again; batch: one adapter is trained "
                         "on all cases at once, and every case and control is checked with it")
    group.addoption("--factedit-save-adapters", dest="factedit_save_adapters", default=None, metavar="DIR",
                    help="write each case's adapters (peft format) and a manifest to DIR/<case-id>/")
    group.addoption("--factedit-seed", dest="factedit_seed", default=None, type=int, metavar="N",
                    help="seed for every case (overrides method.seed; default 0)")
    group.addoption("--factedit-reports", dest="factedit_reports", default=None, metavar="DIR",
                    help="folder for run reports (default: <rootdir>/reports)")
    group.addoption("--factedit-run-id", dest="factedit_run_id", default=None, metavar="ID",
                    help="name of this run's report folder (default: timestamp + random suffix)")


def pytest_configure(config: pytest.Config) -> None:
    reports = config.getoption("factedit_reports")
    options = Options(model=config.getoption("factedit_model"), device=config.getoption("factedit_device"),
                      method=config.getoption("factedit_method"), seed=config.getoption("factedit_seed"),
                      localize=config.getoption("factedit_localize"),
                      show_trace=config.getoption("factedit_show_trace"),
                      mode=config.getoption("factedit_mode"),
                      save_adapters=Path(config.getoption("factedit_save_adapters"))
                      if config.getoption("factedit_save_adapters") else None,
                      reports_dir=Path(reports) if reports else config.rootpath / "reports",
                      run_id=config.getoption("factedit_run_id"))
    state = FactEditSession(options, is_worker=hasattr(config, "workerinput"))
    config.stash[SESSION_KEY] = state
    config.pluginmanager.register(SessionHooks(state), "factedit-session")


def _is_case_location(file_path: Path, config: pytest.Config) -> bool:
    if any(Path(arg.split("::")[0]).resolve() == file_path.resolve() for arg in config.args):
        return True
    for folder in file_path.resolve().parents:
        if folder.name == CASE_FOLDER_NAME or (folder / DEFAULTS_FILE).is_file():
            return True
        if folder == config.rootpath:
            break
    return False


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> CaseFile | None:
    if is_case_file(file_path) and _is_case_location(file_path, parent.config):
        return CaseFile.from_parent(parent, path=file_path)
    return None


class SessionHooks:
    """Hooks that need the run state; registered per session so the state lives in one object."""

    def __init__(self, state: FactEditSession) -> None:
        self.state = state

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and report.nodeid and is_case_file(Path(report.nodeid.split("::")[0])):
            self.state.case_errors.add(report.nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        if session.testsfailed and session.testsfailed == len(self.state.case_errors):
            # Only fact case files failed to collect: they stay reported, and every other case runs.
            session.config.option.continue_on_collection_errors = True
        wanted = any(isinstance(i, MetricItem) for i in session.items)
        if wanted and not session.config.option.collectonly and not self.state.is_worker:
            from .models import ModelLoadError

            try:
                self.state.load_model()
            except ModelLoadError as exc:
                pytest.exit(f"pytest-factedit: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        mode = self.state.options.mode
        if mode != "isolated":
            if hasattr(config, "workerinput") or getattr(config.option, "numprocesses", None):
                raise pytest.UsageError(f"--factedit-mode {mode} edits one model with every case: run it without "
                                        "pytest-xdist (-n 0)")
            items.extend(sequence_items(session, items))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == RECORD_PROPERTY:
                self.state.collect_record(value)

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if self.state.writer is None or not self.state.writer.records:
            return
        from .report import summary_table

        color = config.get_terminal_writer().hasmarkup
        terminalreporter.write_sep("=", "pytest-factedit", bold=True)
        terminalreporter.write(summary_table(self.state.writer.records, color, terminalreporter._tw.fullwidth))
        if self.state.options.show_trace:
            from .heatmap import render_heatmap

            for record in self.state.writer.records:
                if record.get("localization"):
                    terminalreporter.write(render_heatmap(record["localization"], record["case_id"], color,
                                                          terminalreporter._tw.fullwidth))
        if self.state.many is not None:
            seq = self.state.many
            terminalreporter.write_line(
                f"{self.state.report_key} of {seq['cases']} edits: " + ", ".join(
                    f"{name} {m['value']:.3f} (>= {m['threshold']:g}, {m['samples']} samples)"
                    if m["value"] is not None else f"{name} n/a" for name, m in seq["metrics"].items())
                + f"; base restored: {seq['base_restored']}")
        terminalreporter.write_line(f"results: {self.state.writer.run_dir / 'results.jsonl'}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.state.finish()
