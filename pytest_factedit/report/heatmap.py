"""Layer x position heatmaps of a localization record: rich colour blocks (readable in plain text), PNG, inline SVG."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import terminal_text
from .console import render

if TYPE_CHECKING:
    from rich.text import Text

SHADES = " ░▒▓█"  # one more step per fifth of the grid's largest effect; "·" = scored, below a fifth
SITE_TITLES = {"hidden": "residual stream (layer output)", "mlp": "MLP output", "attn": "attention output"}
SITE_COLOURS = {"hidden": (150, 40, 180), "mlp": (40, 110, 200), "attn": (200, 80, 30)}
_NOT_SCORED = "  "


STORED_NOTE = " (traced by an earlier run of the same fact and model; read back from the cache)"


def _cell(value: float | None, top: float) -> tuple[str, float]:
    if value is None:
        return _NOT_SCORED, 0.0
    level = max(0.0, value) / top if top > 0 else 0.0
    step = min(len(SHADES) - 1, int(level * len(SHADES)))
    return (SHADES[step] * 2 if step else "· "), level


def _colour(rgb: tuple[int, int, int], level: float) -> str:
    mixed = [round(255 - (255 - c) * level) for c in rgb]
    return "rgb({},{},{})".format(*mixed)


def _readable(token: str) -> str:
    """A tokenizer piece as text: SentencePiece/BPE space markers as spaces, newlines escaped."""
    return token.replace("▁", " ").replace("Ġ", " ").replace("\n", "\\n")


def _token_label(token: str, width: int) -> str:
    label = terminal_text(_readable(token))
    return (label[: width - 1] + "…") if len(label) > width else label.ljust(width)


def site_grid(grid: dict[str, Any], site: str) -> tuple[list[int], list[list[float | None]]]:
    """(positions with a scored cell, rows[position][layer]) of one site; layers are columns."""
    by_layer = grid["effects"][site]
    positions = [p for p in range(len(grid["tokens"])) if any(row[p] is not None for row in by_layer)]
    return positions, [[row[p] for row in by_layer] for p in positions]


def heatmap_text(record: dict[str, Any], title: str = "", prompt_index: int = 0) -> Text:
    """A rich Text with one block per scored site of one prompt's grid, plus the chosen layers."""
    from rich.text import Text

    grid = record["grids"][prompt_index]
    subject = set(grid["subject_positions"])
    label_width = min(16, max(len(t) for t in grid["tokens"]) + 2)
    kind = "real restorations" if grid["kind"] == "patched" else "attribution estimates"
    out = Text()
    out.append(f"{terminal_text(title, newlines=False)} " if title else "", style="bold")
    out.append(
        f"{record['method']}: P({record['answer']!r}) with the subject corrupted, "
        f"{record['noise_samples']} noise samples\n"
    )
    if record.get("architecture"):
        out.append(f"layers: {terminal_text(record['architecture'], newlines=False)}\n")
    out.append(f"prompt {prompt_index + 1}/{len(record['grids'])}: {grid['prompt']!r}\n")
    out.append(f"P clean {grid['clean_prob']:.3f}, corrupted {grid['corrupted_prob']:.3f}; cells: {kind}\n")
    for site in ("hidden", "mlp", "attn"):
        positions, rows = site_grid(grid, site)
        if not positions:
            continue
        values = [v for row in rows for v in row if v is not None]
        top = max(values + [0.0])
        layers = len(rows[0])
        out.append(f"{SITE_TITLES[site]} (max {top:+.3f})\n", style="bold")
        out.append(
            " " * label_width
            + "".join(f"{layer:<2d}" if layer % 2 == 0 else "  " for layer in range(layers))
            + "  layer\n"
        )
        for position, row in zip(positions, rows):
            marker = "*" if position in subject else " "
            out.append(_token_label(marker + grid["tokens"][position], label_width))
            for value in row:
                text, level = _cell(value, top)
                out.append(text, style=f"on {_colour(SITE_COLOURS[site], level)}" if value is not None else "")
            out.append("\n")
    out.append("' ░▒▓█': fifths of the largest effect, '·': below, blank: not scored, *: subject\n")
    out.append(
        f"chosen: MLP layers {record['mlp_layers']} (at the subject's last token)\n"
        f"        attention layers {record['attention_layers']} (at the last token)\n"
    )
    out.append(f"{record['seconds']:.2f}s, {record['precision']}{STORED_NOTE if record.get('stored') else ''}\n")
    return out


def render_heatmap(record: dict[str, Any], title: str = "", color: bool = False, width: int = 120) -> str:
    """The heatmap as a string: ANSI colours when `color`, plain block characters otherwise."""
    return render(heatmap_text(record, title), color, width, color_system="truecolor", end="")


def write_png(record: dict[str, Any], path: Path, title: str = "") -> Path:
    """A PNG of every scored site of the first prompt (needs matplotlib: pip install 'pytest-factedit[plot]')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = record["grids"][0]
    sites = [s for s in ("hidden", "mlp", "attn") if site_grid(grid, s)[0]]
    most_positions = max(len(site_grid(grid, s)[0]) for s in sites)
    fig, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 0.35 * most_positions + 2.2), squeeze=False)
    for ax, site in zip(axes[0], sites):
        positions, rows = site_grid(grid, site)
        data = [[float("nan") if v is None else v for v in row] for row in rows]
        image = ax.imshow(data, aspect="auto", cmap={"hidden": "Purples", "mlp": "Blues", "attn": "Oranges"}[site])
        ax.set_yticks(range(len(positions)), _tick_labels(grid, positions))
        ax.set_xticks(range(0, len(data[0]), 2 if len(data[0]) > 12 else 1))
        ax.set_xlabel("layer")
        ax.set_title(SITE_TITLES[site])
        fig.colorbar(image, ax=ax, shrink=0.8)
    heading = f"{title} {record['method']}: P({record['answer']!r}), {grid['prompt']!r}".strip()
    fig.suptitle(heading + (f"\nlayers: {record['architecture']}" if record.get("architecture") else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tick_labels(grid: dict[str, Any], positions: Sequence[int]) -> list[str]:
    subject = set(grid["subject_positions"])
    return [("*" if p in subject else "") + _readable(grid["tokens"][p]) for p in positions]


# Inline SVG (the HTML report): one panel per scored site, rows the scored tokens, columns the layers.
_CELL = 16  # px per cell
_PANEL_GAP = 14
_FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"'
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")


def xml_text(text: object) -> str:
    """Text safe inside XML and HTML: escaped, and characters XML forbids shown as \\xNN."""
    return html.escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)))


def _svg_cell(x: int, y: int, fill: str, tip: str) -> str:
    """A cell with its exact value as a tooltip; a white edge keeps neighbouring cells apart."""
    return (
        f'<rect x="{x}" y="{y}" width="{_CELL}" height="{_CELL}" fill="{fill}" stroke="#fff">'
        f"<title>{xml_text(tip)}</title></rect>"
    )


def _svg_layer_marks(layers: int, chosen: Sequence[int], left: int, head: int, rows: int) -> list[str]:
    """Layer numbers above the columns; a chosen layer gets a bold number, a triangle and a box round its column."""
    out = []
    for layer in range(layers):
        x = left + layer * _CELL
        style = ' font-weight="700" fill="#000"' if layer in chosen else ' fill="#666"'
        out.append(f'<text x="{x + _CELL / 2}" y="{head - 4}" text-anchor="middle" font-size="9"{style}>{layer}</text>')
        if layer in chosen:
            out.append(f'<path d="M{x + 3} {head - 22} h{_CELL - 6} l-{(_CELL - 6) / 2} 7 z" fill="#111"/>')
            out.append(
                f'<rect x="{x}" y="{head}" width="{_CELL}" height="{rows * _CELL}" fill="none" stroke="#111" '
                'stroke-width="2"/>'
            )
    return out


def _svg_panel(grid: dict[str, Any], site: str, chosen: Sequence[int], left: int, top: int) -> tuple[list[str], int]:
    """One site's block (title, layer numbers, token rows of cells, chosen layers); its SVG elements and height."""
    positions, rows = site_grid(grid, site)
    peak = max([v for row in rows for v in row if v is not None] + [0.0])
    subject = set(grid["subject_positions"])
    out = [f'<text x="0" y="{top + 12}" font-weight="600">{xml_text(SITE_TITLES[site])} (max {peak:+.3f})</text>']
    head = top + 42  # room for the title, the chosen-layer triangles and the layer numbers
    for row_index, (position, row) in enumerate(zip(positions, rows)):
        y = head + row_index * _CELL
        token = ("* " if position in subject else "") + _readable(grid["tokens"][position])
        weight = ' font-weight="700"' if position in subject else ""
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end"{weight}>{xml_text(_clip(token, 22))}</text>')
        for layer, value in enumerate(row):
            tip = f"layer {layer}, {token.strip()!r}: " + ("not scored" if value is None else f"{value:+.4f}")
            level = max(0.0, value) / peak if value is not None and peak > 0 else 0.0
            fill = "#eee" if value is None else _colour(SITE_COLOURS[site], level)
            out.append(_svg_cell(left + layer * _CELL, y, fill, tip))
    out += _svg_layer_marks(len(rows[0]), chosen, left, head, len(positions))
    return out, head + len(positions) * _CELL - top


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _svg_legend(sites: Sequence[str], top: int, kind: str) -> list[str]:
    """Five shades per site (fifths of its largest effect), then what the marks mean."""
    out, x = [], 0
    for site in sites:
        out.append(f'<text x="{x}" y="{top + 12}" font-size="11">{xml_text(site)}</text>')
        x += 8 + 7 * len(site)
        for step in range(1, 6):
            out.append(
                f'<rect x="{x}" y="{top + 2}" width="12" height="12" fill="{_colour(SITE_COLOURS[site], step / 5)}"/>'
            )
            x += 12
        x += 14
    notes = f"0 to max; grey: not scored; * subject token; \u25bc and box: chosen layer; cells: {kind}"
    out.append(f'<text x="0" y="{top + 30}" font-size="11" fill="#444">{xml_text(notes)}</text>')
    return out


def heatmap_svg(record: dict[str, Any], title: str = "", prompt_index: int = 0) -> str:
    """One prompt's localization grid as a self-contained inline SVG (no external references, valid XML), for
    the HTML report: a panel per scored site, tokens down, layers across, chosen layers marked, a legend."""
    grid = record["grids"][prompt_index]
    sites = [s for s in ("hidden", "mlp", "attn") if site_grid(grid, s)[0]]
    chosen = {"mlp": record.get("mlp_layers") or [], "attn": record.get("attention_layers") or [], "hidden": []}
    labels = [_readable(grid["tokens"][p]) for s in sites for p in site_grid(grid, s)[0]]
    left = 16 + 7 * min(24, max([len(t) + 2 for t in labels] + [6]))
    kind = "real restorations" if grid["kind"] == "patched" else "attribution estimates"
    caption = [
        f"{title} {record['method']}: P({record['answer']!r}) with the subject corrupted".strip(),
        f"prompt {prompt_index + 1}/{len(record['grids'])}: {grid['prompt']!r}; "
        f"P clean {grid['clean_prob']:.3f}, corrupted {grid['corrupted_prob']:.3f}",
    ] + ([f"layers: {record['architecture']}"] if record.get("architecture") else [])
    body = [f'<text x="0" y="{14 + 16 * i}">{xml_text(line)}</text>' for i, line in enumerate(caption)]
    top, widest = 12 + 16 * len(caption), 0
    for site in sites:
        panel, height = _svg_panel(grid, site, chosen[site], left, top)
        body += panel
        top += height + _PANEL_GAP
        widest = max(widest, left + len(grid["effects"][site]) * _CELL)
    if not sites:
        body.append(f'<text x="0" y="{top + 12}" fill="#666">no scored cell</text>')
        top += 20
    body += _svg_legend(sites, top, kind)
    width = max(widest, 60 + 7 * max(len(line) for line in caption))
    return (
        f'<svg class="heatmap" width="{width}" height="{top + 40}" viewBox="0 0 {width} {top + 40}" '
        f'role="img" aria-label="{xml_text(caption[0])}" font-size="12" {_FONT}>' + "".join(body) + "</svg>"
    )
