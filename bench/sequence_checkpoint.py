"""A long sequential run that can stop and go on (`python bench/sequential.py --checkpoint DIR`).

A thousand edits take hours on 2 cores. With a checkpoint folder each edit is saved before it is kept
(DIR/edits/<position>-<case id>/), and each case's figures are logged as soon as it is measured
(DIR/outcomes.jsonl); DIR/run.json names the facts and the settings. Run again with the same folder, facts
and settings: the base answers are taken again on the untouched model, the logged cases' edits are put
back in order, and the sequence goes on from the first case not logged. A part can also stop short of the
log (`resume(upto=K)`): the first K edits are put back and checked as after a last edit, and the log is
kept whole. Only subject-gated edits can be put back this way (edits merged into the weights leave no
saved edit to load).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

OUTCOMES = "outcomes.jsonl"
RUN = "run.json"
EDITS = "edits"


class Checkpoint:
    """The folder of one resumable sequential run."""

    def __init__(self, folder: Path, cases: Sequence[Any], identity: dict[str, Any]) -> None:
        """`identity`: what must not change between the parts of one run (the method and its settings)."""
        self.folder, self.cases = Path(folder), list(cases)
        self.folder.mkdir(parents=True, exist_ok=True)
        run = {"cases": [c.id for c in self.cases], **identity}
        path = self.folder / RUN
        if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != run:
            raise SystemExit(f"{path}: another run (other facts or settings) is checkpointed here; use a new folder")
        path.write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
        self.logged = self._logged()

    @property
    def edits(self) -> Path:
        return self.folder / EDITS

    def _logged(self) -> list[dict[str, Any]]:
        """The cases logged so far, in order (a line cut short by a kill ends the log)."""
        path = self.folder / OUTCOMES
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        logged = []
        for position, line in enumerate(lines):
            if position >= len(self.cases):
                raise SystemExit(f"{path}: more lines than the run has cases")
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break
            if entry.get("position") != position or entry.get("case_id") != self.cases[position].id:
                raise SystemExit(f"{path}: line {position + 1} is not case {self.cases[position].id} of this run")
            logged.append(entry)
        path.write_text("".join(json.dumps(e) + "\n" for e in logged), encoding="utf-8")
        return logged

    def earlier_seconds(self, upto: int | None = None) -> float:
        """The seconds the earlier parts of the run took, up to their last logged case (with `upto`: up to the
        `upto`-th, where a part stops earlier than the log goes)."""
        logged = self.logged[:upto]
        return float(logged[-1].get("run_seconds", 0.0)) if logged else 0.0

    def log(self, position: int, outcome: Any, run_seconds: float) -> None:
        """One measured case, appended and flushed before the next edit starts; `run_seconds`: the run's
        seconds so far, its earlier parts included."""
        entry = {
            "run_seconds": round(run_seconds, 3),
            "position": position,
            "case_id": outcome.case.id,
            "status": outcome.status,
            "reason": outcome.reason,
            "metrics": {name: _metric_entry(value) for name, value in outcome.metrics.items()},
            "timings": outcome.timings,
        }
        with (self.folder / OUTCOMES).open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    def resume(self, lm: Any, settings_for: Callable[[Any], Any], upto: int | None = None) -> Callable[[], list[Any]]:
        """What run_sequence calls once the base answers are in: each logged case's edit back on the model,
        kept until the run releases its edits, and its outcome as logged; with `upto`, only the first `upto`
        (a part that stops earlier than the log goes: the figures after that many edits)."""

        def put_back() -> list[Any]:
            from pytest_factedit.cases.ids import sequence_folder
            from pytest_factedit.edit.saved_gains import SAVED_FOLDER
            from pytest_factedit.edit.subject_gains import load_subject_gains

            outcomes = []
            for entry, case in zip(self.logged[:upto], self.cases):
                if entry["status"] == "ran":
                    saved = self.edits / sequence_folder(entry["position"], case.id) / SAVED_FOLDER
                    if not saved.is_dir():
                        raise SystemExit(f"{saved}: not a saved subject-gated edit; this run cannot be resumed")
                    load_subject_gains(lm.model, saved).merge()  # kept until the run releases its edits
                outcomes.append(_outcome(entry, case, settings_for(case)))
            return outcomes

        return put_back


def _metric_entry(value: Any) -> dict[str, Any]:
    return {
        "value": value.value,
        "samples": value.samples,
        "protocol": value.protocol,
        "hits": value.hits,
        "reason": value.reason,
    }


def _outcome(entry: dict[str, Any], case: Any, settings: Any) -> Any:
    from pytest_factedit.metrics.measure import MetricValue
    from pytest_factedit.run.outcome import CaseOutcome

    metrics = {name: MetricValue(name=name, **fields) for name, fields in entry["metrics"].items()}
    return CaseOutcome(
        case=case,
        status=entry["status"],
        settings=settings,
        reason=entry["reason"],
        metrics=metrics,
        timings=entry["timings"],
    )
