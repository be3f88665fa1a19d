"""The base model's last-token states a relation router reads (model/state_store.py), kept by text: read
back instead of computed where the caller vouches for the base model, only for texts a pass reads as it
would alone, bit-equal answers either way, and a stored file that cannot be used set aside with a note."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save  # noqa: E402

from pytest_factedit.edit import gate_registry  # noqa: E402
from pytest_factedit.edit.gate_registry import router_states_served  # noqa: E402
from pytest_factedit.edit.router import layer_states, settings_router_layers  # noqa: E402
from pytest_factedit.model import state_store  # noqa: E402
from pytest_factedit.model.decoding import DecodeRow, decode, left_padded  # noqa: E402
from pytest_factedit.model.state_store import LastTokenStates, row_texts, states_recorded  # noqa: E402
from pytest_factedit.model.text import encode_prompt  # noqa: E402

from .stacked_gates import registered  # noqa: E402
from .test_router import ASKED, OTHER, TEXTS, counted_passes, japan_edit, logits, router_for  # noqa: E402
from .tiny import piece_tokenizer, tiny_model  # noqa: E402

IDENTITY = {"weights": "w", "dtype": "float32"}
WIDTH = 4


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any]:
    tok = piece_tokenizer()
    return tiny_model("llama", len(tok), layers=3), tok


def _vector(n: float) -> Any:
    return torch.full((WIDTH,), n)


def test_states_are_read_back_by_text_and_layer_from_the_file(tmp_path: Path) -> None:
    written = LastTokenStates(IDENTITY, WIDTH, tmp_path)
    written.add(2, {(5, 6): _vector(1.0), (7,): _vector(2.0)})
    written.add(3, {(5, 6): _vector(3.0)})
    written.save()
    read = LastTokenStates(IDENTITY, WIDTH, tmp_path)
    assert torch.equal(read.get(2, (5, 6)), _vector(1.0)) and torch.equal(read.get(2, (7,)), _vector(2.0))
    assert torch.equal(read.get(3, (5, 6)), _vector(3.0))
    assert read.get(3, (7,)) is None and read.get(2, (5,)) is None
    assert LastTokenStates({**IDENTITY, "weights": "other"}, WIDTH, tmp_path).get(2, (7,)) is None
    assert LastTokenStates(IDENTITY, WIDTH).get(2, (7,)) is None  # no folder: memory only
    with pytest.raises(ValueError, match="width 4"):
        read.add(2, {(1,): torch.zeros(5)})


def test_a_save_keeps_what_another_process_saved_and_the_newest_states_within_the_bound(tmp_path, monkeypatch):
    one, other = LastTokenStates(IDENTITY, WIDTH, tmp_path), LastTokenStates(IDENTITY, WIDTH, tmp_path)
    one.add(1, {(1,): _vector(1.0)})
    one.save()
    other.add(1, {(2,): _vector(2.0)})
    other.save()
    read = LastTokenStates(IDENTITY, WIDTH, tmp_path)
    assert read.get(1, (1,)) is not None and read.get(1, (2,)) is not None
    monkeypatch.setattr(state_store, "MEMORY_BYTES", 3 * WIDTH * 4)  # three float32 states a layer in memory
    monkeypatch.setattr(state_store, "STORE_BYTES", 2 * WIDTH * 4)  # two on disk
    read.add(1, {(3,): _vector(3.0), (4,): _vector(4.0)})
    assert read.get(1, (1,)) is None and all(read.get(1, (n,)) is not None for n in (2, 3, 4))
    read.save()
    again = LastTokenStates(IDENTITY, WIDTH, tmp_path)
    assert again.get(1, (2,)) is None and torch.equal(again.get(1, (3,)), _vector(3.0))
    assert torch.equal(again.get(1, (4,)), _vector(4.0))
    monkeypatch.setattr(state_store, "STORE_LAYERS", 2)
    again.add(2, {(1,): _vector(1.0)})
    again.add(1, {(4,): _vector(4.0)})
    again.add(3, {(1,): _vector(1.0)})  # layer 2 was added to least recently
    assert again.get(2, (1,)) is None and again.get(1, (4,)) is not None and again.get(3, (1,)) is not None


def _stored(tmp_path: Path, tensors: dict[str, Any], identity: dict[str, str] | None = None) -> Path:
    import json

    store = LastTokenStates(IDENTITY, WIDTH, tmp_path)
    assert store.path is not None
    meta = {"identity": json.dumps(identity if identity is not None else store.identity, sort_keys=True)}
    store.path.write_bytes(save(tensors, metadata=meta))
    return store.path


GOOD = {
    "layer1|states": torch.zeros(2, WIDTH),
    "layer1|ids": torch.tensor([1, 2, 3]),
    "layer1|lengths": torch.tensor([1, 2]),
}
DAMAGES = {
    "not safetensors": lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"),
    "cut short": lambda p: p.write_bytes(p.read_bytes()[:40]),
    "its tensors cut short": lambda p: p.write_bytes(p.read_bytes()[:-8]),
    "another identity": lambda p: _stored(p.parent, GOOD, {"weights": "other"}),
    "another width": lambda p: _stored(p.parent, {**GOOD, "layer1|states": torch.zeros(2, WIDTH + 1)}),
    "an unknown tensor": lambda p: _stored(p.parent, {**GOOD, "../layer1|states": torch.zeros(1)}),
    "lengths that do not split the ids": lambda p: _stored(p.parent, {**GOOD, "layer1|lengths": torch.tensor([1, 3])}),
    "a text of no tokens": lambda p: _stored(p.parent, {**GOOD, "layer1|lengths": torch.tensor([3, 0])}),
    "float ids": lambda p: _stored(p.parent, {**GOOD, "layer1|ids": torch.tensor([1.0, 2.0, 3.0])}),
    "a state that is not finite": lambda p: _stored(
        p.parent, {**GOOD, "layer1|states": torch.tensor([[float("nan")] * WIDTH, [0.0] * WIDTH])}
    ),
    "lacks its ids": lambda p: _stored(p.parent, {k: v for k, v in GOOD.items() if not k.endswith("ids")}),
    "a folder": lambda p: (p.unlink(), p.mkdir()),
    "a FIFO": lambda p: (p.unlink(), os.mkfifo(p)),
}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_stored_file_that_cannot_be_used_is_reported_and_set_aside(tmp_path, capsys, how) -> None:
    path = _stored(tmp_path, GOOD)
    assert LastTokenStates(IDENTITY, WIDTH, tmp_path).get(1, (2, 3)) is not None
    DAMAGES[how](path)
    read = LastTokenStates(IDENTITY, WIDTH, tmp_path)
    assert "not using the state cache" in capsys.readouterr().err
    assert read.get(1, (2, 3)) is None
    if how not in ("a folder",):
        read.add(1, {(9,): _vector(9.0)})
        read.save()  # written anew
        assert torch.equal(LastTokenStates(IDENTITY, WIDTH, tmp_path).get(1, (9,)), _vector(9.0))


def test_a_cache_that_cannot_be_written_is_reported_and_the_run_goes_on(tmp_path, capsys) -> None:
    (tmp_path / "blocked").write_text("a file where the folder would be")
    store = LastTokenStates(IDENTITY, WIDTH, tmp_path / "blocked")
    store.add(1, {(1,): _vector(1.0)})
    store.save()
    assert "could not write the state cache" in capsys.readouterr().err
    assert torch.equal(store.get(1, (1,)), _vector(1.0))


def test_only_texts_read_as_they_would_be_alone_are_keyed(setup) -> None:
    _, tok = setup
    texts = [encode_prompt(tok, t, False) for t in TEXTS]
    ids, mask, positions = left_padded(texts, tok.pad_token_id, "cpu")
    assert row_texts(ids, {"attention_mask": mask, "position_ids": positions}, [0, 1, 2]) == dict(enumerate(texts))
    assert row_texts(ids, {"attention_mask": mask}, [1]) == {1: texts[1]}
    shifted = positions + 1
    assert row_texts(ids, {"attention_mask": mask, "position_ids": shifted}, [0, 1, 2]) == {}
    right = mask.flip(-1)  # padding after the text
    assert row_texts(ids, {"attention_mask": right}, [i for i in range(3) if not bool(mask[i].all())]) == {}
    assert row_texts(ids[:1], {}, [0]) == {0: tuple(ids[0].tolist())}


def test_served_states_replace_the_routers_pass_and_answer_bit_for_bit_the_same(setup, monkeypatch) -> None:
    model, tok = setup
    computed = counted_passes(monkeypatch, gate_registry)
    edit, router = japan_edit(model, tok), router_for(model, tok, ASKED)
    states = LastTokenStates(IDENTITY, model.config.hidden_size)
    with registered([edit]):
        edit.router = router
        alone = logits(model, tok)
        with router_states_served(model, states):
            first = logits(model, tok)
            second = logits(model, tok)
        outside = logits(model, tok)
    assert computed == [2, 2, 2]  # two rows name Japan: computed alone, once in the block, and after it
    assert torch.equal(first, alone) and torch.equal(second, alone) and torch.equal(outside, alone)
    other = encode_prompt(tok, OTHER, False)
    assert states.get(router.layer, other) is not None


def test_a_served_state_is_what_the_router_decides_on(setup) -> None:
    """A state put in place of the other relation's own (the edit's prompt's) lets the edit reach it."""
    model, tok = setup
    edit, router = japan_edit(model, tok), router_for(model, tok, ASKED)
    states = LastTokenStates(IDENTITY, model.config.hidden_size)
    asked, other = encode_prompt(tok, ASKED, False), encode_prompt(tok, OTHER, False)
    with registered([edit]):
        unrouted = logits(model, tok)
        edit.router = router
        routed = logits(model, tok)
        with router_states_served(model, states):
            logits(model, tok)
            states.add(router.layer, {other: states.get(router.layer, asked)})
            swapped = logits(model, tok)
    assert not torch.equal(routed[1], unrouted[1]) and torch.equal(swapped[1], unrouted[1])
    assert torch.equal(swapped[0], routed[0])


def test_no_states_are_served_without_a_store_or_a_gated_edit(setup) -> None:
    model, tok = setup
    states = LastTokenStates(IDENTITY, model.config.hidden_size)
    with router_states_served(model, states):  # no edit on the model: nothing to serve, nothing kept
        logits(model, tok)
    assert not any(states.get(1, encode_prompt(tok, t, False)) is not None for t in TEXTS)
    edit = japan_edit(model, tok)
    with registered([edit]):
        edit.router = router_for(model, tok, ASKED)
        with router_states_served(model, None):
            assert gate_registry.GateRegistry.of(model).known_states is None


def test_the_base_models_decodes_keep_each_prompts_state_as_the_routers_pass_computes_it(setup) -> None:
    model, tok = setup
    states = LastTokenStates(IDENTITY, model.config.hidden_size)
    texts = [encode_prompt(tok, t, False) for t in TEXTS]
    with states_recorded(model, [1, 2], states):
        decode(model, tok, [DecodeRow(t, 4, False) for t in texts])
    ids, mask, positions = left_padded(texts, tok.pad_token_id, "cpu")
    expected = layer_states(model, [1, 2], mask, input_ids=ids, position_ids=positions)
    for layer in (1, 2):
        for row, text in enumerate(texts):
            assert torch.equal(states.get(layer, text), expected[layer][row])
    assert len(states._layers[1]) == len(texts)  # the greedy steps after the prefill keep nothing
    before = dict(states._layers[1])
    decode(model, tok, [DecodeRow(texts[0] + (5,), 2, False)])  # outside the block
    assert states._layers[1] == before


def test_the_layers_kept_are_those_a_routed_editors_settings_read(setup) -> None:
    from pytest_factedit.edit import resolve_settings

    model, _ = setup
    assert settings_router_layers(model, resolve_settings({})) == (1,)  # the default: from the end 2 of 3
    assert settings_router_layers(model, resolve_settings({"router_layer_from_end": 0})) == ()
    assert settings_router_layers(model, resolve_settings({"gain_positions": "every"})) == ()
    assert settings_router_layers(model, resolve_settings({"name": "rome"})) == ()


def test_a_router_is_built_from_the_kept_states_of_its_texts_and_one_pass_over_the_others(setup, monkeypatch) -> None:
    """The base probe decodes an edit's prompts and the subject's general texts; the router built after the
    edit reads their states there and computes only the prompts behind a training prefix, which it keeps."""
    from pytest_factedit.edit import router as router_module
    from pytest_factedit.edit.base import EditRequest
    from pytest_factedit.edit.retention import SUBJECT_TEMPLATES, subject_texts

    model, tok = setup
    computed = counted_passes(monkeypatch, router_module)
    request = EditRequest("Japan", (ASKED, "Japan's capital is"), ("Tokyo",), ("Seoul",))
    prefixes = ("", "Here is a fact. ")
    general = subject_texts("Japan", request.prompts, len(SUBJECT_TEMPLATES))
    probed = [encode_prompt(tok, t, False) for t in (*request.prompts, *general, OTHER)]
    states = LastTokenStates(IDENTITY, model.config.hidden_size)
    with states_recorded(model, [1], states):  # as the base probe decodes them, in one batch
        decode(model, tok, [DecodeRow(t, 2, False) for t in probed])
    fresh = router_module.build_router(model, tok, [request], prefixes, 1, 0.01)
    assert computed == [2 * len(request.prompts) + len(general)]
    kept = router_module.build_router(model, tok, [request], prefixes, 1, 0.01, states)
    assert computed[1:] == [len(request.prompts)]  # the prompts behind "Here is a fact. " only
    assert torch.allclose(kept.references, fresh.references, atol=1e-6)
    assert kept.threshold == pytest.approx(fresh.threshold, abs=1e-6)
    prefixed = encode_prompt(tok, "Here is a fact. " + ASKED, False)
    assert states.get(1, prefixed) is not None
    again = router_module.build_router(model, tok, [request], prefixes, 1, 0.01, states)
    assert computed[2:] == [] and torch.equal(again.references, kept.references)
    assert again.threshold == kept.threshold
