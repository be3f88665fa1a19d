"""Rich renderables as text: ANSI colours for a terminal, plain characters otherwise (rich loads lazily)."""

from __future__ import annotations

import io
from typing import Any, Literal

from ..errors import terminal_text

ColorSystem = Literal["standard", "truecolor"]


def render(renderable: Any, color: bool, width: int, color_system: ColorSystem = "standard", end: str = "\n") -> str:
    """`renderable` printed to a string `width` columns wide."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=color,
        no_color=not color,
        width=width,
        color_system=color_system if color else None,
        highlight=False,
    )
    console.print(renderable, end=end)
    return buffer.getvalue()


def natural_width(renderable: Any) -> int:
    """The columns `renderable` takes when nothing is wrapped or cut (a table's widest natural rendering)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(file=io.StringIO(), width=10_000)
    return Measurement.get(console, console.options, renderable).maximum


def literal(text: str) -> str:
    """Text from data for a rich cell or title: inert for the terminal (`terminal_text`) and shown as written,
    where rich would read `[bold]` as a style, refuse `[/]`, and drop `[/INST]` or fail on it."""
    from rich.markup import escape

    # escape() doubles a trailing backslash (for text a tag follows), which a cell then shows doubled
    return escape(terminal_text(text) + " ")[:-1]
