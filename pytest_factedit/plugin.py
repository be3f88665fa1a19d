"""pytest11 entry point: options, YAML collection, run state and the terminal summary (glue only: hooks delegate)."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import fixtures
from .cases.loader import DEFAULTS_FILE, is_case_file
from .edit import installed_editor_problems, register_hook_editors
from .errors import FactEditError
from .items import (
    RECORDS_ATTRIBUTE,
    RECORDS_KEY,
    SESSION_KEY,
    CaseFile,
    MetricItem,
    case_file_of,
    cases_in_order,
    many_items,
    suite_items,
    suite_plan,
)
from .report.tables import summary_lines
from .run.options import (
    EDIT_OPTIONS,
    GATE_OPTIONS,
    MODEL_OPTIONS,
    OPTIONS,
    PLUGIN_PREFIX,
    RUN_OPTIONS,
    Options,
    add_options,
)
from .session import FactEditSession
from .xdist import XdistHooks, controller_suite_reports, is_xdist_controller, is_xdist_worker, worker_of

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

    from .model.load import LoadedModel
    from .report.progress import BetweenPytestLines

CASE_FOLDER_NAME = "fact_cases"
CASE_SECONDS_KEY: pytest.StashKey[float] = pytest.StashKey()


class Hookspecs:
    """The hooks pytest-factedit calls: implement them in a `conftest.py` (at the rootdir) or a plugin."""

    @staticmethod
    @pytest.hookspec
    def pytest_factedit_editors(config: pytest.Config) -> list[type]:  # type: ignore[empty-body]  # a hookspec has no body
        """Return editor classes to register (the interface of `pytest_factedit.edit.Editor`; peft adapter
        methods can subclass `pytest_factedit.edit.PeftStagedEditor`); cases name them in `method.name`."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(Hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("factedit", "pytest-factedit: fact edits as tests")
    add_options(group.addoption, MODEL_OPTIONS + EDIT_OPTIONS + RUN_OPTIONS + GATE_OPTIONS, PLUGIN_PREFIX)


def pytest_configure(config: pytest.Config) -> None:
    options = Options.from_values(
        lambda name: config.getoption(OPTIONS[name].dest(PLUGIN_PREFIX)), config.rootpath / "reports"
    )
    try:  # xdist workers neither write reports nor print: the controller gathers their records
        _register_hook_editors(config)
        state = FactEditSession(options, None) if is_xdist_worker(config) else FactEditSession.writing_reports(options)
    except FactEditError as exc:  # a bad editor or an unreadable baseline stops the run before anything loads
        raise pytest.UsageError(f"pytest-factedit: {exc}") from exc
    for problem in [] if is_xdist_worker(config) else installed_editor_problems():  # said once, at start-up
        config.issue_config_time_warning(pytest.PytestConfigWarning(f"pytest-factedit: {problem}"), stacklevel=2)
    config.stash[SESSION_KEY] = state
    config.pluginmanager.register(SessionHooks(state, config), "factedit-session")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(state, config), "factedit-xdist")
    state.held.worker = worker_of(config)


def _register_hook_editors(config: pytest.Config) -> None:
    """Each plugin's `pytest_factedit_editors` is called on its own (in pluggy's order), so what one returns
    is checked, and an error names that plugin."""
    for impl in reversed(config.hook.pytest_factedit_editors.get_hookimpls()):
        if not (impl.hookwrapper or impl.wrapper):
            returned = impl.function(**({"config": config} if "config" in impl.argnames else {}))
            register_hook_editors(returned, impl.plugin_name)


def _case_folder(file_path: Path, config: pytest.Config) -> Path | None:
    """The case folder `file_path` lies in, as named (links not followed): the nearest `fact_cases` folder
    or folder with a `_defaults.yaml` up to the rootdir, else its own folder when the command line names
    it; None when it is no case. The file, or what a symlink leads to, must lie inside that folder."""
    for folder in file_path.parents:
        if folder.name == CASE_FOLDER_NAME or (folder / DEFAULTS_FILE).is_file():
            return folder
        if folder == config.rootpath:
            break
    if any(Path(arg.split("::")[0]).resolve() == file_path.resolve() for arg in config.args):
        return file_path.parent
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> CaseFile | None:
    folder = _case_folder(file_path, parent.config) if is_case_file(file_path) else None
    return CaseFile.from_parent(parent, path=file_path, folder=folder) if folder is not None else None


@pytest.fixture(scope="session")
def factedit_model(request: pytest.FixtureRequest) -> LoadedModel:
    """The run's model (pytest-factedit): `.model`, `.tokenizer`, `.spec`, `.device`, `.dtype`, `.weights_hash`;
    loaded once per process and shared with the YAML cases."""
    return fixtures.factedit_model(request)


@pytest.fixture
def fact_edit(request: pytest.FixtureRequest) -> Iterator[fixtures.FactEditor]:
    """Edit a fact as a YAML case would (pytest-factedit): `fact_edit(case).check()` runs localize, edit, probe
    and measure on a YAML path, a FactCase or a dict, and fails like the case's items;
    `with fact_edit.applied(case) as edited: edited.answer(prompt)` probes the edited model. The base weights
    are checked at teardown, even when the test failed."""
    yield from fixtures.fact_edit(request)


class SessionHooks:
    """Hooks that need the run state; registered per session so the state lives in one object."""

    def __init__(self, state: FactEditSession, config: pytest.Config) -> None:
        self.state = state
        self.config = config
        self.counted_suite_items = False

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        """A case runs (and shows its progress) before its first item starts, so the progress lines sit
        between pytest's lines; the items then judge the record it left. (Not tryfirst: inside pytest's
        own wrappers, so warnings are still caught for the item.)"""
        display = self._display()
        if isinstance(item, MetricItem) and display and not self.state.has_record(case_file_of(item), item.case.id):
            started = time.perf_counter()
            with display.showing(lambda progress: progress.case(item.case.id)):
                self.state.record(case_file_of(item), item.planned)
            item.stash[CASE_SECONDS_KEY] = time.perf_counter() - started  # counted in its call report
        return (yield)

    def _display(self) -> BetweenPytestLines | None:
        """Where progress goes: between pytest's terminal lines; nowhere with -q or on an xdist worker."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or self.config.get_verbosity() < 0 or is_xdist_worker(self.config):
            return None
        from .report.progress import BetweenPytestLines

        return BetweenPytestLines(reporter)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and report.nodeid and is_case_file(Path(report.nodeid.split("::")[0])):
            self.state.case_errors.add(report.nodeid)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Iterator[None]:
        if session.testsfailed and session.testsfailed == len(self.state.case_errors):
            # Only fact case files failed to collect: they stay reported, and every other case runs.
            session.config.option.continue_on_collection_errors = True
        self._start(session)
        result = yield
        if is_xdist_controller(session.config):  # the suites pool every worker's records, here
            controller_suite_reports(session, self.state)
        return result

    def _start(self, session: pytest.Session) -> None:
        """What cannot work stops here, in one line, before any case runs: the reports folder, the model."""
        config = session.config
        controller = is_xdist_controller(config)
        wanted = controller or any(isinstance(i, MetricItem) for i in session.items)
        if not wanted or config.option.collectonly or is_xdist_worker(config):
            return
        try:
            self.state.open_reports()
            if not controller:  # under xdist each worker loads its own model
                display = self._display()
                with display.showing(lambda p: p.loading(self.state.options.model)) if display else nullcontext():
                    self.state.load_model()
        except FactEditError as exc:
            pytest.exit(f"pytest-factedit: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        mode = self.state.options.mode
        if mode != "isolated":
            if is_xdist_worker(config) or getattr(config.option, "numprocesses", None):
                raise pytest.UsageError(
                    f"--factedit-mode {mode} edits one model with every case: run it without pytest-xdist (-n 0)"
                )
            self.state.many_cases = cases_in_order(items)
            if self.state.many_cases:
                items.extend(many_items(session, self.state.options.many_key))
        cases = cases_in_order(items)
        self.state.cases = {(case_file, planned.case.id): planned for case_file, planned in cases}
        self.state.suites = suite_plan(config.rootpath, list(self.state.cases), self.state)
        if not is_xdist_worker(config):  # under xdist the controller pools the suites (see xdist.py)
            items.extend(suite_items(session, self.state.suites, items))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "call":
            setattr(report, RECORDS_ATTRIBUTE, item.stash.get(RECORDS_KEY, []))
            # a case run before its first item (for the progress display) still counts in that item's time,
            # as --durations and junit show it
            report.duration += item.stash.get(CASE_SECONDS_KEY, 0.0)
        return report

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.state.planned_suite_items and not self.counted_suite_items:
            self.counted_suite_items = True  # xdist: the suite items the controller adds count in the progress
            self.session.testscollected += len(self.state.planned_suite_items)
        for record in getattr(report, RECORDS_ATTRIBUTE, None) or ():
            self.state.collect_record(record)

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
