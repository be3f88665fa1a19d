"""A shipped edit: the adapters peft wrote, plus a manifest of where they came from and what they did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..edit.subject_gains import SAVED_FOLDER, SubjectGainEdit, load_subject_gains
from ..errors import FactEditError
from .files import write_atomic
from .records import CaseRecord, ManyRecord

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

MANIFEST_FILE = "manifest.json"
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


def load_edit(model: PreTrainedModel, out_dir: Path) -> PeftModel | SubjectGainEdit:
    """The base `model` with a saved edit's adapters loaded and all active (a PeftModel), or, for
    subject-gated gains, the model hooked with them (the handle's `remove()` undoes it)."""
    from peft import PeftModel

    names = [a["name"] for a in json.loads((Path(out_dir) / MANIFEST_FILE).read_text())["adapters"]]
    if not names:
        raise FactEditError("the manifest lists no adapters", path=Path(out_dir) / MANIFEST_FILE, key="adapters")
    if names == [SAVED_FOLDER]:
        return load_subject_gains(model, Path(out_dir) / SAVED_FOLDER)
    edited = PeftModel.from_pretrained(model, str(Path(out_dir) / names[0]), adapter_name=names[0])
    for name in names[1:]:
        edited.load_adapter(str(Path(out_dir) / name), adapter_name=name)
    edited.base_model.set_adapter(names)
    edited.eval()
    return edited
