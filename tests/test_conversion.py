"""A GGUF converted straight from its tensors gives the folder a whole transformers model saves, byte for byte
(so the weights hash every record carries stays); a GGUF the direct way cannot map goes through the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

import numpy as np

from pytest_factedit.infra.events import CONVERT, listening
from pytest_factedit.model.cache import _bars_as_events, dequantize, write_manifest
from pytest_factedit.model.conversion import convert_directly, convert_through_model, loaded_blockwise

Q = gguf.GGMLQuantizationType
TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "▁", "▁the", "▁cat", "▁sat", "t", "h", "e", "c", "a", "s", "▁t", "th"]
HIDDEN, FFN, HEADS, HEAD_DIM, LAYERS = 64, 128, 2, 32, 2
TEXTS = ("the cat sat", "that hat", "  the  ")


def write_gguf(path: Path, architecture: str, tied: bool, leave_out: str = "") -> Path:
    """A two-layer GGUF of `architecture` with a 16-token sentencepiece vocabulary, its weights random and
    stored in several of gguf's types (the quantized ones de-quantize through the same code as the embedded
    model's); without `output.weight` when `tied`; without the tensor `leave_out`."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(1)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    if architecture == "gemma3":
        writer.add_sliding_window(16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([-1000.0] * 4 + [-float(i) for i in range(len(TOKENS) - 4)])
    writer.add_token_types([3] * 4 + [1] * (len(TOKENS) - 4))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    rng = np.random.default_rng(0)
    for name, shape, kind in tensor_table(architecture, tied):
        values = rng.standard_normal(shape).astype(np.float32)
        if name == leave_out:
            continue
        if kind == Q.F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tensor_table(architecture: str, tied: bool) -> list[tuple[str, tuple[int, ...], Any]]:
    """(GGUF name, shape in torch order, stored type) of every tensor."""
    layer = [
        ("attn_norm", (HIDDEN,), Q.F32),
        ("attn_q", (HEADS * HEAD_DIM, HIDDEN), Q.Q5_0),
        ("attn_k", (HEAD_DIM, HIDDEN), Q.Q4_0),
        ("attn_v", (HEAD_DIM, HIDDEN), Q.Q8_0),
        ("attn_output", (HIDDEN, HEADS * HEAD_DIM), Q.F16),
        ("ffn_norm", (HIDDEN,), Q.F32),
        ("ffn_gate", (FFN, HIDDEN), Q.Q4_1),
        ("ffn_up", (FFN, HIDDEN), Q.Q5_1),
        ("ffn_down", (HIDDEN, FFN), Q.BF16),
    ]
    if architecture == "gemma3":  # the norms Gemma stores as 1 + weight, which transformers' mapping undoes
        layer += [(n, (d,), Q.F32) for n, d in (("attn_q_norm", HEAD_DIM), ("attn_k_norm", HEAD_DIM))]
        layer += [(n, (HIDDEN,), Q.F32) for n in ("post_attention_norm", "post_ffw_norm")]
    table = [("token_embd.weight", (len(TOKENS), HIDDEN), Q.Q8_0)]
    table += [(f"blk.{b}.{name}.weight", shape, kind) for b in range(LAYERS) for name, shape, kind in layer]
    table.append(("output_norm.weight", (HIDDEN,), Q.F32))
    return table if tied else [*table, ("output.weight", (len(TOKENS), HIDDEN), Q.Q8_0)]


def converted(convert: Any, source: Path, out: Path) -> list[str]:
    """Convert with `convert`; the CONVERT phases it told, each once, in order."""
    told: list[str] = []
    with listening(lambda e: told.append(e.label) if e.kind == CONVERT else None), _bars_as_events():
        assert convert(source, out) in (None, True)
    return list(dict.fromkeys(told))


@pytest.mark.parametrize(("architecture", "tied"), [("gemma3", True), ("llama", False), ("llama", True)])
def test_the_direct_conversion_writes_the_whole_model_s_files_byte_for_byte(
    tmp_path: Path, architecture: str, tied: bool
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = write_gguf(tmp_path / f"{architecture}.gguf", architecture, tied)
    direct, whole = tmp_path / "direct", tmp_path / "whole"
    assert converted(convert_directly, source, direct) == converted(convert_through_model, source, whole)
    names = sorted(p.name for p in whole.iterdir())
    assert sorted(p.name for p in direct.iterdir()) == names
    assert "model.safetensors" in names and "tokenizer.json" in names
    for name in names:
        assert (direct / name).read_bytes() == (whole / name).read_bytes(), name
    assert write_manifest(direct, "")["weights_sha256"] == write_manifest(whole, "")["weights_sha256"]
    loaded = [AutoModelForCausalLM.from_pretrained(folder).state_dict() for folder in (direct, whole)]
    assert loaded[0].keys() == loaded[1].keys()
    assert all(torch.equal(loaded[0][key], loaded[1][key]) for key in loaded[0])
    tokenizers = [AutoTokenizer.from_pretrained(folder) for folder in (direct, whole)]
    assert [tokenizers[0](text)["input_ids"] for text in TEXTS] == [tokenizers[1](text)["input_ids"] for text in TEXTS]


def test_a_gguf_whose_tensors_are_not_the_model_s_weights_goes_through_the_model(tmp_path: Path) -> None:
    """A weight missing from the file: a whole model's loading initializes it (as it always did); the direct
    way writes nothing and steps aside."""
    source = write_gguf(tmp_path / "partial.gguf", "llama", tied=False, leave_out="blk.1.ffn_norm.weight")
    assert not convert_directly(source, tmp_path / "direct")
    assert not (tmp_path / "direct").exists()
    dequantize(source, tmp_path / "out")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_an_architecture_of_transformers_block_wise_gguf_loader_goes_through_the_model(tmp_path: Path) -> None:
    pytest.importorskip("transformers.integrations.gguf.utils", reason="a transformers without that loader")
    from transformers.integrations.gguf.utils import GGUF_ARCHS

    path = tmp_path / "blockwise.gguf"
    writer = gguf.GGUFWriter(str(path), sorted(GGUF_ARCHS)[0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert loaded_blockwise(path)
    assert not convert_directly(path, tmp_path / "direct")
    assert not loaded_blockwise(write_gguf(tmp_path / "legacy.gguf", "gemma3", tied=True))
