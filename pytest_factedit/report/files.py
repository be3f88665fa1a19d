"""Run outputs on disk: atomic results.jsonl and summary.json under reports/<run-id>/, and reports/latest."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..cases.ids import inside
from ..errors import FactEditError, explained
from ..infra.files import default_mode, write_atomic

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


def write_outputs(outputs: Sequence[tuple[str, Path | None, Callable[[Path], object]]]) -> tuple[list[str], list[str]]:
    """Write each (name, path, write) whose path was asked for (--factedit-save-baseline, --factedit-html):
    ("name: what was written" lines, why a write failed). A failure is said, never raised: it must not fail
    a run whose tests passed."""
    written: list[str] = []
    problems: list[str] = []
    for name, path, write in outputs:
        if path is None:
            continue
        try:
            written.append(f"{name}: {write(path)}")
        except OSError as exc:
            problems.append(f"could not write the {name} to {path}: {exc.strerror or exc}")
        except Exception as exc:  # a writer's bug: said, never a failed run when every test passed
            problems.append(f"could not write the {name} to {path}: {explained(exc)}")
    return written, problems


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


def _read_bytes(path: Path, fix: str) -> bytes:
    """A report file's bytes, or FactEditError naming it, why it cannot be read and `fix`."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FactEditError(f"cannot read it: {exc.strerror or exc}. Fix: {fix}", path=path) from None


def read_results(path: Path) -> list[CaseRecord]:
    """The records of a results.jsonl file (or of the one in a run folder), each checked against its shape:
    FactEditError naming the file and line of the first that is not UTF-8, not JSON, or not a record."""
    from .records import case_record_problem
    from .shape import json_value, utf8_text

    if path.is_dir():
        path = path / RESULTS_FILE
    fix = "name the results.jsonl a pytest run with the plugin wrote, or rerun the suite"
    data = _read_bytes(path, fix)
    records = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = utf8_text(raw, path, FactEditError, fix, line=number)
        if line.strip():
            record = json_value(line, path, FactEditError, fix, line=number)
            problem = case_record_problem(record)
            if problem:
                raise FactEditError(
                    f"line {number} is not a case record of pytest-factedit: {problem}. Fix: {fix}", path=path
                )
            records.append(record)
    return records


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json, checked whole against its shape; FactEditError with the file, the key and the fix."""
    from .records import summary_misfit
    from .shape import json_value, utf8_text

    fix = "remove it, or rerun the suite"
    data = _read_bytes(path, fix)
    summary = json_value(utf8_text(data, path, FactEditError, fix), path, FactEditError, fix)
    found = summary_misfit(summary)
    if found is not None:
        raise FactEditError(
            f"not a run summary of pytest-factedit: {found.message}. Fix: {fix}", path=path, key=found.key or None
        )
    return cast("dict[str, Any]", summary)  # JSON is Any to mypy; summary_misfit found it an object of the shape
