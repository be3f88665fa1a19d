"""Saved edits are untrusted: files written by `--save`/`--factedit-save-adapters` get the umask's modes, and
a tampered edit folder (manifest.json, gate.json, gains.safetensors, a peft adapter) fails to load in one
line naming the file, the key, what was expected, what was found and the fix, leaving the model as it was."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import case_text

torch = pytest.importorskip("torch")

from pytest_factedit.edit.saved_gains import ROUTER_KEY  # noqa: E402
from pytest_factedit.edit.subject_gains import WORD_FLAGS_KEY, load_subject_gains  # noqa: E402
from pytest_factedit.errors import FactEditError  # noqa: E402
from pytest_factedit.report.manifest import load_edit  # noqa: E402

UMASK = 0o027  # not the usual 022, so the modes show they come from the umask


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: tuple[Path, str]) -> dict[str, Path]:
    """The tiny model's folder and two saved edits of it, made under UMASK: peft adapters (gains on every
    token) and subject-gated gains; each loads cleanly before any test tampers with a copy."""
    from pytest_factedit.cli import main

    folder, old = tiny_model_dir
    root = tmp_path_factory.mktemp("saved")
    made = {"model": folder}
    kinds = (("peft", "every"), ("gated", "subject"), ("routed", "subject-sentence, router_layer_from_end: 2"))
    for kind, positions in kinds:
        case = root / f"cases-{kind}" / "tower.yaml"
        case.parent.mkdir()
        case.write_text(case_text(old).replace("localize: none}", f"localize: none, gain_positions: {positions}}}"))
        previous = os.umask(UMASK)
        try:
            main(["edit", str(case), "--model", str(folder), "--device", "cpu", "--save", str(root / kind)])
        finally:
            os.umask(previous)
        made[kind] = root / kind / "tower"
        load_edit(base_model(folder), made[kind])  # untampered, it loads
    return made


def base_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def shape_of(model: Any) -> tuple[list[str], list[str]]:
    """What loading an edit may change: the module classes and the parameter names."""
    return [type(m).__name__ for m in model.modules()], [name for name, _ in model.named_parameters()]


def load_refused(saved: dict[str, Path], edit: Path, file: Path, key: str | None) -> str:
    """Load `edit` on a fresh base model: the one-line error (file, key, expected, found, fix); the model
    is left without hooks and without wrapped modules."""
    model = base_model(saved["model"])
    before = shape_of(model)
    with pytest.raises(FactEditError) as caught:
        load_edit(model, edit)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{file}: "), text
    assert (f"key '{key}': " in text) if key else ": key '" not in text, text
    assert "expected " in text and ", found " in text and ". Fix: " in text, text
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert shape_of(model) == before
    return text


def copied(saved: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    edit = tmp_path / "edit"
    shutil.copytree(saved[kind], edit)
    return edit


def test_saved_adapter_files_get_the_umask_modes(saved) -> None:
    for kind in ("peft", "gated"):
        files = [p for p in saved[kind].rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        modes = {str(p.relative_to(saved[kind])): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
        assert set(modes.values()) == {oct(0o666 & ~UMASK)}, modes


def outside_names(edit: Path, elsewhere: Path) -> list[str]:
    """Adapter names that lead out of the edit's folder to a valid adapter: absolute, '..', a link."""
    (edit / "linked").symlink_to(elsewhere / "learn")
    return [str(elsewhere / "learn"), f"../{elsewhere.name}/learn", "linked"]


@pytest.mark.parametrize("way", ["absolute", "dot-dot", "link"])
def test_an_adapter_name_that_leads_outside_the_edit_is_refused(saved, tmp_path, way) -> None:
    edit = copied(saved, "peft", tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(saved["peft"], elsewhere)
    name = outside_names(edit, elsewhere)[["absolute", "dot-dot", "link"].index(way)]
    manifest = json.loads((edit / "manifest.json").read_text())
    manifest["adapters"] = [{"name": name, "path": name}]
    (edit / "manifest.json").write_text(json.dumps(manifest))
    text = load_refused(saved, edit, edit / "manifest.json", "adapters[0].name")
    assert "outside" in text and str(elsewhere) not in text.split("found")[1]


GATE_TAMPERING: dict[str, tuple[Callable[[dict], Any], str | None]] = {
    "format as text": (lambda g: g.update(format="1"), "format"),
    "no method": (lambda g: g.update(method=None), "method"),
    "stages not a list": (lambda g: g.update(stages="learn"), "stages"),
    "the root module": (lambda g: g.update(modules=[""]), "modules[0]"),
    "a module of another kind": (lambda g: g.update(modules=["model.layers.0.mlp"]), "modules[0]"),
    "no such module": (lambda g: g.update(modules=["model.layers.9.mlp.down_proj"]), "modules[0]"),
    "modules missing": (lambda g: g.pop("modules"), "modules"),
    "feedforward outside modules": (lambda g: g.update(feedforward=["lm_head"]), "feedforward[0]"),
    "patterns of text": (lambda g: g.update(patterns=[["Eiffel"]]), "patterns[0]"),
    "patterns not a list": (lambda g: g.update(patterns={"a": 1}), "patterns"),
    "unknown reach": (lambda g: g.update(reach="everywhere"), "reach"),
    "an unknown key": (lambda g: g.update(hooks=True), "hooks"),
}


def gate_changed(saved: dict[str, Path], tmp_path: Path, kind: str, change: Callable[[dict], Any]) -> tuple[Path, Path]:
    """A copy of the saved `kind` edit whose gate.json `change` alters: (the edit's folder, its gate.json)."""
    edit = copied(saved, kind, tmp_path)
    path = edit / "subject-gains" / "gate.json"
    gate = json.loads(path.read_text())
    change(gate)
    path.write_text(json.dumps(gate))
    return edit, path


@pytest.mark.parametrize("tampering", list(GATE_TAMPERING))
def test_a_tampered_gate_is_refused_before_any_hook(saved, tmp_path, tampering) -> None:
    change, key = GATE_TAMPERING[tampering]
    edit, path = gate_changed(saved, tmp_path, "gated", change)
    load_refused(saved, edit, path, key)


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe not text", b"[" * 100_000])
def test_a_gate_that_is_no_mapping_or_no_json_is_refused(saved, tmp_path, content) -> None:
    edit = copied(saved, "gated", tmp_path)
    path = edit / "subject-gains" / "gate.json"
    path.write_bytes(content)
    load_refused(saved, edit, path, None)


def _set(tensors: dict[str, Any], key: str, value: Any) -> str:
    tensors[key] = value
    return key


def _set_item(tensors: dict[str, Any], key: str, index: int, value: float) -> str:
    tensors[key][index] = value
    return key


# each change of gains.safetensors, given its tensors and the key of one gain: the key the error names
GAINS_TAMPERING: dict[str, Callable[[dict[str, Any], str], str]] = {
    "a NaN gain": lambda t, k: _set_item(t, k, 0, float("nan")),
    "an infinite gain": lambda t, k: _set_item(t, k, 1, float("inf")),
    "a gain one too long": lambda t, k: _set(t, k, torch.ones(len(t[k]) + 1)),
    "a gain of whole numbers": lambda t, k: _set(t, k, t[k].to(torch.int32)),
    "a gain of two dimensions": lambda t, k: _set(t, k, t[k][None]),
    "a gain missing": lambda t, k: (t.pop(k), k)[1],
    "a gain for another module": lambda t, k: _set(t, k.split("|")[0] + "|lm_head", torch.ones(3)),
    "word flags as floats": lambda t, k: _set(t, WORD_FLAGS_KEY, t[WORD_FLAGS_KEY].float()),
    "word flags out of range": lambda t, k: _set_item(t, WORD_FLAGS_KEY, 0, 200),
}


def tensors_changed(
    saved: dict[str, Path], tmp_path: Path, kind: str, change: Callable[[dict], Any]
) -> tuple[Path, Path, Any]:
    """A copy of the saved `kind` edit whose gains.safetensors `change` alters: (the edit's folder, the
    file, what `change` returned)."""
    from safetensors.torch import load_file, save_file

    edit = copied(saved, kind, tmp_path)
    path = edit / "subject-gains" / "gains.safetensors"
    tensors = load_file(str(path))
    returned = change(tensors)
    save_file(tensors, str(path))
    return edit, path, returned


@pytest.mark.parametrize("tampering", list(GAINS_TAMPERING))
def test_tampered_gains_are_refused_before_any_hook(saved, tmp_path, tampering) -> None:
    def change(tensors: dict[str, Any]) -> str:
        return GAINS_TAMPERING[tampering](tensors, sorted(k for k in tensors if k != WORD_FLAGS_KEY)[0])

    edit, path, key = tensors_changed(saved, tmp_path, "gated", change)
    load_refused(saved, edit, path, key)


def test_a_gains_file_that_is_no_safetensors_is_refused(saved, tmp_path) -> None:
    edit = copied(saved, "gated", tmp_path)
    path = edit / "subject-gains" / "gains.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    load_refused(saved, edit, path, None)


def test_a_broken_peft_adapter_leaves_the_model_as_it_was(saved, tmp_path) -> None:
    """The first adapter loads, the second is cut short: its error in one line, the first one taken off."""
    edit = copied(saved, "peft", tmp_path)
    names = [a["name"] for a in json.loads((edit / "manifest.json").read_text())["adapters"]]
    weights = edit / names[-1] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    load_refused(saved, edit, edit / names[-1], None)


def test_a_saved_router_loads_back_as_it_was_saved(saved) -> None:
    from safetensors.torch import load_file

    gate = json.loads((saved["routed"] / "subject-gains" / "gate.json").read_text())
    references = load_file(str(saved["routed"] / "subject-gains" / "gains.safetensors"))[ROUTER_KEY]
    edit = load_subject_gains(base_model(saved["model"]), saved["routed"] / "subject-gains")
    try:
        assert edit.router is not None and edit.router.layer == gate["router"]["layer"] == 0
        assert edit.router.threshold == gate["router"]["threshold"]
        assert references.shape[0] == gate["router"]["references"] == 2  # the prompt, behind "" and a prefix
        assert torch.allclose(edit.router.references, references)
    finally:
        edit.remove()


def _router_set(gate: dict[str, Any], key: str, value: Any) -> None:
    gate["router"][key] = value


ROUTER_TAMPERING: dict[str, tuple[Callable[[dict], Any], str]] = {
    "router not a mapping": (lambda g: g.update(router=3), "router"),
    "a router key missing": (lambda g: g["router"].pop("threshold"), "router"),
    "a layer past the model's": (lambda g: _router_set(g, "layer", 99), "router.layer"),
    "a threshold past 1": (lambda g: _router_set(g, "threshold", 2.0), "router.threshold"),
    "references as text": (lambda g: _router_set(g, "references", "2"), "router.references"),
    "more references than saved": (lambda g: _router_set(g, "references", 3), ROUTER_KEY),
}


@pytest.mark.parametrize("tampering", list(ROUTER_TAMPERING))
def test_a_tampered_router_is_refused_before_any_hook(saved, tmp_path, tampering) -> None:
    change, key = ROUTER_TAMPERING[tampering]
    edit, path = gate_changed(saved, tmp_path, "routed", change)
    file = path.with_name("gains.safetensors") if key == ROUTER_KEY else path
    load_refused(saved, edit, file, key)


ROUTER_STATES_TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "reference states missing": lambda t: t.pop(ROUTER_KEY),
    "reference states one narrower": lambda t: t.update({ROUTER_KEY: t[ROUTER_KEY][:, :-1].contiguous()}),
    "a NaN reference": lambda t: t[ROUTER_KEY].__setitem__((0, 0), float("nan")),
}


@pytest.mark.parametrize("tampering", list(ROUTER_STATES_TAMPERING))
def test_tampered_reference_states_are_refused_before_any_hook(saved, tmp_path, tampering) -> None:
    edit, path, _ = tensors_changed(saved, tmp_path, "routed", ROUTER_STATES_TAMPERING[tampering])
    load_refused(saved, edit, path, ROUTER_KEY)
