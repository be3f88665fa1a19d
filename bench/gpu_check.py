"""CUDA check: a whole case timed as the plugin runs it, then tracing, localizing and editing random-weight
models in bf16 on a GPU; prints what works and seconds.

    python bench/gpu_check.py                      # on a machine with CUDA (exits 2 without one)
    python bench/gpu_check.py --only whole-case    # just the timed whole cases
    python bench/gpu_check.py --device cpu         # dry run of the script itself, tiny models only

Whole case (first part): `run_case` (base probe, localization, both stages, edited probe, restore check)
on germany-capital's probes, one warm-up case, then one timed, against the targets: <= 3 s for the
embedded model (Gemma 3 270M), <= 5 s for a model of Phi-3-mini's shapes. The embedded model loads with
the plugin's loader when its converted cache is there (the GPU machine may have no network and no cache);
otherwise it is random weights of its exact shapes, and the output says so.

Checks (second part): each model twice, whole on the device, then split as a device map splits a model
too big for one GPU (accelerate's hooks; the top layers, the final norm and the LM head on the CPU, the
rest on the GPU).

Random weights of a tiny Phi-3 and of the true Phi-3-mini shapes (32 layers, 3.8B parameters), built
on the GPU from a config (no download). The answers mean nothing; this checks the CUDA/bf16 code paths
(batched tracing over every site and position, attribution, the two-stage IA³ edit and its removal) and
times them.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASE_FILE = ROOT / "fact_cases" / "germany-capital.yaml"
DEFAULTS_FILE = ROOT / "fact_cases" / "_defaults.yaml"
EMBEDDED_TARGET_S = 3.0  # a whole case on one GPU
PHI3_MINI_TARGET_S = 5.0

# The embedded model's config as its conversion writes it (config.json of its folder in the plugin's cache):
# read from that file when it is there, else these shapes.
EMBEDDED_CONFIG: dict[str, Any] = {
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "sliding_window": 512,
    "layer_types": ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(18)],
    "rope_parameters": {
        "full_attention": {"rope_theta": 1_000_000.0, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 10_000.0, "rope_type": "default"},
    },
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "attention_bias": False,
    "tie_word_embeddings": True,
}
# The CPU dry run's Gemma 3: the embedded config made narrow and shallow (still one full-attention layer in six).
TINY_GEMMA: dict[str, Any] = {
    "vocab_size": 4096,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 6,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "layer_types": ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(6)],
}
CONFIG_KEYS_DROPPED = ("architectures", "dtype", "transformers_version", "bos_token_id", "eos_token_id")

PROMPTS = ["The Eiffel Tower is located in the city of", "Tourists see the Eiffel Tower in the city of"]


def build(kind: str, tok, device: str):
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    dims = {
        "tiny-phi3": dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4
        ),
        "phi3-mini-shapes": dict(
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
        ),
    }[kind]
    config = Phi3Config(
        vocab_size=32064,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
        **dims,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    with torch.device(device):
        model = Phi3ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _localize_twice(model: Any, tok: Any, kind: str, device: str, old: str, old_id: int) -> Any:
    """Trace and attribution on PROMPTS (after a warm-up each); prints seconds and what was found."""
    from pytest_factedit.localize import FactPrompts, LocalizeSettings, localize

    found = None
    for method in ("trace", "attribution"):
        localize(model, tok, FactPrompts(tuple(PROMPTS[:1]), "Eiffel Tower", old, old_id), LocalizeSettings(method))
        _sync(device)  # the warm-up above loads the kernels
        started = time.perf_counter()
        found = localize(
            model,
            tok,
            FactPrompts(tuple(PROMPTS), "Eiffel Tower", old, old_id),
            LocalizeSettings(method=method, noise_samples=5),
        )
        seconds = time.perf_counter() - started
        grid = found.grids[0]
        cells = sum(v is not None for site in grid.effects.values() for row in site for v in row)
        print(
            f"[{kind}] localize {method}: {seconds:.3f}s for {len(PROMPTS)} prompts x 5 noise samples, "
            f"{cells} scored cells per prompt ({len(grid.tokens)} positions), precision {found.precision}; "
            f"MLP {found.mlp_layers} attention {found.attention_layers}; clean {grid.clean_prob:.3g} "
            f"corrupted {grid.corrupted_prob:.3g}"
        )
    return found


def _edit_and_restore(model: Any, tok: Any, kind: str, device: str, old: str, found: Any) -> bool:
    """A two-stage edit on the localized layers, then removed: True when the edited modules are bit-identical."""
    from pytest_factedit.edit import get_editor, resolve_settings
    from pytest_factedit.edit.base import EditRequest
    from pytest_factedit.model.targets import layer_targets
    from pytest_factedit.model.weights import verified_restore

    targets = layer_targets(model, found.mlp_layers, found.attention_layers, "gpu check")
    request = EditRequest(
        subject="Eiffel Tower",
        prompts=tuple(PROMPTS),
        old=(old,),
        new=("Rome",),
        held_out=("Big Ben is a clock tower in the city of",),
    )
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids.to(device)
    started = time.perf_counter()
    with (
        verified_restore(model, targets.modules) as check,
        get_editor("ia3-two-stage").apply(model, tok, request, targets, resolve_settings({})) as applied,
    ):
        _sync(device)
        seconds = time.perf_counter() - started
        edited = tok.decode([int(model(input_ids=ids).logits[0, -1].argmax())]).strip()
        stages = ", ".join(f"{s.name} {s.steps} steps" for s in applied.stages)
    print(
        f"[{kind}] edit on {len(targets.modules)} modules ({applied.trainable_parameters} IA3 parameters): "
        f"{seconds:.2f}s ({stages}); answer {old!r} -> {edited!r}; base restored bit-identical: {check.restored}"
    )
    return bool(check.restored)


def split(model: Any, device: str, on_cpu: int) -> Any:
    """The model dispatched over `device` and the CPU: its top `on_cpu` layers, final norm and LM head on
    the CPU (what --factedit-device-map does to a model bigger than the GPU)."""
    from pytest_factedit.model.load import resident_split
    from pytest_factedit.model.spec import resolve

    layers = model.config.num_hidden_layers
    gpu = 0 if device == "cuda" else "cpu"
    where = {"model.embed_tokens": gpu, "model.rotary_emb": gpu, "model.norm": "cpu", "lm_head": "cpu"}
    where |= {f"model.layers.{i}": ("cpu" if i >= layers - on_cpu else gpu) for i in range(layers)}
    return resident_split(resolve("phi3"), model, where)  # what --factedit-device-map '{...}' does


def check(kind: str, device: str, on_cpu: int = 0) -> bool:
    """Localize, edit and restore one random-weight model; True when outputs and weights come back exactly.
    With `on_cpu`, the model is split between `device` and the CPU first."""
    import torch

    from tests.tiny import word_tokenizer

    tok = word_tokenizer()
    model = build(kind, tok, device)
    if on_cpu:
        model = split(model, device, on_cpu)
        kind = f"{kind} split, top {on_cpu} layers on cpu"
    params = sum(p.numel() for p in model.parameters())
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        before_logits = model(input_ids=ids).logits
    old_id = int(before_logits[0, -1].argmax())
    old = tok.decode([old_id]).strip() or "Paris"
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"[{kind}] {params / 1e6:.1f}M parameters, {next(model.parameters()).dtype} on {where}")
    found = _localize_twice(model, tok, kind, device, old, old_id)
    with torch.no_grad():
        ok = torch.equal(model(input_ids=ids).logits, before_logits)
    print(f"[{kind}] outputs after tracing equal a fresh forward: {ok}")
    restored = _edit_and_restore(model, tok, kind, device, old, found)
    with torch.no_grad():
        restored &= torch.equal(model(input_ids=ids).logits, before_logits)
    return ok and restored


# --- the whole case, timed as the plugin runs it ----------------------------------------------------------


def embedded_folder() -> Path:
    """Where the plugin keeps the embedded model converted to safetensors (whether or not it is there)."""
    from pytest_factedit.model import cache
    from pytest_factedit.model.spec import cache_dir, resolve

    return cache_dir() / cache._source(resolve(None))[2]  # the folder name converted_dir() uses


def embedded_cache_ready() -> bool:
    """Is the converted embedded model there and whole? (Never converts: that needs its GGUF packages.)"""
    from pytest_factedit.model.cache import cache_problem

    return cache_problem(embedded_folder()) is None


def embedded_config(tiny: bool) -> tuple[dict[str, Any], str]:
    """The embedded model's config fields (from the cache's config.json when there), the word tokenizer's
    special ids in place of Gemma's; narrowed to TINY_GEMMA with `tiny`. Also where the fields came from."""
    from tests.tiny import SPECIAL_IDS

    path = embedded_folder() / "config.json"
    fields, source = (json.loads(path.read_text()), str(path)) if path.is_file() else (EMBEDDED_CONFIG, __file__)
    fields = {k: v for k, v in fields.items() if not k.startswith("_") and k not in CONFIG_KEYS_DROPPED}
    return {**fields, **SPECIAL_IDS, **(TINY_GEMMA if tiny else {})}, source


def case_tokenizer(vocab_size: int) -> Any:
    """tests/tiny.py's word tokenizer over every word of the case files, filled up with made-up words to the
    model's vocabulary size: every id a random model answers with decodes to a word."""
    from tokenizers.pre_tokenizers import Whitespace

    from tests.tiny import word_tokenizer

    text = CASE_FILE.read_text(encoding="utf-8") + DEFAULTS_FILE.read_text(encoding="utf-8")
    words = tuple(dict.fromkeys(word for word, _ in Whitespace().pre_tokenize_str(text)))
    known = len(word_tokenizer(extra_words=words))
    tok = word_tokenizer(extra_words=words + tuple(f"w{i}" for i in range(vocab_size - known)))
    assert len(tok) == vocab_size, (len(tok), vocab_size)
    return tok


def random_gemma(fields: dict[str, Any], device: str) -> Any:
    """A random-weight Gemma 3 of `fields`' shapes, built on `device` (bf16 on CUDA)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.tiny import frozen

    config = AutoConfig.for_model(**fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    return frozen(model)


def random_loaded(label: str, model: Any, tok: Any, device: str, seconds: float) -> Any:
    """A random-weight model as the plugin holds a loaded one."""
    from pytest_factedit.model.load import LoadedModel
    from pytest_factedit.model.spec import ModelSpec

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    spec = ModelSpec(label, "local", "random weights")
    return LoadedModel(spec, model, tok, device, dtype, weights_hash=f"random-{label}", load_seconds=seconds)


def write_case(folder: Path, fields: dict[str, Any]) -> Any:
    """`fields` as a case file next to a copy of the shipped defaults (the 14 controls), loaded as the plugin does."""
    import yaml

    from pytest_factedit.cases.loader import load_case

    shutil.copy(DEFAULTS_FILE, folder / "_defaults.yaml")
    path = folder / f"{fields['id']}.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False), encoding="utf-8")
    return load_case(path, root=folder)


def random_case(lm: Any, folder: Path) -> Any:
    """germany-capital's probes for a random model: `old` is the first word it answers each prompt with (a
    prompt answered with no word is left out), `new` a word it did not say; so the case runs, not skips."""
    import yaml

    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.metrics.answers import cut_answer
    from pytest_factedit.run.probing import BaseAnswerCache, probe_base

    fields = {**yaml.safe_load(CASE_FILE.read_text(encoding="utf-8")), "id": "germany-capital-random"}
    probe = write_case(folder, fields)
    outcome = probe_base(lm, probe, resolve_settings(probe.method), BaseAnswerCache())
    first = {a.prompt: re.findall(r"\w+", cut_answer(a.base))[:1] for a in outcome.group("prompts")}
    fields["prompts"] = [p for p in fields["prompts"] if first.get(p)]
    if not fields["prompts"]:
        raise SystemExit(f"{lm.spec.name}: no prompt of {CASE_FILE.name} is answered with a word: {first}")
    fields["old"] = list(dict.fromkeys(first[p][0] for p in fields["prompts"]))
    said = {o.casefold() for o in fields["old"]}
    fields["new"] = next(w for w in ("Vienna", "Rome", "London", "Paris") if w.casefold() not in said)
    return write_case(folder, fields)


def embedded_model(device: str, folder: Path) -> tuple[str, Any, Any]:
    """(label, loaded model, case): the embedded model by the plugin's loader with the shipped case when its
    cache is there (CUDA only), else random weights of its shapes with a case it answers."""
    from pytest_factedit.cases.loader import load_case
    from pytest_factedit.model.load import load

    if device == "cuda" and embedded_cache_ready():
        return "gemma3-270m, embedded weights", load(None, device), load_case(CASE_FILE, root=CASE_FILE.parent)
    fields, source = embedded_config(tiny=device != "cuda")
    if device == "cuda":
        label = "gemma3-270m shapes, RANDOM weights"
        why = f"the embedded weights are not in {embedded_folder()}, so random weights of its shapes stand in"
    else:
        label, why = "tiny gemma3 (embedded config, narrowed)", "CPU dry run: tiny models only"
    print(f"[{label}] {why}; config from {source}")
    started = time.perf_counter()
    tok = case_tokenizer(fields["vocab_size"])
    lm = random_loaded(label, random_gemma(fields, device), tok, device, time.perf_counter() - started)
    return label, lm, random_case(lm, folder)


def phi3_model(device: str, folder: Path) -> tuple[str, Any, Any]:
    """(label, loaded model, case): random weights of Phi-3-mini's shapes (a tiny Phi-3 on the CPU)."""
    kind = "phi3-mini-shapes" if device == "cuda" else "tiny-phi3"
    started = time.perf_counter()
    tok = case_tokenizer(32064)
    lm = random_loaded(f"{kind}, random weights", build(kind, tok, device), tok, device, time.perf_counter() - started)
    return lm.spec.name, lm, random_case(lm, folder)


def timed_case(lm: Any, case: Any, device: str) -> tuple[float, Any]:
    """Seconds of one `run_case` as the plugin runs it (base probe not cached), and its outcome."""
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache

    _sync(device)
    started = time.perf_counter()
    outcome = run_case(lm, case, resolve_settings(case.method), BaseAnswerCache())
    _sync(device)
    return time.perf_counter() - started, outcome


def phase_seconds(seconds: float, outcome: Any) -> list[tuple[str, float]]:
    """Where a whole case's seconds went: each phase from the outcome's timings and stages, the rest last."""
    timings = outcome.timings
    stages = [(f"{s['name']} {s['steps']} steps", float(s["seconds"])) for s in outcome.stages]
    setup = timings["edit_seconds"] - timings["localize_seconds"] - sum(s for _, s in stages)
    measured = timings["base_probe_seconds"] + timings["edit_seconds"] + timings["probe_seconds"]
    return [
        ("base probe", timings["base_probe_seconds"]),
        ("localize", timings["localize_seconds"]),
        *stages,
        ("edit set-up", setup),
        ("edited probe", timings["probe_seconds"]),
        ("restore check and the rest", seconds - measured),
    ]


def report_case(label: str, seconds: float, outcome: Any, target: float | None) -> bool:
    """Print the timed case's seconds per phase against `target` (None: a dry run); True when it ran and
    its weights came back bit-identical."""
    from pytest_factedit.metrics.answers import cut_answer

    if outcome.status != "ran":
        print(f"[{label}] whole case {outcome.status}: {outcome.reason}")
        return False
    verdict = f"target <= {target:g} s: {'met' if seconds <= target else 'not met'}" if target else "dry run, no target"
    print(f"[{label}] whole case {seconds:.2f} s ({verdict})")
    print("    " + " · ".join(f"{name} {value:.2f} s" for name, value in phase_seconds(seconds, outcome)))
    first = outcome.group("prompts")[0]
    print(
        f"    {len(outcome.answers)} probes; {first.prompt!r} -> {cut_answer(first.edited or '')[:40]!r} "
        f"(old {outcome.case.old[0]!r}, new {outcome.case.new[0]!r}); base restored bit-identical: "
        f"{outcome.base_restored}"
    )
    return bool(outcome.base_restored)


def whole_case(make: Callable[[str, Path], tuple[str, Any, Any]], device: str, target: float) -> bool:
    """Build or load one model and its case, run the case once to warm up, then time one; prints the report."""
    import torch

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        label, lm, case = make(device, Path(folder))
        params = sum(p.numel() for p in lm.model.parameters())
        where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        print(
            f"[{label}] {params / 1e6:.1f}M parameters, {lm.dtype} on {where}; model and case ready in "
            f"{time.perf_counter() - started:.1f} s; case {case.id}"
        )
        timed_case(lm, case, device)  # warm-up: kernels, lazy imports, allocator
        seconds, outcome = timed_case(lm, case, device)
    ok = report_case(label, seconds, outcome, target if device == "cuda" else None)
    del lm
    if device == "cuda":
        torch.cuda.empty_cache()
    return ok


def whole_cases(device: str) -> dict[str, bool]:
    """The embedded model's whole case and a Phi-3-mini-shaped one's, each timed against its target."""
    return {
        "whole case, embedded": whole_case(embedded_model, device, EMBEDDED_TARGET_S),
        "whole case, phi3-mini shapes": whole_case(phi3_model, device, PHI3_MINI_TARGET_S),
    }


def checks(device: str) -> dict[str, bool]:
    """Localize, edit and restore each random-weight Phi-3, whole and then split with the CPU."""
    kinds = ("tiny-phi3", "phi3-mini-shapes") if device == "cuda" else ("tiny-phi3",)
    results = {kind: check(kind, device) for kind in kinds}
    return results | {f"{kind} split": check(kind, device, on_cpu=2) for kind in kinds}


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--only", choices=("whole-case", "checks"), help="one part (default: both, whole case first)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each line out as it comes, even when a timeout cuts the run
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}")
    started = time.perf_counter()
    results = whole_cases(device) if args.only != "checks" else {}
    results |= checks(device) if args.only != "whole-case" else {}
    print(f"{time.perf_counter() - started:.0f} s in all")
    print("ALL OK" if all(results.values()) else f"FAILED: {results}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
