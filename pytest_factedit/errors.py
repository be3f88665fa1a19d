"""Every error a user can meet: one base class that carries the file and the key, printed one way."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path


def shown(value: object, limit: int = 80, typed: bool = True) -> str:
    """A bounded summary of a value for an error message: its type, and a repr cut at `limit` characters.

    Containers are described by their size, never printed: YAML aliases can make a tiny file hold a
    list whose repr would take gigabytes. The repr escapes what does not print (control, bidi and
    zero-width characters, lone surrogates), so a name cannot pose as another.
    """
    if value is None:
        return "null"
    kind = type(value).__name__
    if isinstance(value, (list, tuple)):
        return f"{kind} of {len(value)} items"
    if isinstance(value, dict):
        return f"mapping of {len(value)} keys"
    if isinstance(value, str):
        text = repr(value[:limit]) + (f"... ({len(value)} characters)" if len(value) > limit else "")
    else:
        text = repr(value)
        text = text[:limit] + ("..." if len(text) > limit else "")
    return f"{kind} {text}" if typed else text


def shown_key(key: object, limit: int = 80) -> str:
    """A key found in a file, for an error's dotted key: as it is when it is a short printable string,
    else its bounded repr (a key can be anything a file holds)."""
    return key if isinstance(key, str) and len(key) <= limit and key.isprintable() else shown(key, limit, typed=False)


def printable(text: str) -> str:
    """`text` safe to print anywhere: bytes of a file name that are not UTF-8 (lone surrogates) as \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# What a terminal acts on rather than shows: CSI sequences (colours, cursor moves, a cleared screen), OSC,
# DCS, SOS, PM and APC strings (links, titles, clipboard writes) up to their BEL or ST, other ESC sequences,
# and the one-character C1 forms of each; then the control characters left, and the bidi controls that
# reorder what is shown.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-~]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_text(text: str, newlines: bool = True) -> str:
    """Text from data (a prompt, an answer, a name, a model's output) as inert characters for a terminal.

    Escape sequences and control characters are removed, so a case cannot colour, clear, link or rewrite
    the CI log; tabs become spaces; newlines stay only where the caller lays out lines (`newlines`).
    """
    text = _ESCAPE_SEQUENCE.sub("", text).replace("\t", " ")
    if not newlines:
        text = text.replace("\r\n", " ").replace("\n", " ")
    return printable(_CONTROL.sub("", text))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class FactEditError(Exception):
    """Base of the plugin's errors: a message, and the file and key it is about where they exist.

    `str(exc)` is the whole message, `<file>: key '<key>': <message>`, so the CLI and collection print
    it as it is.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, key: str | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.key = key
        super().__init__(message)

    def __str__(self) -> str:
        where = [printable(self.path)] if self.path else []
        where += [f"key '{self.key}'"] if self.key else []
        return terminal_text(": ".join(where + [self.message]))  # names and values may come from data

    def at(self, path: Path | str) -> FactEditError:
        """The same error, located in `path` (for errors found before the file was known)."""
        located = type(self).__new__(type(self))
        located.__dict__.update(self.__dict__, path=str(path))
        located.args = self.args
        return located


class CaseError(FactEditError):
    """A fact case (or a `_defaults.yaml`) is invalid: names the file, the key and the problem."""

    def __init__(self, path: Path | str | None, key: str | None, message: str) -> None:
        super().__init__(message, path=path, key=key)


class MethodError(FactEditError):
    """A `method:` mapping (or a command-line override of it) is invalid."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message, key=f"method.{key}")


class SourceError(FactEditError):
    """A benchmark file to import (CounterFact) cannot be read or has the wrong shape."""


class ModelError(FactEditError):
    """The model cannot do what a case asks (for example, `chat: true` without a chat template)."""


class ModelLoadError(ModelError):
    """The model could not be loaded; the message says what was tried and how to fix it."""


class UnsupportedArchitecture(ModelError):
    """No module table for this model; the message shows how to name modules in YAML instead."""


class SubjectNotFound(ModelError):
    """The subject does not occur in a prompt's tokens, so it cannot be corrupted."""


class RestoreError(FactEditError):
    """The base weights differ after an edit was undone: every later case would be invalid."""


class MetricFailure(FactEditError, AssertionError):
    """A metric missed its threshold; the message is the report (no traceback is shown)."""


class BaselineError(FactEditError):
    """A baseline file cannot be read or compared with (another model's weights, another schema)."""


class SavedEditError(FactEditError):
    """A saved edit (manifest.json, its adapters, gate.json, gains) cannot be put on this model as it is."""


def out_of_memory_hint(exc: BaseException) -> str:
    """For an accelerator out-of-memory error, what it was and what to try, in order; '' for anything else.

    Recognised by name and message, so that this module needs no torch.
    """
    text = str(exc)
    if type(exc).__name__ != "OutOfMemoryError" and "out of memory" not in text.lower():
        return ""
    first = text.splitlines()[0] if text else type(exc).__name__
    return (
        f"The accelerator ran out of memory ({first[:200]}). Try, in order: a smaller dtype "
        "(--factedit-dtype bfloat16 or float16); spreading the model over GPUs and CPU (--factedit-device-map "
        "auto); fewer rows per training step (method: {kl_rows_per_step: 4, context_prefixes: ['']} in YAML); "
        "localize: attribution, which patches fewer cells than trace; or --factedit-device cpu."
    )


def explained(exc: BaseException) -> str:
    """How a case's error reads in its record: the out-of-memory advice, else the type and message."""
    return out_of_memory_hint(exc) or f"{type(exc).__name__}: {exc}"
