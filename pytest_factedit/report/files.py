"""Run outputs on disk: atomic results.jsonl and summary.json under reports/<run-id>/, and reports/latest."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FactEditError

if TYPE_CHECKING:
    from .records import CaseRecord

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
LATEST_LINK = "latest"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def point_latest(reports_dir: Path, run_dir: Path) -> None:
    """Make reports/latest a symlink to the run folder, replaced atomically."""
    link = reports_dir / LATEST_LINK
    tmp = reports_dir / f".{LATEST_LINK}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


class RunWriter:
    """Keeps reports/<run-id>/results.jsonl valid after every case, and summary.json at the end."""

    def __init__(self, reports_dir: Path, run_id: str) -> None:
        self.reports_dir = reports_dir
        self.run_dir = reports_dir / run_id
        self.records: list[CaseRecord] = []
        self._keys: set[tuple[str, str]] = set()

    def add(self, record: CaseRecord) -> bool:
        """Add a case record (once per case) and rewrite results.jsonl atomically; False if already there."""
        key = (record["case_file"], record["case_id"])
        if key in self._keys:
            return False
        self._keys.add(key)
        self.records.append(record)
        self.flush()
        return True

    def flush(self) -> None:
        write_atomic(self.run_dir / RESULTS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))
        point_latest(self.reports_dir, self.run_dir)

    def finish(self, summary: dict[str, Any]) -> None:
        self.flush()
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")


def read_results(path: Path) -> list[CaseRecord]:
    """The records of a results.jsonl file (or of the one in a run folder)."""
    if path.is_dir():
        path = path / RESULTS_FILE
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise FactEditError(f"line {number} is not a JSON record: {exc}", path=path) from exc
    return records
