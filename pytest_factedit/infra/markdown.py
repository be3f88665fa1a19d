"""Markdown for the generated reference pages (`factedit settings`, `factedit options`)."""

from __future__ import annotations


def table_cell(text: str) -> str:
    """Text for a Markdown table cell: '<' would open an HTML tag, '|' a column."""
    return text.replace("<", "&lt;").replace("|", "\\|")
