"""Loading a causal LM and its tokenizer for a run: device, dtype, and errors that say how to fix them."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import ModelLoadError, out_of_memory_hint, shown
from ..infra.events import LOAD_NOTE, MEMORY, emit
from .cache import converted_dir
from .hub import hub_error, local_files_only
from .lmhead import route_linears
from .memory import MemoryEstimate, config_shape, estimate_memory
from .spec import DEFAULT_MODEL, ModelSpec, resolve
from .weights import weights_fingerprint

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's strategies; or a JSON mapping
ONEDNN_NOTE = "fp32 linear layers multiply with oneDNN (faster than MKL on this AMD CPU)"
DEVICE_NAME = re.compile(r"cpu|disk|mps|cuda(?::\d{1,4})?")  # a device a JSON map may name (or a GPU number)
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
    memory: MemoryEstimate | None = None  # told before the weights loaded


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


@dataclass(frozen=True)
class LoadSettings:
    """How to load: the device, the dtype (auto: bf16 on CUDA, fp32 on CPU), an accelerate device map
    (a strategy name or {module name: device}), whether a folder's own code may run, and the method the
    memory estimate is for."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | dict[str, Any] | None = None
    trust_remote_code: bool = False
    method: str = "ia3-two-stage"


def load(name: str | None = None, device: str = "auto", trust_remote_code: bool = False, **how: Any) -> LoadedModel:
    """Load the model named by `--model` onto the chosen device; raises ModelLoadError with a fix.

    A model folder's own Python code (`auto_map`) runs only with `trust_remote_code`. `how` holds the
    other LoadSettings fields (dtype, device_map, method).
    """
    settings = LoadSettings(device=device, trust_remote_code=trust_remote_code, **how)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ModelLoadError(f"pytest-factedit needs transformers: {exc}. Fix: pip install transformers") from exc
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _load(resolve(name), settings)
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
    spec: ModelSpec, source: str, dtype: torch.dtype, how: LoadSettings, local_only: bool, device: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, MemoryEstimate]:
    """The tokenizer, then the config (the memory estimate is told before any weight loads), then the model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"trust_remote_code": how.trust_remote_code, "local_files_only": local_only}
    try:
        tokenizer = (
            converted_tokenizer(Path(source))
            if spec.kind == "embedded"
            else AutoTokenizer.from_pretrained(source, **common)
        )
        config = AutoConfig.from_pretrained(source, **common)
        estimate = estimate_memory(config_shape(config), _dtype_name(dtype), how.method, device == "cuda")
        emit(MEMORY, estimate.line())
        strategy = isinstance(how.device_map, str)  # accelerate computes the map; a dict is placed below
        placement: dict[str, Any] = {"device_map": how.device_map} if strategy else {}
        if local_only:  # transformers looks for a peft adapter without passing local_files_only on
            placement["adapter_kwargs"] = {"local_files_only": True}
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, **placement, **common
        )
    except Exception as exc:
        raise _load_error(spec, source, how, exc) from exc
    if isinstance(how.device_map, dict):
        model = resident_split(spec, model, how.device_map)
    return model, tokenizer, estimate


def _load_error(spec: ModelSpec, source: str, how: LoadSettings, exc: Exception) -> ModelLoadError:
    """What loading `source` failing means for the user: memory, a hub id, its own code, or a bad folder."""
    memory = out_of_memory_hint(exc)
    if memory:
        return ModelLoadError(f"--model {spec.name}: loading ran out of memory. {memory}")
    if spec.kind == "hub" and not how.trust_remote_code and "trust_remote_code" in str(exc):
        return ModelLoadError(
            f"--model {spec.name}: {spec.source} needs Python code of its own to load (its config names it in "
            "auto_map), which pytest-factedit never runs unless asked. Fix: for a model you trust, pass "
            "--factedit-trust-remote-code (factedit: --trust-remote-code); the code is then run as the hub gives it."
        )
    if spec.kind == "hub":
        return hub_error(spec, [f"the Hugging Face hub id {spec.source!r}"], f"{type(exc).__name__}: {_first(exc)}")
    own_code = not how.trust_remote_code and asks_for_own_code_hint(source)
    return ModelLoadError(
        f"--model {spec.name}: loading {source} failed: {type(exc).__name__}: {shown(str(exc), 300, typed=False)}. "
        + (
            own_code
            or "Fix: the folder must hold config.json, safetensors weights and a tokenizer "
            "of a causal LM that transformers supports."
        )
    )


def _first(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def pick_dtype(requested: str, default: torch.dtype) -> torch.dtype:
    """The torch dtype `--factedit-dtype` names; auto keeps the device's default (bf16 CUDA, fp32 CPU)."""
    import torch

    if requested not in DTYPES:
        raise ModelLoadError(f"--factedit-dtype: expected one of {', '.join(DTYPES)}, found {requested!r}")
    return default if requested == "auto" else getattr(torch, requested)


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


def check_device_map(device_map: str | dict[str, Any] | None) -> None:
    """A JSON device map names only devices this machine has: 'cpu', 'disk', and CUDA devices (a number,
    'cuda' or 'cuda:N') below torch's count; checked before any weight loads, not by a failed move later."""
    if not isinstance(device_map, dict):
        return
    import torch

    count = torch.cuda.device_count()
    for module, where in device_map.items():
        name = f"cuda:{where}" if isinstance(where, int) and not isinstance(where, bool) else str(where)
        index = 0 if name == "cuda" else int(name[5:]) if name.startswith("cuda:") and name[5:].isdigit() else None
        missing = index is not None and index >= count
        if missing or (name == "mps" and not torch.backends.mps.is_available()) or not DEVICE_NAME.fullmatch(name):
            gpus = f" or a CUDA device from 0 to {count - 1}" if count else ""
            raise ModelLoadError(
                f"--factedit-device-map: module {module!r}: expected 'cpu', 'disk'{gpus} (this machine has {count} "
                f"CUDA devices), found {where!r}. Fix: map it to a device this machine has, or leave the map out"
            )


def _load(spec: ModelSpec, how: LoadSettings) -> LoadedModel:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"pytest-factedit needs torch and transformers: {exc}. Fix: pip install torch==2.13.0 transformers"
        ) from exc
    check_device_map(how.device_map)
    device_name, default_dtype = pick_device(how.device)
    dtype = pick_dtype(how.dtype, default_dtype)
    source, conversion_seconds, weights_hash = _source(spec)
    local_only = local_files_only(spec) if spec.kind == "hub" else False
    load_start = time.perf_counter()
    model, tokenizer, memory = _from_pretrained(spec, source, dtype, how, local_only, device_name)
    if how.device_map:
        _all_in_memory(spec, model)
        device_name = placement_text(model)
    else:
        as_module: torch.nn.Module = model  # transformers' functools.wraps on PreTrainedModel.to hides its arguments
        as_module.to(device_name)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    routed = device_name == "cpu" and route_linears(model) > 0  # an AMD CPU: fp32 products by oneDNN
    if routed:
        emit(LOAD_NOTE, ONEDNN_NOTE)
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
        dtype=_dtype_name(dtype),
        weights_hash=weights_hash,
        load_seconds=time.perf_counter() - load_start,
        conversion_seconds=conversion_seconds,
        # no seconds here: `factedit prepare` and the summary give load_seconds and conversion_seconds apart
        notes=[f"loaded from {source}"] + ([ONEDNN_NOTE] if routed else []),
        memory=memory,
    )


def resident_split(spec: ModelSpec, model: PreTrainedModel, device_map: dict[str, Any]) -> PreTrainedModel:
    """The model spread as `device_map` says, each module's weights resident where it runs.

    accelerate's own placement treats 'cpu' next to a GPU as offload (weights kept outside the module,
    copied to the GPU per pass), which an edit cannot change in place; dispatching from the CPU keeps the
    'cpu' modules' weights in their modules and runs them there.
    """
    from accelerate import dispatch_model

    names = {name for name, _ in model.named_modules()}
    unknown = [m for m in device_map if m not in names]
    if unknown or "disk" in device_map.values():
        raise ModelLoadError(
            f"--factedit-device-map: {'unknown modules ' + str(unknown[:3]) if unknown else 'disk is not a place'}"
            f" for {type(model).__name__}; map its modules ({', '.join(n for n, _ in model.named_children())}, "
            "or deeper ones such as each decoder layer) to GPU numbers or 'cpu'",
        )
    try:
        # accelerate is untyped (Any); dispatch_model hooks the model in place and returns it
        return cast("PreTrainedModel", dispatch_model(model, device_map, main_device="cpu", force_hooks=True))
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"--model {spec.name}: --factedit-device-map could not be applied: {exc}") from exc


def _all_in_memory(spec: ModelSpec, model: PreTrainedModel) -> None:
    """An edit changes and restores weights in place: a device map that offloads some to disk cannot serve."""
    offloaded = sorted({str(where) for where in getattr(model, "hf_device_map", {}).values() if where == "disk"})
    if offloaded or any(p.device.type == "meta" for p in model.parameters()):
        raise ModelLoadError(
            f"--model {spec.name}: the device map offloaded weights (accelerate keeps them outside their modules "
            "and copies them in for each pass), and an edit changes and checks weights in place. Fix: name where "
            'each part goes with a JSON object (--factedit-device-map \'{"model.layers.0": 0, ..., '
            '"model.layers.31": "cpu"}\': \'cpu\' parts then run on the CPU with their weights), use a smaller '
            "dtype (--factedit-dtype bfloat16), or more GPUs."
        )


def placement_text(model: PreTrainedModel) -> str:
    """Where a device-mapped model's modules went, e.g. `device_map: cuda:0 (28 modules), cpu (6)`."""
    counts: dict[str, int] = {}
    for where in getattr(model, "hf_device_map", {}).values():
        name = f"cuda:{where}" if isinstance(where, int) else str(where)
        counts[name] = counts.get(name, 0) + 1
    return "device_map: " + ", ".join(f"{d} ({n} modules)" for d, n in counts.items()) if counts else "device_map"


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
