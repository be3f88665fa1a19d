"""What a long run shows while it works: the model's loading (and first conversion), then each case's phases.

The work tells its phases as events (infra/events.py); this module listens for a block and shows them in
one of three styles: "rich" (a terminal: a transient progress line, gone when the block ends), "plain"
(not a tty, e.g. CI logs: one line per case, and per model load) and "silent" (`-q`: nothing). The words
are composed here only (`case_line`, `converting_line`, `loaded_line`), so the plugin and the CLI print the
same text. rich loads only when a rich display starts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from ..errors import terminal_text
from ..infra.events import (
    CASE_END,
    CONVERT,
    CONVERT_START,
    LOAD_NOTE,
    LOCALIZE_END,
    LOCALIZE_START,
    MEMORY,
    PROBE_END,
    PROBE_PASS,
    PROBE_START,
    PROBED,
    STAGE_END,
    STEP,
    Event,
    listening,
)

Style = Literal["rich", "plain", "silent"]
STYLES: tuple[Style, ...] = ("rich", "plain", "silent")
PREFIX = "factedit: "
_ASCII = str.maketrans({"·": "-", "…": "...", "—": "-"})  # for a stream that cannot encode them


def style_for(stream: TextIO, quiet: bool) -> Style:
    """The style a stream gets: silent when asked to be quiet, rich on a terminal, plain otherwise."""
    if quiet:
        return "silent"
    isatty = getattr(stream, "isatty", None)
    return "rich" if callable(isatty) and isatty() else "plain"


@dataclass
class CaseTally:
    """What one case did, from its events: seconds localizing, steps per stage, seconds probing, status;
    and the seconds of a base pass over every case that ran in its block (the first case's)."""

    localize_seconds: float | None = None
    steps: dict[str, int] = field(default_factory=dict)  # stage -> optimizer steps taken, in stage order
    probe_seconds: float | None = None
    status: str | None = None
    pass_seconds: float | None = None
    _since: dict[str, float] = field(default_factory=dict)

    def hear(self, event: Event, now: float) -> None:
        kind = event.kind
        if event.label == PROBE_PASS and kind in (PROBE_START, PROBE_END):  # not this case's own probe
            if kind == PROBE_START:
                self._since[PROBE_PASS] = now
            else:
                self.pass_seconds = (self.pass_seconds or 0.0) + now - self._since.pop(PROBE_PASS, now)
        elif kind in (LOCALIZE_START, PROBE_START):
            self._since[kind] = now
        elif kind == LOCALIZE_END:
            self.localize_seconds = (self.localize_seconds or 0.0) + now - self._since.pop(LOCALIZE_START, now)
        elif kind == PROBE_END:
            self.probe_seconds = (self.probe_seconds or 0.0) + now - self._since.pop(PROBE_START, now)
        elif kind in (STEP, STAGE_END) and event.done is not None:
            self.steps[event.label] = event.done
        elif kind == CASE_END:
            self.status = event.label

    def pass_so_far(self, now: float) -> float:
        """Seconds since the base pass began (0 when none is running)."""
        return now - self._since.get(PROBE_PASS, now)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def case_line(case_id: str, tally: CaseTally, seconds: float, error: str | None = None) -> str:
    """The one line of a finished case, e.g.
    `factedit: norway-capital: localize 2.7 s · unlearn 8 steps · learn 12 steps · probe 1.3 s · 15.0 s`
    (steps taken, not the caps; a status other than "ran", and an error that stopped the case, are added;
    a base pass over every case, run in this case's block, comes first as `base pass 40.2 s`)."""
    parts = [] if tally.pass_seconds is None else [f"{PROBE_PASS} {tally.pass_seconds:.1f} s"]
    parts += [] if tally.localize_seconds is None else [f"localize {tally.localize_seconds:.1f} s"]
    parts += [f"{stage} {_count(n, 'step')}" for stage, n in tally.steps.items()]
    parts += [] if tally.probe_seconds is None else [f"probe {tally.probe_seconds:.1f} s"]
    parts += [tally.status] if tally.status not in (None, "ran") else []
    parts += [f"stopped by {error}"] if error else []
    return f"{PREFIX}{case_id}: " + " · ".join([*parts, f"{seconds:.1f} s"])


def pass_line(done: int, total: int, seconds: float) -> str:
    """The line a plain display writes while a base pass is still going, e.g.
    `factedit: base pass: 64/1000 cases probed in 70 s`."""
    return f"{PREFIX}{PROBE_PASS}: {done}/{total} cases probed in {seconds:.0f} s"


def converting_line(model_name: str) -> str:
    """The line told when a model's GGUF starts converting (once; later runs load the cached copy)."""
    return f"{PREFIX}converting {model_name} to safetensors (first run only, about half a minute)…"


def loaded_line(model_name: str, seconds: float, converted: bool) -> str:
    """The line told when a model is ready, e.g. `factedit: gemma3-270m loaded in 3.3 s`."""
    return f"{PREFIX}{model_name} {'converted and loaded' if converted else 'loaded'} in {seconds:.1f} s"


def phase_text(event: Event) -> str | None:
    """What a rich display says an event's phase is (None: the phase shown does not change)."""
    label = event.label
    return {
        CONVERT_START: "converting (first run only, about half a minute)",
        CONVERT: f"converting: {label}",
        LOCALIZE_START: "localize",
        STEP: f"{label} step {event.done}/{event.total}",
        PROBE_START: label if label == PROBE_PASS else f"probe {label}",
        PROBED: f"{label} {event.done}/{event.total} cases",
    }.get(event.kind)


def _write_line(stream: TextIO, line: str, ends: tuple[str, str] = ("", "\n")) -> None:
    """Write `line` between `ends` (by default: then a newline), flushed. Characters the stream cannot
    encode become ASCII, and a stream that cannot be written (closed) is left alone: a display never fails
    the run. Names from data (a case id, a model path) cannot drive the terminal: see `terminal_text`."""
    line = terminal_text(line, newlines=False)
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        line.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        line = line.translate(_ASCII).encode("ascii", "replace").decode("ascii")
    try:
        stream.write(ends[0] + line + ends[1])
        stream.flush()
    except (OSError, ValueError):
        pass


class _RichView:
    """A transient rich progress line on `stream`: a title, the current phase, a bar and the elapsed time."""

    def __init__(self, stream: TextIO, width: int, title: str, clock: Callable[[], float]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=stream, force_terminal=True, width=width, highlight=False)
        title = terminal_text(title, newlines=False)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            TextColumn("{task.fields[phase]}", markup=False),
            BarColumn(bar_width=max(10, min(30, width // 4))),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            redirect_stdout=False,  # pytest owns sys.stdout and sys.stderr
            redirect_stderr=False,
            refresh_per_second=4,
            get_time=clock,
        )
        self.task = self.progress.add_task(title, total=None, phase="")

    def __enter__(self) -> _RichView:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def note(self, line: str) -> None:
        """A line printed above the progress bar, which stays when the bar goes."""
        self.progress.console.print(terminal_text(line, newlines=False), markup=False, highlight=False, soft_wrap=True)

    def show(self, event: Event) -> None:
        phase = phase_text(event)
        if phase is None:
            return
        counted = event.kind in (STEP, CONVERT, PROBED) and event.done is not None and event.total
        done, total = (event.done, event.total) if counted else (0, None)
        self.progress.update(self.task, phase=phase, completed=done, total=total)


class CaseProgress:
    """Shows the events of a block in one style; `case()` and `loading()` install its listener for the block."""

    def __init__(
        self,
        stream: TextIO,
        style: Style,
        width: int = 80,
        clock: Callable[[], float] = time.perf_counter,
        line_ends: tuple[str, str] = ("", "\n"),
    ):
        if style not in STYLES:
            raise ValueError(f"progress style: expected one of {STYLES}, found {style!r}")
        self.stream, self.style, self.width, self.clock = stream, style, width, clock
        # what a plain line is written between: pytest's terminal ends its lines lazily, so the plugin asks
        # for ("\n", "") there and pytest's next write ends the line
        self.line_ends = line_ends

    def _view(self, title: str) -> Any:
        return _RichView(self.stream, self.width, title, self.clock) if self.style == "rich" else nullcontext()

    @contextmanager
    def case(self, case_id: str) -> Iterator[None]:
        """Show one case's phases for the block. Rich: drawn from the cursor's position, so the caller
        puts the cursor at the start of an empty line first, and nothing is left there after. Plain: one
        line when the block ends (also when it raises), and a line per batched decode of a base pass over
        many cases that runs in the block (`pass_line`). Silent: nothing."""
        if self.style == "silent":
            yield
            return
        tally, started, error = CaseTally(), self.clock(), None
        with self._view(case_id) as view:

            def hear(event: Event) -> None:
                tally.hear(event, self.clock())
                if view is not None:
                    view.show(event)
                elif event.kind == PROBED and event.done is not None and event.total and event.done < event.total:
                    self._pass_going(event.done, event.total, tally.pass_so_far(self.clock()))

            try:
                with listening(hear):
                    yield
            except BaseException as exc:
                error = type(exc).__name__
                raise
            finally:
                if self.style == "plain":
                    _write_line(self.stream, case_line(case_id, tally, self.clock() - started, error), self.line_ends)

    def _pass_going(self, done: int, total: int, seconds: float) -> None:
        """Plain: a long base pass before the first case shows it is alive, once per batched decode."""
        if self.style == "plain":
            _write_line(self.stream, pass_line(done, total, seconds), self.line_ends)

    @contextmanager
    def loading(self, model_name: str) -> Iterator[None]:
        """Show a model's loading for the block (and its conversion on a first run). Rich: as `case()`, from
        the start of an empty line and gone after. Plain: a line when a conversion starts, and one when the
        model is loaded (none when loading raises: its error tells). Silent: nothing."""
        if self.style == "silent":
            yield
            return
        started = self.clock()
        converted: list[str] = []  # the conversion's label, once one started
        with self._view(model_name) as view:

            def hear(event: Event) -> None:
                if event.kind in (MEMORY, LOAD_NOTE):  # lines about the load, kept on screen
                    if view is not None:
                        view.note(f"{PREFIX}{event.label}")
                    else:
                        _write_line(self.stream, f"{PREFIX}{event.label}", self.line_ends)
                if event.kind == CONVERT_START and not converted:
                    converted.append(event.label)
                    if self.style == "plain":
                        _write_line(self.stream, converting_line(model_name), self.line_ends)
                if view is not None:
                    view.show(event)

            with listening(hear):
                yield
        if self.style == "plain":
            _write_line(self.stream, loaded_line(model_name, self.clock() - started, bool(converted)), self.line_ends)


def case_progress(
    stream: TextIO,
    style: Style,
    width: int = 80,
    clock: Callable[[], float] = time.perf_counter,
    line_ends: tuple[str, str] = ("", "\n"),
) -> CaseProgress:
    """The display of a run on `stream` (`style_for` picks the style; `width`: the terminal's columns)."""
    return CaseProgress(stream, style, width, clock, line_ends)


class BetweenPytestLines:
    """Progress on pytest's terminal (its TerminalReporter), between its lines. pytest ends a line lazily:
    its next write starts with a newline. So a display starts on a line of its own, and leaves the cursor
    where pytest expects it: a rich display goes back up to the end of pytest's line once it is gone, and a
    plain line is written through pytest's writer, which then knows where its line is."""

    def __init__(self, reporter: Any) -> None:
        self.reporter = reporter

    def _end_pytest_line(self) -> None:
        """Write the [ 10%] pytest's current line would have had, and make its next write start a line."""
        reporter = self.reporter
        if reporter.currentfspath is not None and reporter.verbosity <= 0:
            if getattr(reporter, "_show_progress_info", False):
                reporter._write_progress_information_filling_space()
        reporter.currentfspath = None

    @contextmanager
    def showing(self, block: Callable[[CaseProgress], AbstractContextManager[None]]) -> Iterator[None]:
        """Run the block under a display of `block(progress)` (a case, or the model's loading)."""
        writer = self.reporter._tw
        stream = getattr(writer, "_file", sys.stdout)
        style = style_for(stream, quiet=False)
        self._end_pytest_line()
        if style == "plain":
            plain = case_progress(
                _WriterStream(writer),  # type: ignore[arg-type]  # has the part of TextIO a plain display uses
                style,
                writer.fullwidth,
                line_ends=("\n", ""),
            )
            with block(plain):
                yield
            return
        mid_line = writer.width_of_current_line > 0
        if mid_line:
            stream.write("\n")
        try:
            with block(case_progress(stream, style, writer.fullwidth)):
                yield
        finally:  # the transient display is gone: back to the end of pytest's line
            if mid_line:
                stream.write("\x1b[1A")
            stream.flush()


class _WriterStream:
    """pytest's TerminalWriter as a text stream, for the plain display."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.encoding = getattr(getattr(writer, "_file", None), "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        self.writer.write(text, flush=True)

    def flush(self) -> None:
        self.writer.flush()

    def isatty(self) -> bool:
        return False
