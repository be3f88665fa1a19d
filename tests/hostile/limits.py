"""Run untrusted-input probes in a child process bounded in time and memory, so a probe that explodes
fails its test instead of the test session."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MEMORY_BYTES = 1 << 30  # 1 GiB of address space: enough for Python, yaml and the plugin (no torch)


def _limit(seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))


def run_limited(code: str, seconds: int = 20, **variables: Any) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python with at most `seconds` of CPU (and wall clock) and 1 GiB of memory.

    `variables` are passed in as JSON and bound to the same names before `code` runs.
    """
    prelude = f"import json\nglobals().update(json.loads({json.dumps(json.dumps(variables))}))\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=seconds + 10,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: _limit(seconds),
    )
