"""A shipped edit: the adapters peft wrote, plus a manifest of where they came from and what they did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..edit.saved_gains import SAVED_FOLDER, file_inside, kind_of, read_saved_json, refused
from ..edit.subject_gains import SubjectGainEdit, load_subject_gains
from ..infra.files import write_atomic
from .records import CaseRecord, ManyRecord

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from .saved_sequence import SavedSequence

MANIFEST_FILE = "manifest.json"
PEFT_CONFIG = "adapter_config.json"  # what peft writes in each adapter's folder
MANIFEST_VERSION = 1
LOAD_SNIPPET = (
    "from peft import PeftModel\n"
    "from transformers import AutoModelForCausalLM\n"
    "base = AutoModelForCausalLM.from_pretrained(MODEL)\n"
    "edited = PeftModel.from_pretrained(base, DIR + '/{first}', adapter_name='{first}')\n"
    "{more}"
    "edited.base_model.set_adapter({names})  # every stage active, in this order\n"
)


GATED_SNIPPET = (
    "from pytest_factedit.edit.subject_gains import load_subject_gains\n"
    "from transformers import AutoModelForCausalLM\n"
    "base = AutoModelForCausalLM.from_pretrained(MODEL)\n"
    "edit = load_subject_gains(base, DIR + '/{folder}')  # gains on the subject's tokens; edit.remove() undoes\n"
)


def load_snippet(names: list[str]) -> str:
    """Python that loads the saved stages: with peft alone, or (subject-gated gains) with this package."""
    if names == [SAVED_FOLDER]:
        return GATED_SNIPPET.format(folder=SAVED_FOLDER)
    more = "".join(f"edited.load_adapter(DIR + '/{n}', adapter_name='{n}')\n" for n in names[1:])
    return LOAD_SNIPPET.format(first=names[0], more=more, names=names)


def _case_part(record: CaseRecord) -> dict[str, Any]:
    return {
        "case_id": record["case_id"],
        "case_file": record["case_file"],
        "old": record["old"],
        "new": record["new"],
        "metrics": {
            k: {"value": v["value"], "threshold": v["threshold"], "passed": v["passed"]}
            for k, v in record["metrics"].items()
        },
        "answers": [
            {k: a.get(k) for k in ("group", "prompt", "expected", "base", "edited")} for a in record["answers"]
        ],
    }


def _run_part(record: CaseRecord) -> dict[str, Any]:
    return {
        "model": record["model"],
        "device": record["device"],
        "dtype": record["dtype"],
        "method": {"name": record["method"]["name"], "settings": record["method"]["settings"]},
        "run_id": record["run_id"],
        "seed": record["seed"],
        "versions": record["versions"],
    }


def _adapters_part(names: list[str], error: str | None) -> dict[str, Any]:
    return {"adapters": [{"name": n, "path": n} for n in names], "load": load_snippet(names) if names else error}


def write_manifest(out_dir: Path, record: CaseRecord) -> Path:
    """manifest.json next to the adapters: case, model id and weights hash, method, modules, metrics, versions."""
    adapters = record["adapters"] or {}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        **_case_part(record),
        **_run_part(record),
        "target_modules": record["target_modules"],
        "feedforward_modules": record["feedforward_modules"],
        **_adapters_part(adapters.get("names", []), adapters.get("error")),
    }
    path = out_dir / MANIFEST_FILE
    write_atomic(path, json.dumps(manifest, indent=1) + "\n")
    return path


def write_batch_manifest(out_dir: Path, block: ManyRecord, records: list[CaseRecord]) -> Path:
    """manifest.json of a batch adapter (`--factedit-mode batch`): every case it holds, with its metrics."""
    batch = block["adapter"]
    adapters = batch.get("adapters") or {}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "mode": "batch",
        "cases": [_case_part(r) for r in records],
        **_run_part(records[0]),
        "batch_metrics": block["metrics"],
        "target_modules": batch["target_modules"],
        "feedforward_modules": batch["feedforward_modules"],
        **_adapters_part(adapters.get("names", []), adapters.get("error")),
    }
    path = out_dir / MANIFEST_FILE
    write_atomic(path, json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """out_dir/manifest.json, read as untrusted input: a mapping, or SavedEditError."""
    path = out_dir / MANIFEST_FILE
    manifest = read_saved_json(path)
    if not isinstance(manifest, dict):
        raise refused(path, None, "a mapping (the manifest of a saved edit)", kind_of(manifest))
    return manifest


def checked_folder(path: Path, key: str, name: str, out_dir: Path, fix: str) -> Path:
    """out_dir/name, refused unless `name` is one folder name that resolves to a folder inside `out_dir`
    (no absolute path, no '..', no '/', no link that leads out)."""
    base = out_dir.resolve()
    target = (out_dir / name).resolve()
    if Path(name).name != name or name == ".." or not target.is_relative_to(base) or target == base:
        found = "a str that leads outside the edit's folder (an absolute path, '..', a '/' or a link)"
        raise refused(path, key, f"the name of a folder inside {base}", found, fix)
    if not target.is_dir():
        raise refused(path, key, f"a folder of that name in {base}", "nothing there", "copy the whole edit folder")
    return out_dir / name


def adapter_names(out_dir: Path) -> list[str]:
    """The adapters manifest.json lists, each checked to name a folder inside `out_dir` (no absolute path,
    no '..', no link that leads out), so loading an edit reads nothing from elsewhere."""
    path = out_dir / MANIFEST_FILE
    entries = read_manifest(out_dir).get("adapters")
    if not isinstance(entries, list) or not entries:
        raise refused(path, "adapters", "a list of one or more {name: FOLDER} entries", kind_of(entries))
    names: list[str] = []
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else entry
        key = f"adapters[{index}].name"
        if not isinstance(name, str) or not name or name in names:
            found = "a repeated name" if name in names else "an empty str" if name == "" else kind_of(name)
            raise refused(path, key, "a distinct folder name", found)
        checked_folder(path, key, name, out_dir, "list only the adapter folders")
        names.append(name)
    return names


def checked_adapter_folder(folder: Path) -> None:
    """A peft adapter folder: its adapter_config.json there, and no file in it a link that leads out."""
    if not (folder / PEFT_CONFIG).is_file():
        raise refused(folder / PEFT_CONFIG, None, "peft's adapter config", "nothing", "copy the whole edit folder")
    for path in folder.iterdir():
        file_inside(path)


def _without_adapters(model: PreTrainedModel, trainable: dict[str, bool], had_config: bool) -> None:
    """Undo a peft load that failed half-way: every wrapped module back as it was, and the flags peft set."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    for name, param in model.named_parameters():
        param.requires_grad_(trainable.get(name, param.requires_grad))
    if not had_config and hasattr(model, "peft_config"):
        del model.peft_config


def peft_loaded(model: PreTrainedModel, out_dir: Path, names: list[str]) -> PeftModel:
    """Every adapter loaded and active; on any error the model is left as it was, and the error is one line."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    had_config = hasattr(model, "peft_config")
    for name in names:
        checked_adapter_folder(out_dir / name)
    folder = out_dir / names[0]
    try:  # the annotation: peft 0.22 types from_pretrained as Any
        edited: PeftModel = PeftModel.from_pretrained(model, str(folder), adapter_name=names[0])
        for name in names[1:]:
            folder = out_dir / name
            edited.load_adapter(str(folder), adapter_name=name)
        tuner = edited.base_model
        if not isinstance(tuner, BaseTuner):  # LoRA and IA3 adapters come with one; a prompt-learning one does not
            raise TypeError(f"peft holds the adapters in a {type(tuner).__name__}, not a LoRA or IA3 tuner")
        tuner.set_adapter(names)
    except Exception as exc:
        _without_adapters(model, trainable, had_config)
        found = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        raise refused(folder, None, "a peft adapter saved for this model", found) from exc
    edited.eval()
    return edited


def load_edit(model: PreTrainedModel, out_dir: Path) -> PeftModel | SubjectGainEdit | SavedSequence:
    """The base `model` with a saved edit's adapters loaded and all active (a PeftModel), or, for
    subject-gated gains, the model hooked with them (the handle's `remove()` undoes it); a saved
    sequence (DIR/sequence/) puts every edit back in order (report/saved_sequence.py).

    Every file is checked first (SavedEditError, one line); on an error the model is left as it was."""
    out_dir = Path(out_dir)
    if read_manifest(out_dir).get("mode") == "sequence":
        from .saved_sequence import load_sequence  # it builds on this module

        return load_sequence(model, out_dir)
    names = adapter_names(out_dir)
    if names == [SAVED_FOLDER]:
        return load_subject_gains(model, out_dir / SAVED_FOLDER)
    return peft_loaded(model, out_dir, names)
