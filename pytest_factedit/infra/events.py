"""Progress events: what a long run is doing, told to whoever listens (a display), and to nobody by default.

The code that does the work calls `emit(...)` at each phase; a display installs a listener for a block with
`listening(...)`. The listener lives in a context variable, so nothing is passed down through the layers and
nothing is global. Emitting with nobody listening costs one lookup. A listener that raises is muted for the
rest of its block and its error kept on the handle: a broken display must never fail an edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# The kinds of event, and what `label`, `done` and `total` hold for each.
CONVERT_START = "convert-start"  # label: the model's name; a GGUF is converted to safetensors (first run only)
CONVERT = "convert"  # label: a phase below; `done`/`total`: tensors de-quantized so far, of all
CONVERT_END = "convert-end"  # label: the model's name
MEMORY = "memory"  # label: the estimated memory of the run, told before the weights load (a line to show)
LOAD_NOTE = "load-note"  # label: how the loaded model computes where that is not torch's default (a line to show)
LOCALIZE_START = "localize-start"  # label: the localization method
LOCALIZE_END = "localize-end"  # label: the localization method
STEP = "step"  # label: the stage ("unlearn", "learn"); `done`: optimizer steps taken; `total`: the step cap
STAGE_END = "stage-end"  # label: the stage; `done`: steps taken (the goal can stop it before the cap)
PROBE_START = "probe-start"  # label: PROBE_BASE, PROBE_EDITED or PROBE_PASS
PROBE_END = "probe-end"  # label: PROBE_BASE, PROBE_EDITED or PROBE_PASS
PROBED = "probed"  # label: PROBE_PASS; `done`: cases whose base rows the pass has decoded, of `total`
CASE_END = "case-end"  # label: the case's status ("ran", "skipped")

# Phases of a conversion (the label of CONVERT events).
ASSEMBLING = "assembling the GGUF"
TOKENIZER = "building the tokenizer"  # from the GGUF's vocabulary: the longest step of a conversion
READING = "reading the GGUF"  # its config, before its tensors are de-quantized
DEQUANTIZING = "de-quantizing"
SAVING = "saving"

# What is probed (the label of PROBE_START / PROBE_END events).
PROBE_BASE = "base"
PROBE_EDITED = "edited"
PROBE_PASS = "base pass"  # every case's base rows at once, before the first case (run/base_pass.py)


@dataclass(frozen=True)
class Event:
    """One thing that happened: its kind (a constant above), a label, and a count where it has one."""

    kind: str
    label: str = ""
    done: int | None = None
    total: int | None = None


Listener = Callable[[Event], None]


@dataclass
class Listening:
    """The listener of a `listening` block, and the first exception it raised (it hears nothing after)."""

    listener: Listener
    error: Exception | None = None


_CURRENT: ContextVar[Listening | None] = ContextVar("factedit_listener", default=None)


@contextmanager
def listening(listener: Listener) -> Iterator[Listening]:
    """Send the events emitted in this block (and this context) to `listener`; the outer one hears none."""
    handle = Listening(listener)
    token = _CURRENT.set(handle)
    try:
        yield handle
    finally:
        _CURRENT.reset(token)


def emit(kind: str, label: str = "", done: int | None = None, total: int | None = None) -> None:
    """Tell the current listener, if any. Its exceptions are kept on its handle and never reach the caller."""
    handle = _CURRENT.get()
    if handle is None or handle.error is not None:
        return
    try:
        handle.listener(Event(kind, label, done, total))
    except Exception as exc:  # a display's bug must not fail the run it displays
        handle.error = exc


def is_listening() -> bool:
    """Whether an event emitted now would be heard (to skip work done only to describe progress)."""
    handle = _CURRENT.get()
    return handle is not None and handle.error is None
