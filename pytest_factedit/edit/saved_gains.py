"""The saved form of subject-gated gains, read back as untrusted input.

A saved edit is a folder someone can hand over: `gate.json` and `gains.safetensors` are checked whole
against the model they go on (every key, module, shape, dtype and value) before any hook is placed, so a
tampered file fails in one line and leaves the model as it was (docs/security.md, "Saved edits are
untrusted").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SavedEditError, shown, shown_key
from ..infra.files import read_regular
from ..model.introspect import model_width, weight_of
from ..model.skip import decoder_layers
from .gate import REACHES
from .keys import is_conv1d
from .words import ENDS_SENTENCE, ENDS_WORD, JOINS, NAME_WORD

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

SAVED_FOLDER = "subject-gains"  # what `save` writes, under the edit's folder
GAINS_FILE = "gains.safetensors"
GATE_FILE = "gate.json"
SAVED_FORMAT = 1
WORD_FLAGS_KEY = "gate|word_flags"  # edit/words.py flags of the tokenizer's vocabulary, one byte per token id
ROUTER_KEY = "router|references"  # the relation router's reference states (edit/router.py), [references, d]
ROUTER_KEYS = ("layer", "threshold", "references")
MAX_REFERENCES = 4096  # a router's reference states (an edit's prompts x its training prefixes)
MAX_JSON_BYTES = 16 * 2**20  # a manifest.json or gate.json (a tiny model's one-case edit writes under 5 KB of each)
MAX_WORD_FLAGS = 2**22  # token ids with word flags (the largest vocabularies hold about 256k)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names of the floating dtypes a gain may have
ALL_FLAGS = JOINS | ENDS_WORD | NAME_WORD | ENDS_SENTENCE
REQUIRED_KEYS = ("format", "method", "stages", "modules", "feedforward", "patterns")
GATE_KEYS = (*REQUIRED_KEYS, "reach", "router")
SAVE_AGAIN = "save the edit again (factedit edit CASE --save DIR, or --factedit-save-adapters DIR)"


def gain_width(module: torch.nn.Module, feedforward: bool) -> int:
    """The input width (feed-forward: its input is scaled) or output width of a Linear or Conv1D."""
    rows, cols = weight_of(module).shape
    if is_conv1d(module):  # stored [in, out]
        return int(rows if feedforward else cols)
    return int(cols if feedforward else rows)


def refused(path: Path, key: str | None, expected: str, found: str, fix: str = SAVE_AGAIN) -> SavedEditError:
    """The one-line error for a saved edit's file: where, what was expected, what was found, the fix."""
    return SavedEditError(f"expected {expected}, found {found}. Fix: {fix}", path=path, key=key)


def kind_of(value: object) -> str:
    """What a value from a saved edit's file is, for an error: numbers and sizes, never a string's text."""
    return shown(value) if value is None or isinstance(value, (bool, int, float, list, dict)) else type(value).__name__


def file_inside(path: Path) -> Path:
    """`path`, refused when it is a link that leads out of its folder (a saved edit reads nothing from elsewhere)."""
    if not path.resolve().is_relative_to(path.parent.resolve()):
        raise refused(path, None, "a file of the edit's folder", "a link that leads outside it", "copy the real file")
    return path


def read_saved_json(path: Path) -> object:
    """A saved edit's JSON file, at most MAX_JSON_BYTES, as UTF-8 JSON; any other content is refused."""
    try:
        data, kind = read_regular(file_inside(path), MAX_JSON_BYTES)
    except FileNotFoundError as exc:
        raise refused(path, None, "a regular file", "nothing", "copy the whole edit folder") from exc
    except OSError as exc:
        raise refused(path, None, "a readable file", exc.strerror or type(exc).__name__) from exc
    if kind:  # not a FIFO to block on, nor a device to read forever
        raise refused(path, None, "a regular file", "no regular file", "copy the whole edit folder")
    if len(data) > MAX_JSON_BYTES:
        raise refused(path, None, f"at most {MAX_JSON_BYTES:,} bytes", "more")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise refused(path, None, "UTF-8 text", f"a byte that is not UTF-8 at position {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise refused(path, None, "JSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise refused(path, None, "JSON nested a few levels deep", "deeper nesting than Python parses") from exc


def _names(path: Path, gate: Mapping[str, Any], key: str, allow_empty: bool = False) -> list[str]:
    """gate[key] as a list of distinct, non-empty names (one or more, unless `allow_empty`)."""
    value = gate[key]
    if not isinstance(value, list) or not (value or allow_empty):
        raise refused(path, key, f"a list of {'' if allow_empty else 'one or more '}names", kind_of(value))
    seen: set[str] = set()
    for index, name in enumerate(value):
        if not isinstance(name, str):
            found = kind_of(name)
        elif not name or "|" in name:
            found = "an empty name or one with '|'"
        elif name in seen:
            found = "a repeated name"
        else:
            seen.add(name)
            continue
        raise refused(path, f"{key}[{index}]", "a distinct, non-empty name without '|'", found)
    return value


def _gain_modules(path: Path, names: list[str], model: PreTrainedModel) -> None:
    """Every name is a Linear or Conv1D of the model: never the model itself, nor a module of another kind."""
    import torch

    modules = dict(model.named_modules())
    for index, name in enumerate(names):
        module = modules.get(name) if name else None
        if module is None or not (isinstance(module, torch.nn.Linear) or is_conv1d(module)):
            kind = f"a {type(module).__name__}" if module is not None else "no module of the model"
            raise refused(
                path, f"modules[{index}]", f"the name of a Linear or Conv1D module of {type(model).__name__}", kind
            )
        if module.weight.dim() != 2:
            raise refused(path, f"modules[{index}]", "a module with a 2-D weight", "another weight layout")


def _patterns(path: Path, value: object) -> list[list[int]]:
    """The gate's token patterns: a list of non-empty lists of token ids (whole numbers >= 0)."""
    if not isinstance(value, list):
        raise refused(path, "patterns", "a list of token-id lists", kind_of(value))
    for index, pattern in enumerate(value):
        if not isinstance(pattern, list) or not pattern:
            found = kind_of(pattern)
        elif not all(type(token) is int and token >= 0 for token in pattern):
            found = "an entry that is not a whole number >= 0"
        else:
            continue
        raise refused(path, f"patterns[{index}]", "a non-empty list of token ids (whole numbers >= 0)", found)
    return value


def checked_gate(path: Path, model: PreTrainedModel) -> dict[str, Any]:
    """gate.json, every key checked (its modules against `model`); `reach` defaults to 'subject'."""
    gate = read_saved_json(path)
    if not isinstance(gate, dict):
        raise refused(path, None, f"a mapping with the keys {', '.join(GATE_KEYS)}", kind_of(gate))
    for key in gate:
        if key not in GATE_KEYS:
            raise refused(path, shown_key(key, 40), f"only the keys {', '.join(GATE_KEYS)}", "another key")
    for key in REQUIRED_KEYS:
        if key not in gate:
            raise refused(path, key, "the key", "nothing")
    if type(gate["format"]) is not int or gate["format"] != SAVED_FORMAT:
        raise refused(path, "format", f"{SAVED_FORMAT}", kind_of(gate["format"]), "save it again with this version")
    if not isinstance(gate["method"], str) or not gate["method"]:
        raise refused(path, "method", "the name of the method that made the edit", kind_of(gate["method"]))
    gate.setdefault("reach", REACHES[0])
    if gate["reach"] not in REACHES:
        raise refused(path, "reach", f"one of {', '.join(REACHES)}", kind_of(gate["reach"]))
    _names(path, gate, "stages")
    _gain_modules(path, _names(path, gate, "modules"), model)
    for index, name in enumerate(_names(path, gate, "feedforward", allow_empty=True)):
        if name not in gate["modules"]:
            raise refused(path, f"feedforward[{index}]", "one of the names under `modules`", "another name")
    _patterns(path, gate["patterns"])
    if "router" in gate:
        _router(path, gate["router"], model)
    return gate


def _router(path: Path, router: object, model: PreTrainedModel) -> None:
    """gate.json's `router`: the decoder layer it reads (one the model has), a threshold on a cosine
    similarity, and how many reference states gains.safetensors holds."""
    if not isinstance(router, dict) or sorted(router) != sorted(ROUTER_KEYS):
        raise refused(path, "router", f"a mapping with the keys {', '.join(ROUTER_KEYS)}", kind_of(router))
    layers = len(decoder_layers(model))
    if type(router["layer"]) is not int or not 0 <= router["layer"] < layers:
        wanted = f"a decoder layer of the model, 0 to {layers - 1}"
        raise refused(path, "router.layer", wanted, kind_of(router["layer"]))
    threshold = router["threshold"]
    if type(threshold) not in (int, float) or not -1.0 <= threshold <= 1.0:
        raise refused(path, "router.threshold", "a cosine similarity, -1 to 1", kind_of(threshold))
    count = router["references"]
    if type(count) is not int or not 1 <= count <= MAX_REFERENCES:
        raise refused(path, "router.references", f"a whole number from 1 to {MAX_REFERENCES}", kind_of(count))


def _expected_tensors(gate: Mapping[str, Any], model: PreTrainedModel) -> dict[str, list[int]]:
    """Every tensor the gate implies, by its key, with its shape: each gain ('stage|module'), and the router's
    reference states where it has one."""
    feedforward = set(gate["feedforward"])
    widths = {m: gain_width(model.get_submodule(m), m in feedforward) for m in gate["modules"]}
    shapes = {f"{stage}|{module}": [widths[module]] for stage in gate["stages"] for module in gate["modules"]}
    if "router" in gate:
        shapes[ROUTER_KEY] = [gate["router"]["references"], model_width(model)]
    return shapes


def _header_checked(path: Path, header: Mapping[str, tuple[str, list[int]]], expected: Mapping[str, list[int]]) -> None:
    """Keys, dtypes and shapes of gains.safetensors against what the gate and the model imply."""
    for key in expected:
        if key not in header:
            wanted = "the router's reference states" if key == ROUTER_KEY else "a gain for this stage and module"
            raise refused(path, key, wanted, "nothing")
    for key, (dtype, shape) in header.items():
        if key == WORD_FLAGS_KEY:
            if dtype != "U8" or len(shape) != 1 or shape[0] > MAX_WORD_FLAGS:
                found = f"{dtype} of shape {tuple(shape)}"
                raise refused(path, key, f"U8 of shape (n,), n <= {MAX_WORD_FLAGS:,}", found)
        elif key not in expected:
            raise refused(path, shown_key(key, 40), "only the gains of gate.json's stages and modules", "another key")
        elif dtype not in FLOAT_DTYPES or list(shape) != expected[key]:
            found = f"{dtype} of shape {tuple(shape)}"
            what = "reference states" if key == ROUTER_KEY else "gain"
            raise refused(path, key, f"floating {what} of shape {tuple(expected[key])} for the model", found)


def _values_checked(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every gain finite; every word flag one of the bits edit/words.py sets."""
    import torch

    for key, tensor in tensors.items():
        if key == WORD_FLAGS_KEY:
            if bool((tensor > ALL_FLAGS).any()):  # the flags are the four low bits
                raise refused(path, key, f"flags made of the bits {ALL_FLAGS:#x}", "other bits")
        elif not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise refused(path, key, "finite values", f"{bad} NaN or infinite values")


def checked_gains(path: Path, gate: Mapping[str, Any], model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """gains.safetensors, checked against `gate` (already checked) and `model`, before anything is loaded
    from it: the keys, dtypes and shapes from its header, then every value."""
    from safetensors import SafetensorError, safe_open

    expected = _expected_tensors(gate, model)
    try:
        with safe_open(str(file_inside(path)), framework="pt") as fh:
            slices = {key: fh.get_slice(key) for key in fh.keys()}
            _header_checked(path, {k: (s.get_dtype(), s.get_shape()) for k, s in slices.items()}, expected)
            tensors = {key: fh.get_tensor(key) for key in slices}
    except (OSError, SafetensorError) as exc:
        raise refused(path, None, "a safetensors file", f"one that cannot be read ({type(exc).__name__})") from exc
    _values_checked(path, tensors)
    return tensors
