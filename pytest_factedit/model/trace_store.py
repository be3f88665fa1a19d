"""The base model's traces kept across runs: one JSON file per traced fact, in a folder per model identity.

A trace depends only on the base model and on what is traced, so a suite that runs on every push can read
the one an earlier run made instead of tracing again. Callers name a trace by a key (a hex digest of what
was traced and how: localize/stored.py) and hand over its record; this module stores and reads them.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..infra.files import read_regular, write_atomic

STORE_TRACES = 5_000  # files kept per model identity; the oldest go first
TRACE_BYTES = 1_000_000  # a stored trace larger than this is not one this package wrote
KEY = re.compile(r"[0-9a-f]{64}")


def identity_name(identity: Mapping[str, str]) -> str:
    """The name of a model identity's store (its probe file, its traces folder): 16 hex digits of its digest."""
    return hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()[:16]


class TraceStore:
    """Traces of one model identity (weights, dtype, device, library versions, CPU kernels) under `folder`."""

    def __init__(self, folder: Path, identity: Mapping[str, str]) -> None:
        self.identity = dict(identity)
        self.folder = folder / f"traces-{identity_name(self.identity)}"

    def path_of(self, key: str) -> Path:
        """The file of `key`; ValueError for a key that is not a digest (no other path can be named)."""
        if not KEY.fullmatch(key):
            raise ValueError(f"a trace key is a sha256 hex digest, found {key!r}")
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The record stored under `key`; None when there is none, and None with a note when it cannot be used."""
        path = self.path_of(key)
        try:
            raw, kind = read_regular(path, TRACE_BYTES)
            if kind or len(raw) > TRACE_BYTES:
                raise ValueError(kind or f"larger than {TRACE_BYTES:,} bytes")
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("identity") != self.identity or data.get("key") != key:
                raise ValueError("not a trace of this model and fact")
            if not isinstance(data.get("trace"), dict):
                raise ValueError("it holds no trace record")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.note(path, exc)
            return None
        trace: dict[str, Any] = data["trace"]
        return trace

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store `record` under `key` (replacing the file atomically), then drop the oldest past STORE_TRACES."""
        path = self.path_of(key)
        write_atomic(path, json.dumps({"identity": self.identity, "key": key, "trace": record}) + "\n")
        stored = sorted((when, path) for path in self.folder.glob("*.json") if (when := _modified(path)) is not None)
        for _, old in stored[: max(0, len(stored) - STORE_TRACES)]:
            old.unlink(missing_ok=True)

    @staticmethod
    def note(path: Path, problem: Exception | str) -> None:
        """Tell the user a stored trace was set aside (it is traced and written anew)."""
        print(f"pytest-factedit: not using the stored trace {path} ({problem}); it is traced anew", file=sys.stderr)


def _modified(path: Path) -> int | None:
    """When `path` was last written; None when another process removed it meanwhile (xdist workers share it)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
