"""The run's model: loaded once, kept equal to the base between cases, and what every record says about it."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ..errors import FactEditError
from ..infra.cpu import cpuinfo_field
from ..model.weights import weights_checksum

if TYPE_CHECKING:
    from ..model.load import LoadedModel
    from ..model.probe_cache import BaseAnswerCache
    from .options import Options

BASE_RELOADED = "the base weights differed after this case, so the base model was reloaded for the next case"
_VERSIONED = ("pytest-factedit", "torch", "transformers", "peft", "pytest", "gguf")


def machine_info() -> dict[str, str | None]:
    """The machine a run's answers hold for: the CPU's model, and the instruction set torch uses on it."""
    cpu = cpuinfo_field("model name")
    torch = sys.modules.get("torch")
    capability = torch.backends.cpu.get_cpu_capability() if torch is not None else None
    return {"cpu": cpu or platform.processor() or None, "cpu_capability": capability, "platform": platform.machine()}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_facts(lm: LoadedModel) -> dict[str, Any]:
    """What every record of the run repeats about the loaded model and where it runs."""
    return {
        "model": {
            "name": lm.spec.name,
            "kind": lm.spec.kind,
            "source": lm.spec.source,
            "weights_hash": lm.weights_hash,
            "class": type(lm.model).__name__,
        },
        "device": lm.device,
        "dtype": lm.dtype,
        "versions": library_versions(),
        "machine": machine_info(),
        "load_seconds": round(lm.load_seconds, 3),
        "memory_estimate": lm.memory.line() if lm.memory else None,
        "load_notes": list(lm.notes),
        "conversion_seconds": None if lm.conversion_seconds is None else round(lm.conversion_seconds, 3),
    }


class ModelHolder:
    """Loads `--model` once and keeps it the base model: the whole model's checksum is taken at load, and
    a model whose weights no longer match it is reloaded, so no case is measured on what another left.

    `check_weights` sees each loaded model's weights hash before it is used, and raises to refuse it
    (a baseline made with other weights). `facts` holds what records repeat about the model: its name
    alone until it loads.
    """

    def __init__(self, options: Options, check_weights: Callable[[str], None]) -> None:
        self.options = options
        self.check_weights = check_weights
        self.lm: LoadedModel | None = None
        self.cache: BaseAnswerCache | None = None  # the base model's answers: a reload gives the same weights
        self.base_checksum = ""
        self.worker: tuple[int, int] | None = None  # xdist worker: (its number, how many workers)
        self.facts: dict[str, Any] = {"model": {"name": options.model}, "device": None, "dtype": None, "versions": {}}

    def load(self) -> LoadedModel:
        """The model, loaded on first use; raises ModelLoadError with what was tried and the fix."""
        if self.lm is None:
            from ..model.load import load, share_machine
            from ..model.probe_cache import probe_folder
            from .probing import BaseAnswerCache

            if self.worker is not None:
                self.facts["worker"] = share_machine(*self.worker)
            lm = load(self.options.model, **self.options.load_settings())
            self.check_weights(lm.weights_hash)
            self.lm = lm
            self.base_checksum = weights_checksum(lm.model)
            self.cache = self.cache or BaseAnswerCache(None if self.options.fresh_probes else probe_folder())
            self.facts.update(model_facts(lm))
        return self.lm

    def reload_if_changed(self, changed: bool = False) -> bool:
        """Reload the base model when the loaded one's weights differ from it (or `changed` says they do);
        True when it did. With no model loaded there is nothing to check."""
        if self.lm is None or (not changed and weights_checksum(self.lm.model) == self.base_checksum):
            return False
        self.lm = None
        self.load()
        return True

    def restore_base(self, changed: bool = False) -> str:
        """After a case: '' while the model is still the base; else the base is reloaded, and the note for
        the case's record says so (and why, when the reload failed)."""
        try:
            return BASE_RELOADED if self.reload_if_changed(changed) else ""
        except FactEditError as exc:
            return f"{BASE_RELOADED} (the reload failed: {exc})"
