"""A saved sequence (`--factedit-mode sequential --factedit-save-adapters DIR`): every edit in its own
folder under DIR/sequence/, and a manifest that lists them in order, read back as untrusted input.

Loading one puts the edits back on a base model exactly as the sequence kept them: subject-gated
gains behind the model's one shared gate (edit/gate_registry.py, in the saved order, which is the order
their factors apply in), peft adapters merged into the weights one after another, in the saved order.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..cases.ids import name_problem, sequence_folder
from ..edit.saved_gains import SAVED_FOLDER, kind_of, refused
from ..edit.subject_gains import SubjectGainEdit, load_subject_gains
from ..errors import SavedEditError
from ..infra.files import write_atomic
from .manifest import (
    MANIFEST_FILE,
    MANIFEST_VERSION,
    adapter_names,
    checked_adapter_folder,
    checked_folder,
    peft_loaded,
    read_manifest,
    write_batch_manifest,
    write_manifest,
)
from .records import CaseRecord, ManyRecord

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

MAX_SEQUENCE_EDITS = 100_000  # edits one saved sequence may list (the scale benchmark runs 1,000)
SEQUENCE_SNIPPET = (
    "from pytest_factedit import load_edit\n"
    "from transformers import AutoModelForCausalLM\n"
    "base = AutoModelForCausalLM.from_pretrained(MODEL)\n"
    "edit = load_edit(base, DIR)  # every edit of the sequence, in order; edit.remove() takes them all off\n"
)
NOT_SAVED_FIX = "run the sequence again with an editor that saves its edits (ia3-two-stage, lora)"


def _edit_entry(record: CaseRecord) -> dict[str, Any]:
    """What the sequence manifest says of one edit: where it is, whether it could be saved, and its
    prompts' answers once every edit of the sequence was in place."""
    place = record["sequence"]
    adapters = record.get("adapters") or {}
    saved = bool(adapters.get("names"))
    return {
        "folder": sequence_folder(place["position"], record["case_id"]),
        "position": place["position"],
        "case_id": record["case_id"],
        "method": record["method"]["name"],
        "saved": saved,
        **({} if saved else {"error": adapters.get("error") or "the edit was not saved"}),
        "prompts": [a["prompt"] for a in record["answers"] if a["group"] == "prompts"],
        "answers_at_end": place.get("answers_at_end", []),
    }


def write_many_manifest(out_dir: Path, mode: str, block: ManyRecord, records: list[CaseRecord]) -> None:
    """The manifest of what sequential or batch mode saved under `out_dir` (none when nothing was)."""
    ran = [r for r in records if r["status"] == "ran"]
    if mode == "sequential":
        write_sequence_manifest(out_dir, block, sorted(ran, key=lambda r: r["sequence"]["position"]))
    elif ((block.get("adapter") or {}).get("adapters") or {}).get("names"):
        write_batch_manifest(out_dir, block, ran)


def write_sequence_manifest(out_dir: Path, block: ManyRecord, kept: list[CaseRecord]) -> Path | None:
    """DIR/sequence/manifest.json listing every edit the sequence kept (`kept`: the records of the cases that
    ran, in order), and each saved edit's own manifest.json in its folder, so it loads alone too; None when
    no edit ran."""
    if not kept:
        return None
    entries = [_edit_entry(r) for r in kept]
    for entry, record in zip(entries, kept):
        if entry["saved"]:
            write_manifest(out_dir / entry["folder"], record)
    first = kept[0]
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "mode": "sequence",
        "model": first["model"],
        "device": first["device"],
        "dtype": first["dtype"],
        "run_id": first["run_id"],
        "versions": first["versions"],
        "sequence_metrics": block["metrics"],
        "edits": entries,
        "load": SEQUENCE_SNIPPET if all(e["saved"] for e in entries) else "not loadable: " + NOT_SAVED_FIX,
    }
    path = out_dir / MANIFEST_FILE
    write_atomic(path, json.dumps(manifest, indent=1) + "\n")
    return path


def _unsaved(path: Path, key: str, entry: dict[str, Any]) -> SavedEditError:
    """The refusal for an edit whose editor could not save it (named by its case id when that is a safe name)."""
    case_id = entry.get("case_id")
    case = f" (case {case_id})" if name_problem(case_id) is None else ""
    found = f"an edit{case} its editor could not save (it changes weights in place)"
    return refused(path, key, "every edit of the sequence saved", found, NOT_SAVED_FIX)


def sequence_folders(out_dir: Path) -> list[tuple[Path, list[str]]]:
    """Every edit the sequence manifest lists, in order: its folder (one name, inside `out_dir`, listed
    once) and the adapters its own manifest lists, all checked before anything is loaded."""
    path = out_dir / MANIFEST_FILE
    entries = read_manifest(out_dir).get("edits")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_SEQUENCE_EDITS:
        expected = f"a list of 1 to {MAX_SEQUENCE_EDITS:,} edits, in the order they were made"
        raise refused(path, "edits", expected, kind_of(entries) if not isinstance(entries, list) else "another size")
    folders: list[tuple[Path, list[str]]] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        key = f"edits[{index}]"
        if not isinstance(entry, dict):
            raise refused(path, key, "a mapping with `folder` and `saved`", kind_of(entry))
        if entry.get("saved") is not True:
            raise _unsaved(path, key, entry)
        name = entry.get("folder")
        if not isinstance(name, str) or not name or name in seen:
            found = "a repeated name" if name in seen else "an empty str" if name == "" else kind_of(name)
            raise refused(path, f"{key}.folder", "a distinct folder name", found)
        seen.add(name)
        folder = checked_folder(path, f"{key}.folder", name, out_dir, "list only the edits' folders")
        names = adapter_names(folder)
        if names != [SAVED_FOLDER]:
            for adapter in names:
                checked_adapter_folder(folder / adapter)
        folders.append((folder, names))
    return folders


@dataclass
class SavedSequence:
    """A saved sequence put back on `model`; `remove()` takes every edit off and restores the base weights
    bit for bit (the handle is a context manager, as a single loaded edit is)."""

    model: PreTrainedModel
    gated: list[SubjectGainEdit] = field(default_factory=list)  # behind the shared gate, in the order they went on
    base_weights: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = field(default_factory=dict)
    trainable: dict[str, bool] = field(default_factory=dict)  # requires_grad before (peft changes it)
    had_peft_config: bool = False
    removed: bool = False

    def __enter__(self) -> SavedSequence:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.remove()

    def merge(self, folder: Path, names: list[str]) -> None:
        """One edit's peft adapters loaded and merged into the weights (as the sequence merged them), the
        base values of every weight they change kept first."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        edited: PeftModel = peft_loaded(self.model, folder, names)
        for module in edited.modules():
            if isinstance(module, BaseTunerLayer):
                for param in module.get_base_layer().parameters():
                    self.base_weights.setdefault(id(param), (param, param.detach().clone()))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unmerge result can be inaccurate")
            edited.merge_and_unload(adapter_names=names)

    def remove(self) -> PreTrainedModel:
        """Every gated edit off (the last first; the shared gate's hooks with the last one), every merged
        weight back to its base value, peft's flags undone."""
        import torch

        if not self.removed:
            self.removed = True
            for edit in reversed(self.gated):
                edit.remove()
            with torch.no_grad():
                for param, base in self.base_weights.values():
                    param.copy_(base)
            for name, param in self.model.named_parameters():
                param.requires_grad_(self.trainable.get(name, param.requires_grad))
            if not self.had_peft_config and hasattr(self.model, "peft_config"):
                del self.model.peft_config
        return self.model


def load_sequence(model: PreTrainedModel, out_dir: Path) -> SavedSequence:
    """Every edit of a saved sequence back on the base `model`, in order, all active: gated gains behind
    the model's shared gate, peft adapters merged one after another. Every folder and manifest is checked first;
    an edit's files that fail their checks (SavedEditError, one line) take every earlier edit off again."""
    folders = sequence_folders(out_dir)
    sequence = SavedSequence(
        model,
        trainable={name: p.requires_grad for name, p in model.named_parameters()},
        had_peft_config=hasattr(model, "peft_config"),
    )
    try:
        for folder, names in folders:
            if names == [SAVED_FOLDER]:
                sequence.gated.append(load_subject_gains(model, folder / SAVED_FOLDER))
            else:
                sequence.merge(folder, names)
    except BaseException:
        sequence.remove()
        raise
    return sequence
