"""Loading any model a user brings: dtype, device maps, the memory estimate told first, and failures that say
what was tried and what to do (aliases, hub ids with no network, GGUF files, out of memory)."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit import get_editor, resolve_settings
from pytest_factedit.errors import ModelLoadError, explained
from pytest_factedit.infra.events import LOAD_NOTE, MEMORY, listening
from pytest_factedit.localize import FactPrompts, localize
from pytest_factedit.model import hub
from pytest_factedit.model.load import ONEDNN_NOTE, load
from pytest_factedit.model.memory import config_shape, estimate_memory
from pytest_factedit.model.spec import resolve
from pytest_factedit.model.targets import layer_targets

from .tiny import REQUEST, assert_identical, snapshot, tiny_model, word_tokenizer

LAYERS_ON_CPU = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tok = word_tokenizer()
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_model("llama", len(tok), layers=2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTEDIT_CACHE", str(tmp_path / "cache"))


def test_the_dtype_option_loads_the_weights_in_that_dtype(folder) -> None:
    lm = load(str(folder), "cpu", dtype="bfloat16")
    assert lm.dtype == "bfloat16" and {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert load(str(folder), "cpu").dtype == "float32"  # auto on CPU


@pytest.mark.parametrize("onednn", [True, False])
def test_a_model_loaded_on_a_cpu_whose_products_go_to_onednn_routes_its_linear_layers_there(
    folder, monkeypatch, onednn: bool
) -> None:
    from pytest_factedit.model import lmhead

    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: onednn)
    heard = []
    with listening(heard.append):
        lm = load(str(folder), "cpu")
    linears = [m for m in lm.model.modules() if type(m) is torch.nn.Linear]
    assert [("forward" in m.__dict__) for m in linears] == [onednn] * len(linears)
    assert any("oneDNN" in note for note in lm.notes) == onednn
    assert [e.label for e in heard if e.kind == LOAD_NOTE] == ([ONEDNN_NOTE] if onednn else [])  # the terminal's line


@pytest.mark.parametrize("onednn", [True, False])
def test_factedit_prepare_prints_the_loads_notes(folder, monkeypatch, capsys, onednn: bool) -> None:
    from pytest_factedit.cli import main
    from pytest_factedit.model import lmhead

    monkeypatch.setattr(lmhead, "products_through_onednn", lambda: onednn)
    assert main(["prepare", "--model", str(folder), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model ") and lines[1] == f"  loaded from {folder}"
    assert (f"  {ONEDNN_NOTE}" in lines) == onednn
    assert re.findall(r"\b\d+\.\ds\b", "\n".join(lines)) == re.findall(r"load (\d+\.\ds)", lines[0])  # one load time


def test_the_memory_estimate_is_told_before_any_weight_loads(folder, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    def no_weights(*args, **kwargs):
        raise RuntimeError("the weights were not to be loaded in this test")

    heard = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    with listening(heard.append), pytest.raises(ModelLoadError):
        load(str(folder), "cpu", method="full-ft")
    [told] = [e.label for e in heard if e.kind == MEMORY]
    assert told.startswith("estimated memory (float32, full-ft): weights ") and "editor state" in told


def test_the_estimate_of_phi3_mini_counts_its_3_8_billion_parameters() -> None:
    from transformers import Phi3Config

    shape = config_shape(Phi3Config())  # the default config has Phi-3-mini's shapes
    assert 3.7e9 < shape.parameters < 3.9e9 and (shape.layers, shape.hidden) == (32, 3072)
    bf16 = estimate_memory(shape, "bfloat16", "ia3-two-stage", cuda=True)
    assert 7.0 < bf16.weights / 2**30 < 7.3 and bf16.editor_state < 64 * 2**20
    full = estimate_memory(shape, "bfloat16", "full-ft", cuda=True)
    assert full.editor_state == 4 * full.weights and "about" in full.line()


def test_a_device_map_places_each_module_with_its_weights_and_says_where(folder) -> None:
    lm = load(str(folder), "cpu", device_map=LAYERS_ON_CPU)
    assert lm.model.model.layers[1].mlp.down_proj.weight.device.type == "cpu"  # resident, not offloaded to meta
    assert hasattr(lm.model.model.layers[1], "_hf_hook") and lm.device == "device_map: cpu (6 modules)"


def test_a_device_map_naming_disk_or_unknown_modules_is_refused(folder) -> None:
    with pytest.raises(ModelLoadError, match="disk is not a place.*model, lm_head"):
        load(str(folder), "cpu", device_map={**LAYERS_ON_CPU, "model.layers.1": "disk"})
    with pytest.raises(ModelLoadError, match=r"unknown modules \['model.layer.1'\]"):
        load(str(folder), "cpu", device_map={**LAYERS_ON_CPU, "model.layer.1": "cpu"})


def test_localization_and_edits_work_with_layers_behind_accelerate_hooks(folder) -> None:
    """A JSON device map puts accelerate's hooks on every module (inputs and outputs moved per module), as
    a split over GPUs and the CPU does; here every part is on the CPU."""
    lm = load(str(folder), "cpu", device_map=LAYERS_ON_CPU)
    model, tok = lm.model, lm.tokenizer
    before = snapshot(model)
    forwards = {name: m.__dict__.get("forward") for name, m in model.named_modules()}
    with torch.no_grad():
        answer = int(model(**tok([REQUEST.prompts[0]], return_tensors="pt")).logits[0, -1].argmax())
    old = tok.decode([answer]).strip()
    found = localize(model, tok, FactPrompts(REQUEST.prompts, REQUEST.subject, old, answer))
    targets = layer_targets(model, found.mlp_layers, found.attention_layers, "localized")
    request = dataclasses.replace(REQUEST, old=(old,), new=("Rome" if old != "Rome" else "London",))
    fast = {"ia3-two-stage": {"lr": 0.3, "unlearn_max_steps": 2, "learn_max_steps": 2}, "rome": {}}
    for name, own in fast.items():
        settings = resolve_settings({"name": name, **own})
        with get_editor(name).apply(model, tok, request, targets, settings) as applied:
            assert applied.stages
    assert_identical(model, before)
    assert forwards == {name: m.__dict__.get("forward") for name, m in model.named_modules()}  # hooks kept


def test_an_alias_misspelt_is_answered_with_did_you_mean() -> None:
    with pytest.raises(ModelLoadError, match=r"did you mean 'phi3'\?.*org/name"):
        resolve("phi-3")
    assert resolve("gpt2").kind == "hub" and resolve("org/model").kind == "hub"


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hub"


def test_a_hub_model_not_cached_asks_the_hub_once_and_says_what_to_do(empty_hub_cache, monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.PROBE_SECONDS: asked.append(timeout) or False)
    with pytest.raises(ModelLoadError) as caught:
        load("phi3", "cpu")
    message = str(caught.value)
    assert asked == [hub.PROBE_SECONDS]
    assert "the alias 'phi3' -> 'microsoft/Phi-3-mini-4k-instruct'" in message
    assert f"the local Hugging Face cache {empty_hub_cache}" in message and "did not answer within 3 s" in message
    assert "huggingface-cli download microsoft/Phi-3-mini-4k-instruct" in message and "--model /path/to" in message


def test_with_hf_hub_offline_the_hub_is_not_asked_at_all(empty_hub_cache, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: pytest.fail("the hub was asked"))
    with pytest.raises(ModelLoadError, match="not the hub: HF_HUB_OFFLINE is set"):
        load("microsoft/Phi-3-mini-4k-instruct", "cpu")


def test_the_real_probe_of_an_unreachable_hub_fails_in_seconds(empty_hub_cache, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"127\.0\.0\.1:9, which did not answer"):
        load("org/never-downloaded", "cpu")
    assert time.perf_counter() - started < 60  # not the hub client's minute of retries (a bound, not a budget)


def in_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """`folder`'s files as the hub cache holds a downloaded `repo_id` (one snapshot, `main` pointing at it)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot_dir = repo / "snapshots" / "0123abc"
    snapshot_dir.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot_dir / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    return snapshot_dir


def test_a_hub_model_in_the_local_cache_loads_without_any_network(empty_hub_cache, folder, monkeypatch) -> None:
    in_hub_cache(empty_hub_cache, "tiny-org/tiny-llama", folder)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: pytest.fail("the hub was asked"))
    lm = load("tiny-org/tiny-llama", "cpu")
    assert lm.spec.kind == "hub" and type(lm.model).__name__ == "LlamaForCausalLM"


def test_a_cached_hub_model_that_needs_its_own_code_is_refused_with_the_reason(empty_hub_cache, folder) -> None:
    import json

    snapshot_dir = in_hub_cache(empty_hub_cache, "tiny-org/custom", folder)
    config = json.loads((snapshot_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"}
    config["model_type"] = "tiny-custom"  # a type transformers has no class for: only its own code can load it
    (snapshot_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"needs Python code of its own(.|\n)*--factedit-trust-remote-code"):
        load("tiny-org/custom", "cpu")


def test_a_gguf_of_an_architecture_transformers_cannot_read_says_so(tmp_path) -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv9")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"architecture 'rwkv9', which transformers .* cannot read(.|\n)*llama"):
        load(str(path), "cpu")


def test_out_of_memory_becomes_advice_in_a_case_s_reason_and_at_load(folder, monkeypatch) -> None:
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    advice = explained(error)
    assert "ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in advice
    assert "--factedit-dtype bfloat16" in advice and "--factedit-device-map auto" in advice
    assert "kl_rows_per_step" in advice and explained(ValueError("x")) == "ValueError: x"
    from transformers import AutoModelForCausalLM

    def too_big(*args, **kwargs):
        raise error

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", too_big)
    with pytest.raises(ModelLoadError, match="loading ran out of memory.*--factedit-device-map auto"):
        load(str(folder), "cpu")


def test_the_load_options_are_shared_and_bad_values_stop_at_the_border(capsys) -> None:
    from pytest_factedit.cli import build_parser

    args = build_parser().parse_args(["prepare", "--dtype", "bfloat16", "--device-map", '{"model.layers.0": 0}'])
    assert (args.dtype, args.device_map) == ("bfloat16", {"model.layers.0": 0})
    assert build_parser().parse_args(["prepare", "--device-map", "auto"]).device_map == "auto"
    for bad in (["--dtype", "float8"], ["--device-map", "everywhere"], ["--device-map", '{"x": -1}']):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["prepare", *bad])
    err = capsys.readouterr().err
    assert "invalid choice: 'float8'" in err and "a JSON object such as" in err and "GPU numbers or names" in err
