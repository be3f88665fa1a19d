"""bench/gpu_check.py's CPU dry run: the script a GPU machine runs must work before one is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about a minute: two whole cases and the localize/edit checks on tiny models
REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_script_runs_whole_cases_and_checks_on_tiny_models() -> None:
    pytest.importorskip("torch")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    lines = run.stdout.splitlines()
    wholes = [line for line in lines if "] whole case " in line]
    assert len(wholes) == 2 and all("(dry run, no target)" in line for line in wholes), wholes
    phases = [line for line in lines if line.startswith("    base probe ")]
    assert len(phases) == 2, run.stdout
    for phase in (" · localize ", " · learn ", " · edited probe ", " · restore check and the rest "):
        assert all(phase in line for line in phases), (phase, phases)
    assert sum("base restored bit-identical: True" in line for line in lines) == 4, run.stdout
    assert lines[-1] == "ALL OK"
