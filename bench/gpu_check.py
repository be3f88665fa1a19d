"""CUDA check: trace, localize and edit random-weight models in bf16 on a GPU; prints what works and seconds.

    python bench/gpu_check.py                 # on a machine with CUDA (exits 2 without one)
    python bench/gpu_check.py --device cpu    # dry run of the script itself, tiny model only

Each model is checked twice: whole on the device, then split as a device map splits a model too big for
one GPU (accelerate's hooks; the top layers, the final norm and the LM head on the CPU, the rest on the GPU).

Random weights of a tiny Phi-3 and of the true Phi-3-mini shapes (32 layers, 3.8B parameters), built
on the GPU from a config (no download). The answers mean nothing; this checks the CUDA/bf16 code paths
(batched tracing over every site and position, attribution, the two-stage IA³ edit and its removal).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    device = parser.parse_args(argv).device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    kinds = ("tiny-phi3", "phi3-mini-shapes") if device == "cuda" else ("tiny-phi3",)
    results = {kind: check(kind, device) for kind in kinds}
    results |= {f"{kind} split": check(kind, device, on_cpu=2) for kind in kinds}
    print("ALL OK" if all(results.values()) else f"FAILED: {results}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
