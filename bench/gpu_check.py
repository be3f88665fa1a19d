"""CUDA check: trace, localize and edit random-weight models in bf16 on a GPU; prints what works and seconds.

    python bench/gpu_check.py                 # on a machine with CUDA (exits 2 without one)
    python bench/gpu_check.py --device cpu    # dry run of the script itself, tiny model only

Random weights of a tiny Phi-3 and of the true Phi-3-mini shapes (32 layers, 3.8B parameters), built
on the GPU from a config (no download). The answers mean nothing; this checks the CUDA/bf16 code paths
(batched tracing over every site and position, attribution, the two-stage IA³ edit and its removal).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["The Eiffel Tower is located in the city of", "Tourists see the Eiffel Tower in the city of"]


def build(kind: str, tok, device: str):
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    dims = {"tiny-phi3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=4),
            "phi3-mini-shapes": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32)}[kind]
    config = Phi3Config(vocab_size=32064, max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                        bos_token_id=1, eos_token_id=2, **dims)
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


def check(kind: str, device: str) -> bool:
    import torch

    from pytest_factedit.edit import get_editor, resolve_settings
    from pytest_factedit.edit.base import EditRequest
    from pytest_factedit.localize import localize
    from pytest_factedit.models import weights_fingerprint
    from pytest_factedit.targets import layer_targets
    from tests.tiny import word_tokenizer

    tok = word_tokenizer()
    model = build(kind, tok, device)
    params = sum(p.numel() for p in model.parameters())
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        before_logits = model(input_ids=ids).logits
    old_id = int(before_logits[0, -1].argmax())
    old = tok.decode([old_id]).strip() or "Paris"
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"[{kind}] {params / 1e6:.1f}M parameters, {next(model.parameters()).dtype} on {where}")
    ok = True
    found = None
    for method in ("trace", "attribution"):
        localize(model, tok, PROMPTS[:1], "Eiffel Tower", old, old_id, method=method)  # warm-up (kernels)
        _sync(device)
        started = time.perf_counter()
        found = localize(model, tok, PROMPTS, "Eiffel Tower", old, old_id, method=method, noise_samples=5)
        seconds = time.perf_counter() - started
        grid = found.grids[0]
        cells = sum(v is not None for site in grid.effects.values() for row in site for v in row)
        print(f"[{kind}] localize {method}: {seconds:.3f}s for {len(PROMPTS)} prompts x 5 noise samples, "
              f"{cells} scored cells per prompt ({len(grid.tokens)} positions), precision {found.precision}; "
              f"MLP {found.mlp_layers} attention {found.attention_layers}; clean {grid.clean_prob:.3g} "
              f"corrupted {grid.corrupted_prob:.3g}")
    with torch.no_grad():
        ok &= torch.equal(model(input_ids=ids).logits, before_logits)
    print(f"[{kind}] outputs after tracing equal a fresh forward: {ok}")
    targets = layer_targets(model, found.mlp_layers, found.attention_layers, "gpu check")
    touched = weights_fingerprint(model, targets.modules)
    request = EditRequest(subject="Eiffel Tower", prompts=tuple(PROMPTS), old=(old,), new=("Rome",),
                          held_out=("Big Ben is a clock tower in the city of",))
    settings = resolve_settings({})
    started = time.perf_counter()
    applied = get_editor("ia3-two-stage").apply(model, tok, request, targets, settings)
    _sync(device)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        edited = tok.decode([int(model(input_ids=ids).logits[0, -1].argmax())]).strip()
    stages = ", ".join(f"{s.name} {s.steps} steps" for s in applied.stages)
    applied.remove()
    restored = weights_fingerprint(model, targets.modules) == touched
    with torch.no_grad():
        restored &= torch.equal(model(input_ids=ids).logits, before_logits)
    print(f"[{kind}] edit on {len(targets.modules)} modules ({applied.trainable_parameters} IA3 parameters): "
          f"{seconds:.2f}s ({stages}); answer {old!r} -> {edited!r}; base restored bit-identical: {restored}")
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
    print("ALL OK" if all(results.values()) else f"FAILED: {results}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
