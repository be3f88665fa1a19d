"""Fixtures for fact edits written as Python tests: `factedit_model` (the run's model, loaded once per
process and shared with the YAML cases) and `fact_edit` (run a case's whole protocol, or hold its edit
applied inside a `with` block). Their records go into the same run report as the YAML cases'."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import pytest

from .cases.loader import load_case
from .cases.schema import FactCase, parse_case
from .errors import FactEditError, MetricFailure, RestoreError, terminal_text
from .items import RECORDS_KEY, SESSION_KEY
from .report.tables import metric_failure
from .run.planned import PlannedCase, plan_case

if TYPE_CHECKING:
    from .edit.base import EditHandle
    from .model.load import LoadedModel
    from .report.records import AnswerRecord, CaseRecord
    from .session import FactEditSession

CaseLike = Union[str, Path, FactCase, Mapping[str, Any]]  # noqa: UP007 (a runtime alias: Python 3.10 lacks Path | ...)


@dataclass(frozen=True)
class EditOutcome:
    """What `fact_edit(case)` measured: the case record (as results.jsonl holds it) and its verdicts."""

    record: CaseRecord

    @property
    def status(self) -> str:
        return self.record["status"]

    @property
    def metrics(self) -> dict[str, float | None]:
        """Every measured metric's value by name (gated or recorded)."""
        return {name: entry["value"] for name, entry in self.record["metrics"].items()}

    @property
    def answers(self) -> list[AnswerRecord]:
        """Every probed prompt with its base and edited answer."""
        return list(self.record["answers"])

    def failures(self) -> list[str]:
        """What a YAML case's items would report: each missed threshold or regression, with its answers."""
        if self.status == "error":
            return [terminal_text(f"case {self.record['case_id']} could not run: {self.record['reason']}")]
        found = (metric_failure(self.record, name) for name in self.record["metrics"])
        return [failure for failure in found if failure]

    @property
    def passed(self) -> bool:
        return self.status == "ran" and not self.failures()

    def check(self) -> EditOutcome:
        """Fail the test the way a YAML case's item fails (skip when the model does not know the fact)."""
        if self.status == "skipped":
            pytest.skip(terminal_text(self.record["reason"]))
        failures = self.failures()
        if failures:
            raise MetricFailure("\n\n".join(failures))
        return self


@dataclass
class EditedModel:
    """The model with one case's edit applied, inside `fact_edit.applied(case)`."""

    lm: LoadedModel
    case: FactCase
    handle: EditHandle
    targets: Sequence[str] = field(default_factory=tuple)

    @property
    def model(self) -> Any:
        return self.lm.model

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def answer(self, prompt: str, max_tokens: int = 8) -> str:
        """The greedy continuation of `prompt` (up to a line break or `max_tokens`), as metrics judge it."""
        from .model.probe import greedy_continuations

        return greedy_continuations(self.lm.model, self.lm.tokenizer, [prompt], [max_tokens], self.case.chat_format)[0]


class FactEditor:
    """The `fact_edit` fixture: `fact_edit(case)` runs a case like a YAML one and returns its outcome;
    `with fact_edit.applied(case) as edited:` holds the edit for probing. Afterwards the base weights are
    checked, even when the test failed."""

    def __init__(self, state: FactEditSession, node: pytest.Item) -> None:
        self.state = state
        self.node = node

    def case(self, case: CaseLike) -> tuple[str, PlannedCase]:
        """(the name its record gives as case file, the case as this run runs it: its thresholds and
        settings) of a YAML path, a FactCase or a mapping in the YAML schema."""
        if isinstance(case, (str, Path)):
            path, root = Path(case).resolve(), self.node.config.rootpath
            found = load_case(path, root=root)
            name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        elif isinstance(case, FactCase):
            found, name = case, self.node.nodeid
        elif isinstance(case, Mapping):  # without an `id`, the test's name (made safe) names it
            default_id = re.sub(r"[^A-Za-z0-9._-]+", "-", self.node.name).strip(".-")[:128] or "case"
            found, name = parse_case(Path(self.node.nodeid), {"id": default_id, **case}), self.node.nodeid
        else:
            raise TypeError(f"fact_edit takes a YAML path, a FactCase or a mapping, not {type(case).__name__}")
        return name, plan_case(found, self.state.options)  # a bad `method:` fails here, with its key

    def __call__(self, case: CaseLike) -> EditOutcome:
        """Localize, edit, probe and measure `case`, undo the edit and verify the weights (the YAML protocol)."""
        if self.state.options.mode != "isolated":
            raise FactEditError(f"fact_edit runs isolated edits, not --factedit-mode {self.state.options.mode}")
        case_file, planned = self.case(case)
        record = self.state.record(case_file, planned)
        self.node.stash.setdefault(RECORDS_KEY, []).append(record)
        return EditOutcome(record)

    @contextmanager
    def applied(self, case: CaseLike) -> Iterator[EditedModel]:
        """The model with `case`'s edit applied (localized and trained as in a run) for the block; leaving
        it removes the edit and checks the edited modules are bit-identical to the base."""
        from .edit import get_editor
        from .model.weights import verified_restore
        from .run.case import edited, place_edit
        from .run.outcome import CaseOutcome

        _, planned = self.case(case)
        found = planned.case
        lm = self.state.load_model()
        outcome = CaseOutcome(found, "ran", planned.settings)
        base = self.state.held.cache  # the base model as loaded (every test's teardown verifies it): as a run does
        targets = place_edit(lm, outcome, get_editor(outcome.settings.name).scope, base)
        with verified_restore(lm.model, targets.touched) as check, edited(lm, outcome, base=base) as handle:
            yield EditedModel(lm, found, handle, tuple(targets.modules))
        if not check.restored:
            raise RestoreError(f"case {found.id}: the edited modules differ from the base after the edit was removed")

    def verify(self) -> None:
        """Teardown: the whole model must equal the base; a changed one is reloaded and the test errors."""
        if self.state.held.reload_if_changed():
            raise RestoreError(
                "the model's weights differed from the base after this test, so the base model was reloaded"
            )


def factedit_model(request: pytest.FixtureRequest) -> LoadedModel:
    """The run's model and tokenizer, with its name, weights hash, device and dtype (a LoadedModel)."""
    return request.config.stash[SESSION_KEY].load_model()


def fact_edit(request: pytest.FixtureRequest) -> Iterator[FactEditor]:
    editor = FactEditor(request.config.stash[SESSION_KEY], request.node)
    yield editor
    editor.verify()
