"""Loading a causal LM and its tokenizer for a run: device, dtype, and errors that say how to fix them."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError, shown
from .cache import converted_dir
from .spec import ALIASES, DEFAULT_MODEL, ModelSpec, resolve
from .weights import weights_fingerprint

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEVICES = ("auto", "cpu", "cuda")
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and the facts a report needs about it."""

    spec: ModelSpec
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: str
    dtype: str
    weights_hash: str
    load_seconds: float
    conversion_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def pick_device(requested: str = "auto") -> tuple[str, torch.dtype]:
    """(device, torch dtype): CUDA with bf16 when asked or available under auto, else CPU with fp32."""
    import torch

    if requested not in DEVICES:
        raise ModelLoadError(f"--factedit-device: expected auto, cpu or cuda, found {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "--factedit-device cuda was asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}). Use --factedit-device cpu or auto."
        )
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    return ("cuda", torch.bfloat16) if use_cuda else ("cpu", torch.float32)


def _hub_error(spec: ModelSpec, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    tried = [
        f"a local folder named {spec.source!r} (none exists)",
        f"the Hugging Face hub id {spec.source!r} in the local cache and online"
        + (" (HF_HUB_OFFLINE is set)" if offline else ""),
    ]
    if spec.name in ALIASES:
        tried.insert(0, f"the alias {spec.name!r} -> {spec.source!r}")
    return ModelLoadError(
        f"--model {spec.name}: could not load the model. Tried: "
        + "; ".join(tried)
        + f". Error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        f"Fix: on a machine with network run `huggingface-cli download {spec.source}` (or "
        f"`python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('{spec.source}')\"`) "
        "to fill the Hugging Face cache, or pass a local folder with --model /path/to/model, "
        f"or use the embedded default (--model {DEFAULT_MODEL})."
    )


def load(name: str | None = None, device: str = "auto", trust_remote_code: bool = False) -> LoadedModel:
    """Load the model named by `--model` onto the chosen device; raises ModelLoadError with a fix.

    A model folder's own Python code (`auto_map`) runs only with `trust_remote_code`.
    """
    try:
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ModelLoadError(f"pytest-factedit needs transformers: {exc}. Fix: pip install transformers") from exc
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _load(resolve(name), device, trust_remote_code)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _source(spec: ModelSpec) -> tuple[str, float | None, str | None]:
    """(what from_pretrained loads, seconds spent converting or None, a weights hash known without hashing)."""
    if spec.kind in ("embedded", "gguf"):
        folder, conversion_seconds, weights_hash = converted_dir(spec)
        return str(folder), conversion_seconds, weights_hash
    if spec.kind == "local" and not Path(spec.source).is_dir():
        raise ModelLoadError(
            f"--model {spec.name}: tried the local folder {spec.source}, which does not exist. "
            "Fix: pass a folder holding config.json and safetensors weights, a .gguf file, "
            f"a Hugging Face id, or use the default {DEFAULT_MODEL}."
        )
    return spec.source, None, None


def asks_for_its_own_code(source: str) -> bool:
    """Does a local model folder name Python code of its own (`auto_map`) for its model or tokenizer?"""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            if "auto_map" in json.loads((Path(source) / name).read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError):
            continue
    return False


def _from_pretrained(
    spec: ModelSpec, source: str, dtype: torch.dtype, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = (
            converted_tokenizer(Path(source))
            if spec.kind == "embedded"
            else AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        )
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        if spec.kind == "hub":
            raise _hub_error(spec, exc) from exc
        own_code = not trust_remote_code and asks_for_own_code_hint(source)
        raise ModelLoadError(
            f"--model {spec.name}: loading {source} failed: {type(exc).__name__}: {shown(str(exc), 300, typed=False)}. "
            + (
                own_code
                or "Fix: the folder must hold config.json, safetensors weights and a tokenizer "
                "of a causal LM that transformers supports."
            )
        ) from exc
    return model, tokenizer


def converted_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer a conversion saved, read straight from its tokenizer.json.

    AutoTokenizer would rebuild Gemma's tokenizer from the vocabulary and merges, parsing the 33 MB file
    in Python (about 3 s); the saved pipeline is that rebuilt one, so reading it gives the same ids and
    texts (tests/test_e2e_embedded.py compares both) in a third of the time.
    """
    from transformers import PreTrainedTokenizerFast

    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    specials = {k: config[k] for k in SPECIAL_TOKENS if isinstance(config.get(k), str)}
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials)


def asks_for_own_code_hint(source: str) -> str:
    """The fix to print when a folder that names its own code failed to load without it ('' otherwise)."""
    if not asks_for_its_own_code(source):
        return ""
    return (
        "The folder asks to run Python code of its own (auto_map in config.json or tokenizer_config.json), "
        "which pytest-factedit never runs unless asked. Fix: for a model you trust, pass "
        "--factedit-trust-remote-code (factedit: --trust-remote-code)."
    )


def _load(spec: ModelSpec, device: str, trust_remote_code: bool) -> LoadedModel:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"pytest-factedit needs torch and transformers: {exc}. Fix: pip install torch==2.13.0 transformers"
        ) from exc
    device_name, dtype = pick_device(device)
    start = time.perf_counter()
    source, conversion_seconds, weights_hash = _source(spec)
    load_start = time.perf_counter()
    model, tokenizer = _from_pretrained(spec, source, dtype, trust_remote_code)
    model.to(device_name)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # GGUF-derived weights are named by the file's sha256; other weights by a hash of their bytes
    weights_hash = weights_hash or weights_fingerprint(model)
    return LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        device=device_name,
        dtype=str(dtype).replace("torch.", ""),
        weights_hash=weights_hash,
        load_seconds=time.perf_counter() - load_start,
        conversion_seconds=conversion_seconds,
        notes=[f"loaded from {source} in {time.perf_counter() - start:.1f}s"],
    )


def share_machine(worker: int, workers: int) -> str:
    """One xdist worker's share of the machine, taken before its model loads: with several GPUs, GPU
    `worker` modulo their number (so "cuda" means it); on CPU, its share of the cores (torch would
    otherwise start as many threads as cores in every worker, and they would fight). Says what it took."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        gpu = worker % torch.cuda.device_count()
        torch.cuda.set_device(gpu)
        return f"xdist worker {worker}: cuda:{gpu} of {torch.cuda.device_count()} GPUs"
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(threads)
    return f"xdist worker {worker} of {workers}: {threads} CPU threads"
