"""A long-lived worker of bench/benchmark.py: loads the embedded model once, then runs fact cases on request.

    PYTHONPATH=<checkout> python bench/case_worker.py <cases folder> ['{"KEY": VALUE, ...}'] [--fresh-probes]

It prints one JSON line when ready (import and load seconds), then reads case file names on stdin and
prints one JSON line of timings per case. Run with PYTHONPATH set to another checkout, it measures that
checkout's code, so that bench/benchmark.py --against can interleave two revisions on one machine. The
optional JSON object holds method settings put over every case's own (bench/benchmark.py --set). With
--fresh-probes, each case run starts from an empty cache of the base model's decodes and states, as in
`pytest --factedit-fresh-probes`: its base probe decodes every row (bench/benchmark.py --fresh-probes).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any


def _imports() -> tuple[Any, Any, Any, Any, Any]:
    """The functions a case needs, from whichever layout the checkout has."""
    from pytest_factedit.cases import load_case
    from pytest_factedit.edit import resolve_settings

    try:
        from pytest_factedit.model.load import load
        from pytest_factedit.run.case import run_case
        from pytest_factedit.run.probing import BaseAnswerCache
    except ImportError:  # before the layout of issue 10
        from pytest_factedit.models import load  # type: ignore[no-redef]
        from pytest_factedit.runner import BaseAnswerCache, run_case  # type: ignore[no-redef]
    return load_case, resolve_settings, load, run_case, BaseAnswerCache


def judged(outcome: Any) -> list[Any]:
    """What the metrics read from each answer, whatever its length: the candidate it names first, and
    whether it says the expected answer, before and after the edit; then every metric but latency.
    Revisions that stop decoding at different points (issue 13 stops once an answer is decided) agree
    on these when they agree on the verdicts."""
    from pytest_factedit.metrics.answers import matches, said

    case = outcome.case
    rows: list[Any] = []
    for a in outcome.answers:
        candidates = {"old": case.old, "new": case.new, "expected": a.expected}
        texts = (a.base, a.edited or "")
        rows.append(
            [a.group, a.prompt, *(said(t, candidates) for t in texts), *(matches(t, a.expected) for t in texts)]
        )
    for name, metric in sorted(outcome.metrics.items()):
        if not name.startswith("latency"):
            rows.append([name, None if metric.value is None else round(metric.value, 6), metric.samples])
    return rows


LATENCY_KEYS = ("base_seconds_per_token", "edited_seconds_per_token")  # the latency figure's two timings


def case_timings(outcome: Any, wall: float) -> dict[str, Any]:
    """Per phase: base probe, localization, each stage, the edited probe; the latency timings; hashes of the
    answers' texts and of what the metrics judged from them (`judged`)."""
    timings = dict(outcome.timings)
    stages = {f"stage_{s['name']}_seconds": s["seconds"] for s in outcome.stages}
    answers = [(a.group, a.prompt, a.base, a.edited) for a in outcome.answers]
    return {
        "case": outcome.case.id,
        "status": outcome.status,
        "wall_seconds": wall,
        **stages,
        "stages_seconds": sum(stages.values()),
        "steps": [s["steps"] for s in outcome.stages],
        **{k: timings.get(k) for k in ("base_probe_seconds", "localize_seconds", "edit_seconds", "probe_seconds")},
        **{k: timings.get(k) for k in LATENCY_KEYS},
        "answers_sha256": hashlib.sha256(json.dumps(answers).encode()).hexdigest(),
        "judged_sha256": hashlib.sha256(json.dumps(judged(outcome)).encode()).hexdigest(),
        "judged": judged(outcome),
    }


def main() -> int:
    started = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    imported = time.perf_counter()
    load_case, resolve_settings, load, run_case, cache_type = _imports()
    lm = load(None, "cpu")
    loaded = time.perf_counter()
    import pytest_factedit

    ready = {"ready": True, "import_seconds": imported - started, "load_seconds": loaded - imported}
    print(json.dumps({**ready, "package": pytest_factedit.__file__}), flush=True)
    root = Path(sys.argv[1]).resolve()
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    fresh = "--fresh-probes" in sys.argv[3:]
    cache = cache_type()
    for line in sys.stdin:
        path = Path(line.strip())
        case = load_case(path, root=root)
        cache = cache_type() if fresh else cache
        began = time.perf_counter()
        outcome = run_case(lm, case, resolve_settings({**case.method, **overrides}), cache)
        print(json.dumps(case_timings(outcome, time.perf_counter() - began)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
