"""The converted-model cache: a GGUF (the embedded one, or the user's) de-quantized once into a safetensors
folder, with a manifest of sizes and hashes that is checked at every load.

One process converts at a time (a lock file in the cache); what a killed conversion left behind is swept
by the next one; a damaged cache is converted again, and the user is told.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..infra.events import (
    ASSEMBLING,
    CONVERT,
    CONVERT_END,
    CONVERT_START,
    DEQUANTIZING,
    emit,
)
from ..infra.files import default_mode
from . import embedded
from .conversion import convert_directly, convert_through_model
from .embedded import sha256_file
from .spec import EMBEDDED_FILE, ModelSpec, cache_dir

MANIFEST_FILE = "factedit-cache.json"
MANIFEST_VERSION = 1
LOCK_FILE = ".convert.lock"
# What a conversion leaves while it runs, and only that: swept by the next conversion (under the lock).
_STAGING = re.compile(r"\..+-[0-9a-f]{16}\.[A-Za-z0-9_]{8}")  # mkdtemp of ".<folder>."
# In gguf/, only what `_convert_locked` assembles (`<pid>-<embedded file name>`) and the temp files of
# `embedded.assemble_embedded_gguf` (`.<name>.<pid>.tmp`): a GGUF of the user's own there is never swept.
_GGUF_TEMPS = re.compile(rf"\d+-{re.escape(EMBEDDED_FILE)}|\..+\.gguf\.\d+\.tmp")


def _entry(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}


def write_manifest(folder: Path, source_sha256: str) -> dict[str, Any]:
    """Sizes, times and hashes of every file of a converted folder, and one hash of its weights."""
    entries = {p.name: _entry(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    weights = hashlib.sha256()
    for name, entry in entries.items():
        if name.endswith(".safetensors"):
            weights.update(f"{name}:{entry['sha256']};".encode())
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "source_sha256": source_sha256,
        "files": entries,
        "weights_sha256": weights.hexdigest(),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def cache_problem(folder: Path) -> str | None:
    """Why a converted folder cannot be used as it is (None when it can).

    Every listed file must have its recorded size; one whose modification time changed is hashed again.
    """
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        entries = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "it has no readable manifest" if folder.exists() else "it does not exist yet"
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return f"{name} is missing or has another size than when it was written"
        if path.stat().st_mtime_ns != entry["mtime_ns"] and sha256_file(path) != entry["sha256"]:
            return f"{name} has changed since it was written"
    return None


def _weights_hash(folder: Path) -> str:
    return str(json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))["weights_sha256"])


def sweep(root: Path) -> list[Path]:
    """Remove what killed conversions left in the cache: staging folders and assembled GGUFs. Under the lock."""
    swept = [p for p in root.iterdir() if p.is_dir() and _STAGING.fullmatch(p.name)] if root.is_dir() else []
    gguf_dir = root / "gguf"
    if gguf_dir.is_dir():
        swept += [p for p in gguf_dir.iterdir() if p.is_file() and _GGUF_TEMPS.fullmatch(p.name)]
    for path in swept:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return swept


def _tensors_as_events(iterable: Iterable[Any], *_: Any, **__: Any) -> Iterator[Any]:
    """Stands in for tqdm over a GGUF's tensors: the same items, told as CONVERT events instead of a bar."""
    total = len(iterable) if isinstance(iterable, Sized) else None
    emit(CONVERT, DEQUANTIZING, 0, total)
    for done, item in enumerate(iterable, 1):
        yield item
        emit(CONVERT, DEQUANTIZING, done, total)


@contextmanager
def _bars_as_events() -> Iterator[None]:
    """No progress bar of transformers prints during the block (loading, de-quantizing, writing shards); the
    GGUF tensor loop emits events instead.

    transformers de-quantizes a GGUF under a bar of its own ("Converting and de-quantizing GGUF tensors...",
    `tqdm.auto.tqdm` imported in modeling_gguf_pytorch_utils), which its `disable_progress_bar()` does not
    reach; that module's `tqdm` is swapped for the block (process-wide: a conversion is one thread's work).
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars_were_on, bar = hf_logging.is_progress_bar_enabled(), getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    # that module imports tqdm without exporting it, which mypy reads as no attribute to set
    if bar is not None:
        gguf_utils.tqdm = _tensors_as_events  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar  # type: ignore[attr-defined]
        if bars_were_on:
            hf_logging.enable_progress_bar()


def dequantize(gguf_path: Path, out: Path) -> None:
    """De-quantize a GGUF into `out` as a safetensors model folder with its tokenizer: straight from its
    tensors where transformers' GGUF mapping gives exactly the model's weights, else through a whole model."""
    with _bars_as_events():
        if not convert_directly(gguf_path, out):
            convert_through_model(gguf_path, out)


def _convert(gguf_path: Path, out_dir: Path, source_sha256: str) -> None:
    """De-quantize into a staging folder with its manifest, then rename it into place (readable by others)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        dequantize(gguf_path, staging)
        for path in staging.iterdir():
            os.chmod(path, default_mode(folder=path.is_dir()))
        write_manifest(staging, source_sha256)
        os.chmod(staging, default_mode(folder=True))
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _source(spec: ModelSpec) -> tuple[str, Path | None, str]:
    """(sha256 of the GGUF, the user's GGUF file or None for the embedded one, the cache folder's name)."""
    if spec.kind == "embedded":
        return embedded.EMBEDDED_SHA256, None, f"gemma3-270m-{embedded.EMBEDDED_SHA256[:16]}"
    gguf = Path(spec.source).expanduser()
    if not gguf.is_file():
        raise ModelLoadError(
            f"--model {spec.name}: tried the GGUF file {gguf}, which does not exist. "
            "Fix: pass the path of an existing .gguf file."
        )
    sha = sha256_file(gguf)
    return sha, gguf, f"{gguf.stem}-{sha[:16]}"


def converted_dir(spec: ModelSpec) -> tuple[Path, float | None, str]:
    """The safetensors folder of an embedded/GGUF spec, converting once; (folder, seconds or None, weights hash).

    The weights hash is the manifest's hash of the safetensors files: it names the weights that load.
    """
    from filelock import FileLock

    root = cache_dir()
    sha, gguf, name = _source(spec)
    out_dir = root / name
    if cache_problem(out_dir) is None:
        return out_dir, None, _weights_hash(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / LOCK_FILE)):
        problem = cache_problem(out_dir)  # another process may have converted it while this one waited
        if problem is None:
            return out_dir, None, _weights_hash(out_dir)
        if out_dir.exists():
            print(
                f"pytest-factedit: converting {spec.name} again: the cached copy in {out_dir} is damaged ({problem})",
                file=sys.stderr,
            )
            shutil.rmtree(out_dir)
        sweep(root)
        started = time.perf_counter()
        _convert_locked(spec, gguf, root, out_dir, sha)
        return out_dir, time.perf_counter() - started, _weights_hash(out_dir)


def _convert_locked(spec: ModelSpec, gguf: Path | None, root: Path, out_dir: Path, sha: str) -> None:
    """Assemble the embedded GGUF (under a name of this process) if needed, and convert it."""
    emit(CONVERT_START, spec.name)
    if gguf is None:
        emit(CONVERT, ASSEMBLING)
    source = gguf or embedded.assemble_embedded_gguf(root / "gguf" / f"{os.getpid()}-{EMBEDDED_FILE}")
    try:
        _convert(source, out_dir, sha)
        emit(CONVERT_END, spec.name)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise unreadable_gguf(spec, source) or ModelLoadError(
            f"--model {spec.name}: converting {source} to safetensors failed: {type(exc).__name__}: {exc}. "
            "Fix: check that the `gguf` package is installed (pip install gguf) and that the "
            "file is a GGUF causal LM that transformers supports."
        ) from exc
    finally:
        if gguf is None:
            source.unlink(missing_ok=True)


def gguf_architecture(path: Path) -> str | None:
    """The `general.architecture` a GGUF file declares (None when the file cannot be read as GGUF)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.architecture")
        return bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else None
    except Exception:  # not a GGUF, or no gguf package: the caller's generic message applies
        return None


def unreadable_gguf(spec: ModelSpec, path: Path) -> ModelLoadError | None:
    """The error for a GGUF whose architecture this transformers cannot read, or None if that is not why."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    architecture = gguf_architecture(path)
    readable = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if architecture is None or architecture in readable:
        return None
    return ModelLoadError(
        f"--model {spec.name}: {path} is a GGUF of architecture {architecture!r}, which transformers "
        f"{transformers.__version__} cannot read from GGUF (it reads: {', '.join(sorted(readable))}). "
        "Fix: pass the original Hugging Face model (a folder with config.json and safetensors weights) with "
        f"--model, or a transformers version that lists {architecture!r} among its GGUF architectures."
    )
