"""A saved sequence's manifest is untrusted: its order list may name a folder outside, one that is not
there, one twice, or too many; each is refused in one line (file, key, expected, found, fix) before any
edit goes on the model. (tests/test_saved_sequence.py loads real sequences, and a tampered edit in one.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.errors import SavedEditError  # noqa: E402
from pytest_factedit.report.manifest import load_edit  # noqa: E402
from pytest_factedit.report.saved_sequence import MAX_SEQUENCE_EDITS  # noqa: E402


def sequence_with(tmp_path: Path, edits: Any) -> Path:
    """A sequence folder whose manifest lists `edits`, next to a folder `outside` it."""
    (tmp_path / "outside").mkdir(exist_ok=True)
    folder = tmp_path / "sequence"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"manifest_version": 1, "mode": "sequence", "edits": edits}))
    return folder


def refused(model_dir: Path, folder: Path, key: str, found: str) -> str:
    """load_edit on a fresh base model: one line naming the manifest and `key`; nothing goes on the model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    before = [type(m).__name__ for m in model.modules()]
    with pytest.raises(SavedEditError) as caught:
        load_edit(model, folder)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{folder / 'manifest.json'}: key '{key}': "), text
    assert found in text and ". Fix: " in text, text
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert [type(m).__name__ for m in model.modules()] == before
    return text


@pytest.mark.parametrize(
    ("name", "found"),
    [
        ("../outside", "leads outside the edit's folder"),
        ("/etc", "leads outside the edit's folder"),
        ("a/b", "leads outside the edit's folder"),
        ("..", "leads outside the edit's folder"),
        ("0000-gone", "nothing there"),
        ("", "an empty str"),
        (7, "int"),
    ],
)
def test_an_order_entry_must_name_a_folder_inside_the_sequence(tmp_path, tiny_model_dir, name, found) -> None:
    folder = sequence_with(tmp_path, [{"folder": name, "saved": True, "case_id": "c"}])
    refused(tiny_model_dir[0], folder, "edits[0].folder", found)


def test_a_link_that_leads_out_and_a_repeated_folder_are_refused(tmp_path, tiny_model_dir) -> None:
    folder = sequence_with(tmp_path, [{"folder": "0000-a", "saved": True}, {"folder": "0000-a", "saved": True}])
    (folder / "0000-a").symlink_to(tmp_path / "outside", target_is_directory=True)
    refused(tiny_model_dir[0], folder, "edits[0].folder", "a link")
    (folder / "0000-a").unlink()
    (folder / "0000-a").mkdir()
    (folder / "0000-a" / "manifest.json").write_text(json.dumps({"adapters": [{"name": "x"}]}))
    (folder / "0000-a" / "x").mkdir()
    (folder / "0000-a" / "x" / "adapter_config.json").write_text("{}")
    refused(tiny_model_dir[0], folder, "edits[1].folder", "a repeated name")


@pytest.mark.parametrize(
    ("edits", "key", "found"),
    [
        ([], "edits", "another size"),
        ({"folder": "x"}, "edits", "mapping"),
        ([{"folder": "x", "saved": True}] * (MAX_SEQUENCE_EDITS + 1), "edits", "another size"),
        (["0000-a"], "edits[0]", "str"),
        ([{"folder": "0000-a", "saved": False, "case_id": "tower"}], "edits[0]", "an edit (case tower) its editor"),
        ([{"folder": "0000-a", "case_id": "../x"}], "edits[0]", "an edit its editor could not save"),
    ],
)
def test_the_order_list_is_bounded_and_every_edit_in_it_saved(tmp_path, tiny_model_dir, edits, key, found) -> None:
    folder = sequence_with(tmp_path, edits)
    text = refused(tiny_model_dir[0], folder, key, found)
    assert "../x" not in text  # a case id that is not a safe name is not shown
