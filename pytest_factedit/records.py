"""Versioned result records: one JSON object per case (schema_version 1)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from . import metrics as m
from .gate import judge
from .metricspec import METRIC_BY_NAME
from .runner import CaseOutcome

RECORD_SCHEMA_VERSION = 1
_VERSIONED = ("pytest-factedit", "torch", "transformers", "peft", "pytest", "gguf")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _answer_entry(answer: Any, old: tuple[str, ...]) -> dict[str, Any]:
    entry = {"group": answer.group, "prompt": answer.prompt, "expected": list(answer.expected),
             "base": answer.base, "base_correct": m.matches(answer.base, answer.expected),
             "edited": answer.edited}
    if answer.edited is not None:
        entry["edited_correct"] = m.matches(answer.edited, answer.expected)
        if answer.group != "controls":
            entry["edited_says_old"] = m.matches(answer.edited, old)
    return entry


def case_record(outcome: CaseOutcome, case_file: str, run: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one case; `run` holds run_id, model, device, dtype, seed and versions."""
    metrics = {}
    for name, value in outcome.metrics.items():
        threshold = outcome.thresholds[name]
        verdict = judge(name, value.value, threshold, value.samples)
        metrics[name] = {"value": value.value, "threshold": threshold, "passed": verdict.passed,
                         "direction": METRIC_BY_NAME[name].direction, "protocol": value.protocol,
                         "samples": value.samples}
    targets = outcome.targets
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "run_id": run["run_id"],
        "case_id": outcome.case.id,
        "case_file": case_file,
        "status": outcome.status,
        "reason": outcome.reason,
        "model": run["model"],
        "device": run["device"],
        "dtype": run["dtype"],
        "method": {"name": outcome.settings.name, "settings": outcome.settings.as_record(),
                   "stages": outcome.stages, "trainable_parameters": outcome.trainable_parameters},
        "target_modules": list(targets.modules) if targets else [],
        "feedforward_modules": list(targets.feedforward) if targets else [],
        "targets_rule": targets.rule if targets else None,
        "localization": outcome.localization.as_record() if outcome.localization else None,
        "metrics": metrics,
        "scores": outcome.extra.get("scores", {}),
        "adapters": outcome.extra.get("adapters"),
        "answers": [_answer_entry(a, outcome.case.old) for a in outcome.answers],
        "old": list(outcome.case.old),
        "new": list(outcome.case.new),
        "timings": {k: round(v, 6) for k, v in outcome.timings.items()},
        "base_restored": outcome.base_restored,
        "seed": outcome.settings.seed,
        "versions": run["versions"],
    }


def error_record(case_id: str, case_file: str, message: str, run: dict[str, Any]) -> dict[str, Any]:
    """The record of a case that could not run (the error is kept, the other cases go on)."""
    return {"schema_version": RECORD_SCHEMA_VERSION, "run_id": run["run_id"], "case_id": case_id,
            "case_file": case_file, "status": "error", "reason": message, "model": run["model"],
            "device": run["device"], "dtype": run["dtype"], "metrics": {}, "answers": [],
            "seed": run.get("seed"), "versions": run["versions"]}
