"""Tiny random-weight models and a word-level tokenizer, built in memory (no downloads)."""

from __future__ import annotations

from typing import Any

from pytest_factedit.edit.base import EditRequest

WORDS = (
    "The Eiffel Tower is located in the city of Paris Rome London Berlin Big Ben clock tower "
    "Here is a fact . , Italy France and it was a she he book opened began to weather cold so we "
    "decided number that recipe calls for two cups after meeting everyone went back their river "
    "flows slowly through children played park until wrote letter his Colosseum Louvre"
).split()

# One fact the tiny models are edited with: every word is in WORDS, and the control is held out.
REQUEST = EditRequest(
    subject="Eiffel Tower",
    prompts=("The Eiffel Tower is located in the city of",),
    old=("Paris",),
    new=("Rome",),
    held_out=("Big Ben is a clock tower in the city of",),
)


def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + list(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]"
    )
    fast.padding_side = "left"
    return fast


def tiny_model(kind: str, vocab_size: int, layers: int = 2) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "phi3":
        model = Phi3ForCausalLM(
            Phi3Config(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=64,
                **common,
            )
        )
    elif kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                **common,
            )
        )
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=64, **common))
    else:
        raise ValueError(kind)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def snapshot(model: Any) -> dict[str, Any]:
    """Copies of every tensor of the model's state, to compare with after an edit."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(model: Any, before: dict[str, Any]) -> None:
    """Every tensor of the model's state equals its `snapshot`, bit for bit."""
    import torch

    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
