"""What running a case produced: its answers, targets, stages, metrics and timings (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..metrics.answers import ProbedAnswer
from ..metrics.measure import CaseEvidence, MetricValue

if TYPE_CHECKING:
    from ..cases.schema import FactCase
    from ..edit.settings import EditSettings
    from ..localize.localizer import Localization
    from ..model.decoding import Decoded
    from ..model.targets import TargetModules

Status = Literal["ran", "skipped", "error"]


@dataclass
class CaseOutcome:
    """Everything measured for one case; `status` is ran, skipped or error."""

    case: FactCase
    status: Status
    settings: EditSettings
    reason: str = ""
    answers: list[ProbedAnswer] = field(default_factory=list)
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    targets: TargetModules | None = None
    localization: Localization | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # recorded, not gated (CounterFact-style, fluency)
    base_scores: dict[str, float] = field(default_factory=dict)  # the base probe's part of `scores`
    adapters: dict[str, Any] | None = None  # where the edit's adapters were saved, or why they were not
    timings: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0
    base_restored: bool | None = None
    base_decoded: list[Decoded] = field(default_factory=list, repr=False)  # the base probe's rows, in probe order

    def group(self, name: str) -> list[ProbedAnswer]:
        return [a for a in self.answers if a.group == name]

    def evidence(self) -> CaseEvidence:
        """What the metric table measures this case from."""
        return CaseEvidence(tuple(self.answers), self.case.old, self.case.new, dict(self.timings))
