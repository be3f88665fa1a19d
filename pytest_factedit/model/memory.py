"""What a run will need in memory, told before the weights load: the weights, a training step's activations
and the editor's own state, from the model's config alone.

The figures are estimates to plan with (which dtype, whether to spread the model with a device map), not
measurements: weights are counted exactly from a meta-device copy of the architecture, activations and
editor state by the formulas in `docs/models.md`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STEP_ROWS = 16  # rows of one training step: the fact's prompts behind their prefixes, and retention rows
STEP_TOKENS = 32  # tokens of one training row
TRACE_ROWS = 1024  # rows of one batched causal-tracing pass on CUDA (LocalizeSettings.batch_rows)


@dataclass(frozen=True)
class Shape:
    """The sizes that memory depends on, read from a config (text part of a multimodal one)."""

    parameters: int
    layers: int
    hidden: int
    intermediate: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes for the weights, the larger of a training step's and a tracing pass's activations, and the
    editor's state (trainable copies, gradients, Adam moments, restore copies, key statistics)."""

    shape: Shape
    dtype: str
    method: str
    weights: int
    activations: int
    editor_state: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.editor_state

    def line(self) -> str:
        """One line for the terminal, e.g. `estimated memory (bfloat16, ia3-two-stage): weights 7.1 GiB, ...`."""
        return (
            f"estimated memory ({self.dtype}, {self.method}): weights {_gib(self.weights)}, activations "
            f"{_gib(self.activations)}, editor state {_gib(self.editor_state)}; about {_gib(self.total)} in all "
            f"({self.shape.parameters / 1e9:.2f} B parameters, {self.shape.layers} layers)"
        )


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB / 10 else f"{size / 2**20:.0f} MiB"


def config_shape(config: PretrainedConfig) -> Shape:
    """Sizes of the architecture: parameters counted on a meta-device copy (no memory used), else estimated
    as 12 x hidden^2 per layer plus the embeddings when the class cannot be built here."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0))
    intermediate = int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 4 * hidden)
    return Shape(_parameters(config) or _formula(text, hidden, layers, intermediate), layers, hidden, intermediate)


def _parameters(config: PretrainedConfig) -> int:
    """Parameters of the model class on the meta device (0 when transformers cannot build it)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception:  # an architecture this transformers cannot build: the formula below
        return 0
    return sum(p.numel() for p in model.parameters())


def _formula(text: Any, hidden: int, layers: int, intermediate: int) -> int:
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    return layers * (4 * hidden * hidden + 3 * hidden * intermediate) + 2 * vocab * hidden


def editor_state_bytes(shape: Shape, method: str, dtype_bytes: int) -> int:
    """The editor's own memory: what it trains (with gradient and two Adam moments) and what it keeps to
    restore the base, by the kind of editor."""
    hidden, intermediate = shape.hidden, shape.intermediate
    if method == "full-ft":  # every weight: gradient, two moments, and the copy the restore writes back
        return 4 * shape.parameters * dtype_bytes
    if method in ("rome", "alphaedit"):  # key statistics in float64, the projector, one weight's copy
        return 8 * intermediate * intermediate * 2 + hidden * intermediate * dtype_bytes
    if method == "ft-m":  # one MLP output projection trained
        return 4 * hidden * intermediate * dtype_bytes
    if method == "lora":
        return 4 * 4 * 8 * (hidden + intermediate) * shape.layers * 4
    return 4 * 4 * (hidden + intermediate) * 2 * shape.layers  # IA³ gains: tiny


def estimate_memory(shape: Shape, dtype: str, method: str, cuda: bool) -> MemoryEstimate:
    """The estimate for `shape` loaded in `dtype` and edited by `method` (tracing batches rows on CUDA)."""
    size = DTYPE_BYTES.get(dtype, 4)
    per_token = shape.layers * (8 * shape.hidden + 4 * shape.intermediate) * size  # kept for the backward pass
    training = STEP_ROWS * STEP_TOKENS * per_token
    tracing = (TRACE_ROWS if cuda else 128) * STEP_TOKENS * 4 * shape.hidden * size  # one layer's worth, no grad
    return MemoryEstimate(
        shape,
        dtype,
        method,
        shape.parameters * size,
        max(training, tracing),
        editor_state_bytes(shape, method, size),
    )
