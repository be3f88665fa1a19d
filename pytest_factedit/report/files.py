"""Run outputs on disk: atomic results.jsonl and summary.json under reports/<run-id>/, and reports/latest."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cases.ids import inside
from ..errors import FactEditError
from ..model.files import default_mode, write_atomic

if TYPE_CHECKING:
    from .records import CaseRecord

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
LATEST_LINK = "latest"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def point_latest(reports_dir: Path, run_dir: Path) -> str | None:
    """Make reports/latest a symlink to the run folder, replaced atomically; why not, when it was left alone.

    A `latest` that is a real folder or file (what downloading a CI artifact leaves) is never replaced.
    """
    link = reports_dir / LATEST_LINK
    if link.exists() and not link.is_symlink():
        return f"{link} is not a link (a copied artifact?): left as it is"
    tmp = reports_dir / f".{LATEST_LINK}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)
    return None


class RunWriter:
    """Keeps reports/<run-id>/results.jsonl valid after every case, and summary.json at the end.

    `open()` creates the run folder before anything runs, and fails with what to fix. After that a
    failed write never stops the run: it is kept in `problems` (once) for the terminal summary.
    """

    def __init__(self, reports_dir: Path, run_id: str) -> None:
        self.reports_dir = Path(reports_dir)
        self.run_id = run_id
        self.run_dir = self.reports_dir / run_id
        self.records: list[CaseRecord] = []
        self.problems: dict[str, str] = {}  # kind -> the first message of that kind
        self._keys: set[tuple[str, str]] = set()
        self._opened = False

    def open(self) -> None:
        """Create reports/<run-id>/, which must not exist yet; raises FactEditError with the fix."""
        if self._opened:
            return
        try:
            if self.reports_dir.exists() and not self.reports_dir.is_dir():
                raise NotADirectoryError(20, "not a folder", str(self.reports_dir))
            self.reports_dir.mkdir(parents=True, exist_ok=True)
            self.run_dir = inside(self.reports_dir, self.run_id)
            self.run_dir.mkdir(mode=default_mode(folder=True))
        except FileExistsError as exc:
            raise FactEditError(
                f"{self.run_dir} already exists: another run used this run id. Fix: pass "
                "another --factedit-run-id, or remove that folder"
            ) from exc
        except OSError as exc:
            raise FactEditError(
                f"cannot write reports to {self.reports_dir}: {exc.strerror or exc}. Fix: "
                "--factedit-reports DIR naming a folder you can write"
            ) from exc
        self._opened = True

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
        self._write(RESULTS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))

    def finish(self, summary: dict[str, Any]) -> None:
        self.flush()
        self._write(SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")

    def _write(self, name: str, text: str) -> None:
        try:
            self.open()
            write_atomic(self.run_dir / name, text)
            skipped = point_latest(self.reports_dir, self.run_dir)
        except (OSError, FactEditError) as exc:
            reason = f"{exc.strerror} ({exc.filename})" if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.problems.setdefault("write", f"could not write reports: {reason}; the run goes on without them")
            return
        if skipped:
            self.problems.setdefault("latest", skipped)


def read_results(path: Path) -> list[CaseRecord]:
    """The records of a results.jsonl file (or of the one in a run folder), each checked against its shape."""
    from .records import case_record_problem

    if path.is_dir():
        path = path / RESULTS_FILE
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise FactEditError(f"line {number} is not a JSON record: {exc}", path=path) from exc
            problem = case_record_problem(record)
            if problem:
                raise FactEditError(
                    f"line {number} is not a case record of pytest-factedit: {problem}. Fix: name the "
                    "results.jsonl a pytest run with the plugin wrote, or rerun the suite",
                    path=path,
                )
            records.append(record)
    return records
