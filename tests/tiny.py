"""Tiny random-weight models and a word-level tokenizer, built in memory (no downloads)."""

from __future__ import annotations

from pathlib import Path
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


# A chat format of our own in Phi-3's shape (role tags, an end tag per turn, the assistant tag to answer after).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT_TAGS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_WORDS = "Who developed PyTorch ? Meta Google Answer in one word You are helpful".split()


def word_tokenizer(chat: bool = False, extra_words: tuple[str, ...] = ()) -> Any:
    """Whitespace-split words of WORDS and `extra_words`; with `chat`, also the chat tags and words of
    CHAT_WORDS, and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"] + (CHAT_TAGS if chat else [])
    words = specials + list(WORDS) + list(extra_words) + (CHAT_WORDS if chat else [])
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]"
    )
    fast.padding_side = "left"
    if chat:
        fast.add_special_tokens({"additional_special_tokens": CHAT_TAGS})
        fast.chat_template = CHAT_TEMPLATE
    return fast


SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64}
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def frozen(model: Any) -> Any:
    """The model in eval mode with no parameter requiring a gradient (as the plugin loads one)."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def tiny_model(kind: str, vocab_size: int, layers: int = 2) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, num_hidden_layers=layers, **SPECIAL_IDS)
    if kind == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**SHAPE, num_key_value_heads=4, **common))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SHAPE, num_key_value_heads=2, **common))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=64, vocab_size=vocab_size, **SPECIAL_IDS)
        )
    else:
        raise ValueError(kind)
    return frozen(model)


def saved_tiny_llama(folder: Path, prompt: str, layers: int = 2) -> str:
    """A tiny random llama and its word tokenizer saved in `folder` as a local model folder; the word the
    model answers `prompt` with (a fact it holds, for a case to edit)."""
    import torch

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=layers)
    with torch.no_grad():
        answer_id = int(model(**tok([prompt], return_tensors="pt")).logits[0, -1].argmax())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(tok.decode([answer_id])).strip()


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


# Decoder families a user may bring, each as a 2-layer random model of its real architecture (tests of
# introspection, localization and every editor); per family, the config keys it names differently.
FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "phi",
    "gpt2",
    "gpt_neox",
    "falcon",
    "qwen2_moe",
)
_FAMILY_CONFIG: dict[str, dict[str, Any]] = {
    "gpt2": {"n_embd": 32, "n_head": 4, "n_positions": 64},
    "gemma2": {"head_dim": 8},
    "gemma3_text": {"head_dim": 8},
    "qwen3": {"head_dim": 8},
    "qwen2_moe": {
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
        "num_experts": 4,
        "num_experts_per_tok": 2,
    },
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
}


def family_model(model_type: str, vocab_size: int, layers: int = 2) -> Any:
    """A random-weight model of a transformers architecture, built from its config (no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        num_hidden_layers=layers,
        num_key_value_heads=2,
        **SHAPE,
        **SPECIAL_IDS,
        **_FAMILY_CONFIG.get(model_type, {}),
    )
    return frozen(AutoModelForCausalLM.from_config(config))


PIECE_TEXTS = (
    "The capital of Japan is Tokyo . Japan's capital is Tokyo . japan , JAPAN , the Japanese language",
    "Nippon is another name of Japan . I love New York . York is a city in England . In York , we met",
    "The official language of Japan is Japanese . Speaking of Japan , here is another question .",
    "The United States and the U.S. and America ; Seoul , Korea , Korean , French , Paris , France",
    " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
)


def piece_tokenizer(extra: tuple[str, ...] = ()) -> Any:
    """A small BPE tokenizer that marks the space before a word ('▁Japan'), as SentencePiece and Gemma's do,
    trained on PIECE_TEXTS and `extra` with few merges: 'Japanese' is '▁Japan' + 'es' + 'e', 'Japan's' is
    '▁Japan' + "'" + 's', as Gemma's tokenizer splits them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=110 + 10 * len(extra), special_tokens=["[PAD]", "[BOS]", "[EOS]", "[UNK]"])
    names = "Japan York New Nippon capital Tokyo Seoul official language United States"
    tok.train_from_iterator(list(PIECE_TEXTS + extra) * 3 + [names] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]"
    )
    fast.padding_side = "left"
    return fast
