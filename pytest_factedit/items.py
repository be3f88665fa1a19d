"""pytest nodes: a YAML case file -> its case -> one item per metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from .cases import CaseError, FactCase, load_case
from .gate import judge
from .metricspec import METRICS, METRIC_BY_ITEM, SEQUENCE_METRICS

RECORD_PROPERTY = "factedit_record"
SESSION_KEY: pytest.StashKey[Any] = pytest.StashKey()


class MetricFailure(AssertionError):
    """A metric missed its threshold; the message holds the answers table."""


class CaseFile(pytest.File):
    """One fact case YAML file."""

    def collect(self) -> Iterator["FactCaseNode"]:
        try:
            case = load_case(self.path, root=self.config.rootpath)
            self.config.stash[SESSION_KEY].settings_for(case)  # an invalid `method:` fails here, at collection
        except CaseError as exc:
            raise self.CollectError(str(exc)) from exc
        except ValueError as exc:  # MethodError
            raise self.CollectError(f"{self.path}: {exc}") from exc
        yield FactCaseNode.from_parent(self, name=case.id, case=case)


class FactCaseNode(pytest.Collector):
    """One case: its metric items share one edit."""

    def __init__(self, *, case: FactCase, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def collect(self) -> Iterator["MetricItem"]:
        for spec in METRICS:
            yield MetricItem.from_parent(self, name=spec.item, metric=spec.name)


def case_file_of(item: pytest.Item) -> str:
    """The case file's path as records name it: relative to the rootdir when it lies inside."""
    path = Path(item.path)
    return str(path.relative_to(item.config.rootpath)) if path.is_relative_to(item.config.rootpath) else str(path)


class GateItem(pytest.Item):
    """An item that fails with a MetricFailure: its message is the report, without a traceback."""

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, MetricFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class MetricItem(GateItem):
    """Asserts one metric of one case against its threshold."""

    def __init__(self, *, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric

    @property
    def case(self) -> FactCase:
        return self.parent.case

    def runtest(self) -> None:
        record = self.config.stash[SESSION_KEY].record(case_file_of(self), self.case)
        self.user_properties.append((RECORD_PROPERTY, record))
        if record["status"] == "error":
            raise MetricFailure(f"case {self.case.id} could not run: {record['reason']}")
        if record["status"] == "skipped":
            pytest.skip(record["reason"])
        metric = record["metrics"][self.metric]
        verdict = judge(self.metric, metric["value"], metric["threshold"], metric["samples"])
        if metric["value"] is None:
            pytest.skip(f"{self.case.id}: {verdict.explanation}")
        if not verdict.passed:
            raise MetricFailure(verdict.explanation + "\n" + _failure_details(self.metric, record))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.case.id}::{METRIC_BY_ITEM[self.name].name}"


def _failure_details(metric: str, record: dict[str, Any]) -> str:
    from .metrics import matches
    from .report import answers_table

    groups = {"new_fact_accuracy": ("prompts",), "forget_rate": ("prompts", "paraphrases"),
              "paraphrase_accuracy": ("paraphrases",), "control_retention": ("controls",),
              "latency_overhead": ()}[metric]
    if not groups:
        t = record["timings"]
        return (f"base {t['base_seconds_per_token'] * 1000:.1f} ms/token, "
                f"edited {t['edited_seconds_per_token'] * 1000:.1f} ms/token")
    rows = []
    for answer in record["answers"]:
        if answer["group"] not in groups:
            continue
        if metric == "control_retention" and not answer["base_correct"]:
            continue
        expected = record["old"] if metric == "forget_rate" else answer["expected"]
        ok = not matches(answer["edited"], expected) if metric == "forget_rate" else answer["edited_correct"]
        shown = [f"not {a}" for a in expected] if metric == "forget_rate" else expected
        rows.append({"prompt": answer["prompt"], "expected": shown, "base": answer["base"],
                     "edited": answer["edited"], "ok": ok})
    return answers_table(f"{record['case_id']}: {metric}", rows)


class SequenceNode(pytest.Collector):
    """Parent of the end-of-run items (node id `sequence` or `batch`); they are added after collection."""

    def collect(self) -> list[pytest.Item]:
        return []


class SequenceItem(GateItem):
    """`--factedit-mode sequential|batch`: one end-of-run metric over every edit (edits or controls retained)."""

    def __init__(self, *, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric

    def runtest(self) -> None:
        sequence = self.config.stash[SESSION_KEY].run_many()
        metric = sequence["metrics"][self.metric]
        verdict = judge(self.metric, metric["value"], metric["threshold"], metric["samples"])
        if metric["value"] is None:
            pytest.skip(verdict.explanation)
        if not verdict.passed:
            lost = [case for case, share in sequence["retained_by_case"].items() if share < 1.0]
            raise MetricFailure(verdict.explanation + (f"\nedits no longer (fully) held: {', '.join(lost)}"
                                                       if lost and self.metric == "edits_retained" else ""))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.parent.name}::{self.metric}"


def sequence_items(session: pytest.Session, items: list[pytest.Item]) -> list[pytest.Item]:
    """Register the collected cases in order and return the end-of-sequence items to append."""
    state = session.config.stash[SESSION_KEY]
    seen = set()
    for item in items:
        if isinstance(item, MetricItem) and id(item.parent) not in seen:
            seen.add(id(item.parent))
            state.many_cases.append((case_file_of(item), item.case))
    if not seen:
        return []
    node = SequenceNode.from_parent(session, name=state.report_key, nodeid=state.report_key)
    return [SequenceItem.from_parent(node, name=spec.item, metric=spec.name) for spec in SEQUENCE_METRICS]
