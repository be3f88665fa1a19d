"""Layer x position heatmaps of a localization record: rich colour blocks (readable in plain text) and PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import render

if TYPE_CHECKING:
    from rich.text import Text

SHADES = " ░▒▓█"  # one more step per fifth of the grid's largest effect; "·" = scored, below a fifth
SITE_TITLES = {"hidden": "residual stream (layer output)", "mlp": "MLP output", "attn": "attention output"}
SITE_COLOURS = {"hidden": (150, 40, 180), "mlp": (40, 110, 200), "attn": (200, 80, 30)}
_NOT_SCORED = "  "


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
    label = _readable(token)
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
    out.append(f"{title} " if title else "", style="bold")
    out.append(
        f"{record['method']}: P({record['answer']!r}) with the subject corrupted, "
        f"{record['noise_samples']} noise samples\n"
    )
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
    out.append(f"{record['seconds']:.2f}s, {record['precision']}\n")
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
    rows = max(len(site_grid(grid, s)[0]) for s in sites)
    fig, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 0.35 * rows + 2.2), squeeze=False)
    for ax, site in zip(axes[0], sites):
        positions, rows = site_grid(grid, site)
        data = [[float("nan") if v is None else v for v in row] for row in rows]
        image = ax.imshow(data, aspect="auto", cmap={"hidden": "Purples", "mlp": "Blues", "attn": "Oranges"}[site])
        ax.set_yticks(range(len(positions)), _tick_labels(grid, positions))
        ax.set_xticks(range(0, len(data[0]), 2 if len(data[0]) > 12 else 1))
        ax.set_xlabel("layer")
        ax.set_title(SITE_TITLES[site])
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"{title} {record['method']}: P({record['answer']!r}), {grid['prompt']!r}".strip())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tick_labels(grid: dict[str, Any], positions: Sequence[int]) -> list[str]:
    subject = set(grid["subject_positions"])
    return [("*" if p in subject else "") + _readable(grid["tokens"][p]) for p in positions]
