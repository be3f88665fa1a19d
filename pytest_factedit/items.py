"""pytest nodes: a YAML case file -> its case -> one item per metric; and the end-of-run items of many edits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .cases.loader import DEFAULTS_FILE, claim_id, defaults_for, load_case
from .errors import FactEditError, MetricFailure, terminal_text
from .metrics.spec import MANY_METRICS, METRIC_BY_ITEM, METRIC_BY_NAME, METRICS, thresholds_with
from .metrics.verdict import judge
from .report.tables import many_failure_details, metric_failure, suite_baseline_failure, suite_details
from .run.planned import PlannedCase, Suite, plan_case, suite_thresholds

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

    from .cases.schema import FactCase
    from .report.records import CaseRecord, MetricRecord, SuiteRecord
    from .session import FactEditSession

RECORDS_ATTRIBUTE = "factedit_records"  # the case records ride on the call report to the controller (xdist-safe)
RECORDS_KEY: pytest.StashKey[list[CaseRecord]] = pytest.StashKey()  # the records an item (or fixture) made
SESSION_KEY: pytest.StashKey[FactEditSession] = pytest.StashKey()


class CaseFile(pytest.File):
    """One fact case YAML file, read only from inside `folder`, the case folder it was found in."""

    def __init__(self, *, folder: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    def collect(self) -> Iterator[FactCaseNode]:
        try:
            state = self.config.stash[SESSION_KEY]
            case = load_case(self.path, root=self.config.rootpath, folder=self.folder)
            claim_id(state.case_ids, case, self.path)  # a second file with the same id fails here
            planned = plan_case(case, state.options)  # an invalid `method:` fails here, at collection
        except FactEditError as exc:
            raise self.CollectError(str(exc if exc.path else exc.at(self.path))) from exc
        yield FactCaseNode.from_parent(self, name=case.id, planned=planned)


class FactCaseNode(pytest.Collector):
    """One case: its metric items share one edit, made with the settings resolved here, at collection."""

    def __init__(self, *, planned: PlannedCase, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned

    @property
    def case(self) -> FactCase:
        return self.planned.case

    def collect(self) -> Iterator[MetricItem]:
        """One item per gated metric: those with a default threshold, and those the case sets one for."""
        thresholds = thresholds_with(self.case.thresholds)
        for spec in METRICS:
            if spec.name in thresholds:
                yield MetricItem.from_parent(self, name=spec.item, metric=spec.name)


def case_file_of(item: pytest.Item) -> str:
    """The case file's path as records name it: relative to the rootdir when it lies inside."""
    path = Path(item.path)
    return str(path.relative_to(item.config.rootpath)) if path.is_relative_to(item.config.rootpath) else str(path)


class GateItem(pytest.Item):
    """An item that asserts one metric against its threshold; a MetricFailure's message is the whole report."""

    metric: str

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, MetricFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def judged(
        self, value: float | None, threshold: float | None, samples: int, where: str, reason: str = ""
    ) -> str | None:
        """Skip when nothing was measured (never pass); the explanation of a missed threshold, or None when met."""
        verdict = judge(self.metric, value, threshold, samples, reason)
        if value is None:
            pytest.skip(terminal_text(where + verdict.explanation))
        return None if verdict.passed is not False else verdict.explanation


def junit_properties(metric: str, entry: MetricRecord | SuiteRecord) -> list[tuple[str, object]]:
    """What `--junitxml` shows of a metric item: its name, value, threshold, samples, protocol, baseline, delta."""
    props: list[tuple[str, object]] = [
        ("metric", metric),
        ("value", entry["value"]),
        ("threshold", entry["threshold"]),
        ("samples", entry["samples"]),
        ("protocol", METRIC_BY_NAME[metric].protocol),
    ]
    comparison = entry.get("baseline")
    if comparison:
        props += [("baseline", comparison["value"]), ("delta", comparison["delta"])]
    return props


class MetricItem(GateItem):
    """Asserts one metric of one case against its threshold, and against the baseline when one is given."""

    def __init__(self, *, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric

    @property
    def planned(self) -> PlannedCase:
        assert isinstance(self.parent, FactCaseNode)
        return self.parent.planned

    @property
    def case(self) -> FactCase:
        return self.planned.case

    def runtest(self) -> None:
        record = self.config.stash[SESSION_KEY].record(case_file_of(self), self.planned)
        self.stash.setdefault(RECORDS_KEY, []).append(record)
        if record["status"] == "error":
            raise MetricFailure(f"case {self.case.id} could not run: {record['reason']}")
        if record["status"] == "skipped":
            pytest.skip(terminal_text(record["reason"]))
        metric = record["metrics"][self.metric]
        self.user_properties.extend(junit_properties(self.metric, metric))
        if metric["value"] is None:  # nothing measured: skipped with the reason, never passed
            self.judged(None, metric["threshold"], metric["samples"], f"{self.case.id}: ", metric.get("reason", ""))
        failure = metric_failure(record, self.metric)
        if failure:
            raise MetricFailure(failure)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.case.id}::{METRIC_BY_ITEM[self.name].name}"


class ManyNode(pytest.Collector):
    """Parent of the end-of-run items (node id `sequence` or `batch`); they are added after collection."""

    def collect(self) -> list[pytest.Item]:
        return []


class ManyItem(GateItem):
    """`--factedit-mode sequential|batch`: one end-of-run metric over every edit (MANY_METRICS)."""

    def __init__(self, *, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric

    def runtest(self) -> None:
        many = self.config.stash[SESSION_KEY].run_many()
        metric = many["metrics"][self.metric]
        missed = self.judged(metric["value"], metric["threshold"], metric["samples"], "", metric.get("reason", ""))
        if missed is not None:
            raise MetricFailure(missed + many_failure_details(self.metric, many))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.parent.name if self.parent else ''}::{self.metric}"


def cases_in_order(items: list[pytest.Item]) -> list[tuple[str, PlannedCase]]:
    """(case file, case as planned) of every collected case, in collection order."""
    seen: dict[int, tuple[str, PlannedCase]] = {}
    for item in items:
        if isinstance(item, MetricItem) and id(item.parent) not in seen:
            seen[id(item.parent)] = (case_file_of(item), item.planned)
    return list(seen.values())


def many_items(session: pytest.Session, name: str) -> list[pytest.Item]:
    """The end-of-run items of many edits, under a node named `name` (`sequence` or `batch`)."""
    node = ManyNode.from_parent(session, name=name, nodeid=name)
    return [ManyItem.from_parent(node, name=spec.item, metric=spec.name) for spec in MANY_METRICS]


class SuiteNode(pytest.Collector):
    """Parent of one suite folder's pooled items (node id `<folder>::suite`); added after collection."""

    def __init__(self, *, suite: Suite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite

    def collect(self) -> list[pytest.Item]:
        return []


class SuiteItem(GateItem):
    """One metric pooled over every case of a suite folder, with its Wilson 95% interval, against the
    folder's `suite_thresholds`."""

    def __init__(self, *, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric

    def runtest(self) -> None:
        assert isinstance(self.parent, SuiteNode)
        row = self.config.stash[SESSION_KEY].suite(self.parent.suite, self.metric)
        self.user_properties.extend(junit_properties(self.metric, row))
        failure = suite_failure(row)
        if failure is None and row["value"] is None:
            pytest.skip(terminal_text(suite_skip_reason(row)))
        if failure is not None:
            raise MetricFailure(failure)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.parent.name if self.parent else ''}::{self.metric}"


def suite_failure(row: SuiteRecord) -> str | None:
    """Why a suite row fails: its `suite_thresholds` missed, or worse than the baseline; None when it passes."""
    verdict = judge(row["metric"], row["value"], row["threshold"], row["samples"])
    problems = [f"{row['folder']}: {verdict.explanation}\n{suite_details(row)}"] if verdict.passed is False else []
    comparison = row.get("baseline")
    if comparison and comparison["regressed"]:
        problems.append(suite_baseline_failure(row, comparison))
    return "\n".join(problems) if problems else None


def suite_skip_reason(row: SuiteRecord) -> str:
    """Why a suite item with nothing pooled is skipped (never passed)."""
    return f"{row['folder']}: " + judge(row["metric"], None, row["threshold"], 0).explanation


def suite_plan(root: Path, case_files: list[tuple[str, str]], state: FactEditSession) -> list[Suite]:
    """Every folder holding a `_defaults.yaml` (within the rootdir), with the cases (file, id) below it."""
    root = root.resolve()
    members: dict[Path, list[tuple[str, str]]] = {}
    for case_file, case_id in case_files:
        for folder in (root / case_file).resolve().parents:
            if (folder / DEFAULTS_FILE).is_file():
                members.setdefault(folder, []).append((case_file, case_id))
            if folder == root:
                break
    return [
        Suite(
            str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder),
            tuple(cases),
            suite_thresholds(dict(defaults_for(folder / DEFAULTS_FILE, root).suite_thresholds), state.options),
        )
        for folder, cases in members.items()
    ]


def suite_metrics(suite: Suite, selected: set[str], compared: bool) -> list[str]:
    """The metrics a suite gates among those a selected item measures (so `-k forget` keeps the forget rows
    only): those its thresholds name, and with a baseline every share metric."""
    return [
        spec.name
        for spec in METRICS
        if spec.name in selected and (spec.name in suite.thresholds or (compared and spec.samples is not None))
    ]


def suite_items(session: pytest.Session, suites: list[Suite], items: list[pytest.Item]) -> list[pytest.Item]:
    """One pooled item per metric each suite gates (`suite_metrics`)."""
    selected = {item.metric for item in items if isinstance(item, MetricItem)}
    compared = session.config.stash[SESSION_KEY].baseline is not None
    out: list[pytest.Item] = []
    for suite in suites:
        wanted = suite_metrics(suite, selected, compared)
        if wanted:
            node = SuiteNode.from_parent(
                session, name=f"{suite.folder}::suite", nodeid=f"{suite.folder}::suite", suite=suite
            )
            out += [SuiteItem.from_parent(node, name=METRIC_BY_NAME[m].item, metric=m) for m in wanted]
    return out
