"""pytest11 entry point: options, YAML collection, run state and the terminal summary (glue only: hooks delegate)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .cases.loader import DEFAULTS_FILE, is_case_file
from .errors import FactEditError
from .items import (
    RECORD_PROPERTY,
    SESSION_KEY,
    CaseFile,
    MetricItem,
    cases_in_order,
    many_items,
    suite_items,
    suite_plan,
)
from .report.tables import summary_lines
from .run.options import EDIT_OPTIONS, MODEL_OPTIONS, OPTIONS, PLUGIN_PREFIX, RUN_OPTIONS, Options, add_options
from .session import FactEditSession

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

CASE_FOLDER_NAME = "fact_cases"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("factedit", "pytest-factedit: fact edits as tests")
    add_options(group.addoption, MODEL_OPTIONS + EDIT_OPTIONS + RUN_OPTIONS, PLUGIN_PREFIX)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    options = Options.from_values(
        lambda name: config.getoption(OPTIONS[name].dest(PLUGIN_PREFIX)), config.rootpath / "reports"
    )
    # xdist workers neither write reports nor print: the controller gathers their records
    state = FactEditSession(options, None) if _is_xdist_worker(config) else FactEditSession.writing_reports(options)
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
        if wanted and not session.config.option.collectonly and not _is_xdist_worker(session.config):
            try:  # what cannot work stops here, in one line, before any case runs
                self.state.open_reports()
                self.state.load_model()
            except FactEditError as exc:
                pytest.exit(f"pytest-factedit: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        mode = self.state.options.mode
        if mode != "isolated":
            if _is_xdist_worker(config) or getattr(config.option, "numprocesses", None):
                raise pytest.UsageError(
                    f"--factedit-mode {mode} edits one model with every case: run it without pytest-xdist (-n 0)"
                )
            self.state.many_cases = cases_in_order(items)
            if self.state.many_cases:
                items.extend(many_items(session, self.state.options.many_key))
        self.state.suites = suite_plan(session, items)
        items.extend(suite_items(session, self.state.suites, items))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == RECORD_PROPERTY:
                self.state.collect_record(value)

    def pytest_terminal_summary(self, terminalreporter: TerminalReporter, config: pytest.Config) -> None:
        writer = self.state.writer
        if writer is None or not writer.records:
            return
        terminalreporter.write_sep("=", "pytest-factedit", bold=True)
        markup, width = config.get_terminal_writer().hasmarkup, terminalreporter._tw.fullwidth
        for line in summary_lines(writer.records, markup, width, self.state.summary_view()):
            terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.state.finish()
