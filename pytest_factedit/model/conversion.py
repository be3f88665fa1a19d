"""De-quantizing a GGUF into a safetensors model folder with its tokenizer: the files `save_pretrained` writes.

The direct way reads the file with one gguf reader and builds no weights: a skeleton of the model on the
meta device gives the config and the names, shapes and dtypes of its weights; the GGUF's tensors, de-quantized
and renamed by transformers' own GGUF mapping, are handed to that skeleton's `save_pretrained`, which writes
the bytes the whole model would (same tensors, names, order and metadata, so the same weights hash). A GGUF
whose tensors are not exactly the model's weights, or whose architecture transformers loads through its newer
block-wise GGUF loader, is converted through a whole transformers model instead, as it always was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..infra.events import CONVERT, READING, SAVING, TOKENIZER, emit

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def convert_directly(gguf_path: Path, out: Path) -> bool:
    """Write the folder from the GGUF's tensors; False, with nothing written, when the direct way does not apply."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    if loaded_blockwise(gguf_path):
        return False
    folder, name = str(gguf_path.parent), gguf_path.name
    with _gguf_read_once():
        tokenizer = _tokenizer(gguf_path)
        emit(CONVERT, READING)
        config = AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
        tensors: dict[str, torch.Tensor] = load_gguf_checkpoint(
            str(gguf_path), return_tensors=True, model_to_load=skeleton
        )["tensors"]
    if not are_its_weights(tensors, skeleton):
        return False
    emit(CONVERT, SAVING)
    skeleton.save_pretrained(out, state_dict=tensors)
    tokenizer.save_pretrained(out)
    return True


def convert_through_model(gguf_path: Path, out: Path) -> None:
    """Load the whole model from the GGUF in fp32 (transformers de-quantizes it) and save it."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = _tokenizer(gguf_path)
    emit(CONVERT, READING)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, trust_remote_code=False
    )
    # save_pretrained refuses GGUF-quantized models; the weights are already de-quantized to fp32.
    # transformers sets hf_quantizer on the instance; torch types unknown attributes as tensors or modules
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    emit(CONVERT, SAVING)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _tokenizer(gguf_path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    emit(CONVERT, TOKENIZER)
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, trust_remote_code=False
    )
    return tokenizer


def loaded_blockwise(gguf_path: Path) -> bool:
    """Whether this transformers loads the file's architecture with its newer GGUF loader (weights kept in
    blocks, conversions of its own), which the legacy mapping of the direct way would not reproduce."""
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata
        from transformers.integrations.gguf.utils import is_gguf_arch_supported
    except ImportError:  # a transformers without that loader reads every GGUF with the legacy mapping
        return False
    try:
        metadata, _ = read_gguf_metadata(str(gguf_path))
    except Exception:  # not a readable GGUF: the tokenizer's reading fails first and says so, as it always did
        return False
    return bool(is_gguf_arch_supported(metadata["general.architecture"]))


def are_its_weights(tensors: dict[str, torch.Tensor], skeleton: PreTrainedModel) -> bool:
    """Whether `tensors` are exactly the skeleton's weights, a tied one once: same names, shapes and dtypes.

    Anything else (a weight missing, which loading would initialize at random; one to spare; another shape)
    is left to a whole model's loading, which decides it as it always did.
    """
    weights: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in skeleton.state_dict(keep_vars=True).items():
        if id(value) not in seen:  # a tied weight is one parameter under two names: its first is saved
            seen.add(id(value))
            weights[key] = value
    return tensors.keys() == weights.keys() and all(
        tensors[key].shape == value.shape and tensors[key].dtype == value.dtype for key, value in weights.items()
    )


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """In the block, each GGUF file is read once, and gguf's tensor-name table of an architecture built once.

    transformers reads the whole GGUF for each of the tokenizer, the config and the tensors, and builds gguf's
    name table for every module of the model (313 times for the embedded one). gguf's reader slices its numpy
    memmap about a million times for a 262k-token vocabulary, where the memmap subclass makes each slice cost
    microseconds in Python; a plain ndarray over the same mapped bytes holds the same values and reads three
    times faster. Both are swapped in `gguf` for the block (transformers imports them from it at each call;
    process-wide, as `_bars_as_events` swaps tqdm: a conversion is one thread's work). They only cache: a
    transformers that imported them otherwise would convert more slowly, not differently.
    """
    import functools

    import gguf

    reader_class, name_table = gguf.GGUFReader, gguf.get_tensor_name_map
    plain_reader = _plain_array_reader(reader_class)
    readers: dict[tuple[str, str], Any] = {}

    def read_once(path: str | os.PathLike[str], mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = plain_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = read_once  # type: ignore[misc,assignment]  # a factory stands in for the class
    gguf.get_tensor_name_map = functools.cache(name_table)
    try:
        yield
    finally:
        gguf.GGUFReader = reader_class  # type: ignore[misc]
        gguf.get_tensor_name_map = name_table


def _plain_array_reader(reader_class: type[Any]) -> type[Any]:
    """`reader_class` reading through a plain ndarray view of the memory map it opens (the same bytes)."""
    import numpy as np

    class PlainArrayReader(reader_class):  # type: ignore[misc]
        @property
        def data(self) -> Any:
            return self._plain

        @data.setter
        def data(self, mapped: Any) -> None:
            self._plain = mapped.view(np.ndarray)

    return PlainArrayReader
