"""What `--model` names: the embedded default, an alias, a .gguf file, a local folder or a hub id (no torch)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ModelLoadError

DEFAULT_MODEL = "gemma3-270m"
ALIASES: dict[str, str] = {
    "phi3": "microsoft/Phi-3-mini-4k-instruct",
    "phi3-mini": "microsoft/Phi-3-mini-4k-instruct",
}
EMBEDDED_FILE = "gemma-3-270m-q4_k_m.gguf"
CACHE_ENV = "FACTEDIT_CACHE"


@dataclass(frozen=True)
class ModelSpec:
    """What `--model` resolved to: the embedded model, a .gguf file, a local folder or a hub id."""

    name: str
    kind: Literal["embedded", "gguf", "local", "hub"]
    source: str


def resolve(name: str | None) -> ModelSpec:
    """Turn a `--model` value into a ModelSpec (no loading, no torch)."""
    name = (name or DEFAULT_MODEL).strip()
    if name == DEFAULT_MODEL:
        return ModelSpec(name, "embedded", EMBEDDED_FILE)
    source = ALIASES.get(name, name)
    path = Path(source).expanduser()
    if "/" not in source and path.suffix != ".gguf" and not path.exists():
        close = difflib.get_close_matches(name, [*ALIASES, DEFAULT_MODEL], n=1, cutoff=0.6)
        if close:
            raise ModelLoadError(
                f"--model {name}: not a model alias, a folder or a .gguf file; did you mean {close[0]!r}? "
                f"Aliases: {', '.join([DEFAULT_MODEL, *ALIASES])}. A Hugging Face id has the form org/name."
            )
    if path.suffix == ".gguf":
        return ModelSpec(name, "gguf", str(path))
    if path.is_dir():
        return ModelSpec(name, "local", str(path.resolve()))
    if source.startswith((".", "/", "~")) or os.sep in source and source.count("/") > 1:
        return ModelSpec(name, "local", str(path))
    return ModelSpec(name, "hub", source)


def cache_dir() -> Path:
    """Where converted models live: $FACTEDIT_CACHE, else the user cache dir."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pytest-factedit"))
