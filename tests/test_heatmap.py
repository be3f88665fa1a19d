"""Localization heatmaps: readable without colour, coloured on a terminal, PNG, and `factedit localize`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_factedit.report.heatmap import SHADES, render_heatmap

RECORD = {
    "method": "trace",
    "answer": "Paris",
    "mlp_layers": [1],
    "attention_layers": [2],
    "noise_samples": 3,
    "precision": "float32",
    "seconds": 0.5,
    "grids": [
        {
            "prompt": "The Eiffel Tower is in",
            "tokens": ["<bos>", "The", "▁Eiffel", "▁Tower", "▁is", "▁in"],
            "subject_positions": [2, 3],
            "clean_prob": 0.8,
            "corrupted_prob": 0.1,
            "kind": "patched",
            "effects": {
                "hidden": [[None] * 6 for _ in range(3)],
                "mlp": [
                    [None, None, None, 0.05, None, None],
                    [None, None, None, 0.5, None, None],
                    [None, None, None, -0.1, None, None],
                ],
                "attn": [[None] * 5 + [0.0], [None] * 5 + [0.2], [None] * 5 + [0.4]],
            },
        }
    ],
}


def test_plain_heatmap_shows_shades_tokens_and_the_choice() -> None:
    text = render_heatmap(RECORD, "eiffel")
    assert "\x1b[" not in text
    lines = text.splitlines()
    mlp_row = next(line for line in lines if "Tower" in line and SHADES[-1] in line)
    assert mlp_row.lstrip().startswith("* Tower")  # subject token marked
    assert "MLP output (max +0.500)" in text and "attention output (max +0.400)" in text
    assert "residual stream" not in text  # a site with no scored cell is left out
    assert "chosen: MLP layers [1]" in text and "attention layers [2]" in text
    attn_row = next(line for line in lines if line.startswith("  in"))
    assert attn_row.endswith("· ▒▒██")  # layers 0..2: 0.0 ("·"), 0.2 and 0.4 of a 0.4 maximum


def test_coloured_heatmap_uses_ansi_backgrounds() -> None:
    assert "\x1b[" in render_heatmap(RECORD, "eiffel", color=True)


def test_png_heatmap(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from pytest_factedit.report.heatmap import write_png

    path = write_png(RECORD, tmp_path / "eiffel.png", "eiffel")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_factedit_localize_command(tmp_path: Path, capsys, monkeypatch) -> None:
    pytest.importorskip("torch")
    from pytest_factedit.cli import main

    from .tiny import tiny_model, word_tokenizer

    tok = word_tokenizer()
    model_dir = tmp_path / "tiny-llama"
    tiny_model("llama", len(tok), layers=3).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    case = tmp_path / "eiffel.yaml"
    case.write_text(
        "subject: Eiffel Tower\nprompts: [The Eiffel Tower is located in the city of]\n"
        "old: Paris\nnew: Rome\ncontrols: [{prompt: Big Ben is in the city of, answer: London}]\n"
    )
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "localize",
            str(case),
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--json",
            "loc.json",
            "--root",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "MLP output" in out and "attention output" in out and "chosen: MLP layers" in out
    record = json.loads((tmp_path / "loc.json").read_text())
    assert record["method"] == "trace" and len(record["mlp_layers"]) == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no PNG" in out
    else:
        assert (tmp_path / "eiffel-localization.png").is_file()


def test_a_trace_read_back_from_the_cache_says_so_in_the_terminal_and_the_page() -> None:
    from pytest_factedit.report.html import _heatmaps

    assert "earlier run" not in render_heatmap(RECORD, "eiffel") + _heatmaps({"localization": RECORD})
    stored = {**RECORD, "stored": True}
    assert "traced by an earlier run" in render_heatmap(stored, "eiffel")
    assert "traced by an earlier run" in _heatmaps({"localization": stored, "case_id": "eiffel"})
