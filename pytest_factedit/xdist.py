"""pytest-xdist: who is a worker, which GPU a worker takes, and the suite items the controller reports.

Workers run the case items and send each case record with its call report. A suite pools cases that ran
on different workers, so its items are judged on the controller once every worker is done: they are
reported through pytest's own report hooks, so the terminal, `--junitxml` and the exit status count
them like any item.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from .cases.loader import is_case_file
from .items import junit_properties, suite_failure, suite_metrics, suite_plan, suite_skip_reason
from .metrics.spec import METRIC_BY_ITEM, METRIC_BY_NAME
from .report.baseline import suite_row

if TYPE_CHECKING:
    from .report.records import SuiteRecord
    from .run.planned import Suite
    from .session import FactEditSession


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_xdist_controller(config: pytest.Config) -> bool:
    """This process hands items to xdist workers (`-n N` with N > 0)."""
    return not is_xdist_worker(config) and config.pluginmanager.getplugin("dsession") is not None


def worker_index(config: pytest.Config) -> int | None:
    """The number of this xdist worker (gw3 -> 3), or None outside a worker."""
    if not is_xdist_worker(config):
        return None
    # xdist sets `workerinput` on a worker's config; pytest.Config does not declare it
    worker_id = str(config.workerinput.get("workerid", "gw0"))  # type: ignore[attr-defined]
    digits = worker_id.lstrip("gw")
    return int(digits) if digits.isdigit() else 0


def _report(session: pytest.Session, suite: Suite, metric: str, row: SuiteRecord) -> None:
    """Report one suite item (setup, call, teardown) as if it had run in this process."""
    spec = METRIC_BY_NAME[metric]
    nodeid = f"{suite.folder}::suite::{spec.item}"
    location = (suite.folder, None, f"{suite.folder}::suite::{metric}")
    failure = suite_failure(row)
    longrepr: str | tuple[str, int, str] | None = failure
    outcome: Literal["passed", "failed", "skipped"] = "failed" if failure else "passed"
    if failure is None and row["value"] is None:
        outcome = "skipped"
        longrepr = (suite.folder, 0, f"Skipped: {suite_skip_reason(row)}")
    hook = session.config.hook
    hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
    for when in ("setup", "call", "teardown"):
        report = pytest.TestReport(
            nodeid,
            location,
            {},
            outcome if when == "call" else "passed",
            longrepr if when == "call" else None,
            when,
            user_properties=junit_properties(metric, row) if when != "setup" else [],  # junit reads teardown's
        )
        hook.pytest_runtest_logreport(report=report)
    hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)


def plan_suites(root: Path, ids: Sequence[str], state: FactEditSession) -> None:
    """The suites and suite items a serial run would have collected, from the node ids the workers collected
    (into `state.suites` and `state.planned_suite_items`)."""
    keys: dict[tuple[str, str], None] = {}
    selected = set()
    for nodeid in ids:
        parts = nodeid.split("::")
        if len(parts) == 3 and parts[2] in METRIC_BY_ITEM and is_case_file(Path(parts[0])):
            keys[(parts[0], parts[1])] = None
            selected.add(METRIC_BY_ITEM[parts[2]].name)
    state.suites = suite_plan(root, list(keys), state)
    compared = state.baseline is not None
    state.planned_suite_items = [(s, m) for s in state.suites for m in suite_metrics(s, selected, compared)]


def controller_suite_reports(session: pytest.Session, state: FactEditSession) -> None:
    """Pool every planned suite item over the records all workers sent, and report it."""
    records = state.records()
    for suite, metric in state.planned_suite_items:
        members = [r for r in records if (r["case_file"], r["case_id"]) in set(suite.members)]
        _report(session, suite, metric, suite_row(suite, metric, members, state.baseline))


class XdistHooks:
    """The hooks that exist only with pytest-xdist installed (pytest refuses unknown hooks otherwise)."""

    def __init__(self, state: FactEditSession, config: pytest.Config) -> None:
        self.state = state
        self.config = config

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """`-n N` alone means `--dist load`, which would split a case's items (one edit) over workers, so
        each would edit it again: schedule by scope instead, so a case's items stay on one worker."""
        if config.getvalue("dist") == "load":
            from xdist.scheduler import LoadScopeScheduling

            return LoadScopeScheduling(config, log)
        return None

    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        if not self.state.suites:  # every worker collects the same items: the first one's do
            plan_suites(self.config.rootpath, ids, self.state)


def worker_of(config: pytest.Config) -> tuple[int, int] | None:
    """(this xdist worker's number, how many workers), or None outside a worker."""
    index = worker_index(config)
    if index is None:
        return None
    return index, int(config.workerinput.get("workercount", 1))  # type: ignore[attr-defined]  # as in worker_index
