"""The relation router (edit/router.py) behind the shared gate (edit/gate_registry.py): a text its router
sends away runs the base model, bit for bit, for its whole decode; one it passes runs the edit as it would
without a router; it decides on passes that start a text, with no gradients, while no edit trains."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit.base import EditRequest  # noqa: E402
from pytest_factedit.edit.gate_registry import GateRegistry, unrouted  # noqa: E402
from pytest_factedit.edit.router import RelationRouter, build_router, layer_states, router_layer  # noqa: E402
from pytest_factedit.edit.subject_gains import SubjectGainEdit, subject_gate_for  # noqa: E402
from pytest_factedit.errors import MethodError  # noqa: E402
from pytest_factedit.model.decoding import DecodeRow, decode, left_padded  # noqa: E402
from pytest_factedit.model.kv import cache_keyword, returned_cache  # noqa: E402
from pytest_factedit.model.targets import all_layer_targets  # noqa: E402
from pytest_factedit.model.text import encode_prompt  # noqa: E402

from .stacked_gates import KeptStates, gated_edit, registered  # noqa: E402
from .tiny import piece_tokenizer, tiny_model  # noqa: E402

ASKED = "The capital of Japan is"  # the edit's question
OTHER = "The official language of Japan is"  # the same subject, another relation
ELSEWHERE = "I love New York . York is a city in"  # no subject: the gate stays shut
TEXTS = (ASKED, OTHER, ELSEWHERE)


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any]:
    tok = piece_tokenizer()
    return tiny_model("llama", len(tok), layers=3), tok


def japan_edit(model: Any, tok: Any) -> SubjectGainEdit:
    gate = subject_gate_for(tok, [EditRequest("Japan", (ASKED,), ("Tokyo",), ("Seoul",))], "subject-sentence")
    targets = all_layer_targets(model)
    return gated_edit(model, gate, list(targets.modules), targets.feedforward, 2, 3)


def router_for(model: Any, tok: Any, text: str, threshold: float = 0.9999) -> RelationRouter:
    """A router whose one reference is `text`'s own state at layer 1: that text passes, others barely do."""
    ids = encode_prompt(tok, text, False)
    state = layer_states(model, [1], None, input_ids=torch.tensor([ids]))[1]
    return RelationRouter(1, torch.nn.functional.normalize(state.float(), dim=-1), threshold)


def counted_passes(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[int]:
    """From here on, the number of rows of each `layer_states` pass that `module` (which imports it) runs."""
    passes: list[int] = []
    real = module.layer_states

    def counted(model: Any, layers: Any, mask: Any, **inputs: Any) -> Any:
        passes.append(len(inputs["input_ids"]))
        return real(model, layers, mask, **inputs)

    monkeypatch.setattr(module, "layer_states", counted)
    return passes


def batch(tok: Any) -> dict[str, Any]:
    ids, mask, positions = left_padded([encode_prompt(tok, t, False) for t in TEXTS], tok.pad_token_id, "cpu")
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def logits(model: Any, tok: Any) -> Any:
    with torch.no_grad():
        return model(**batch(tok)).logits


def greedy(model: Any, tok: Any) -> list[tuple[int, ...]]:
    rows = [DecodeRow(encode_prompt(tok, t, False), 6, False) for t in TEXTS]
    return [d.tokens for d in decode(model, tok, rows)]


def test_a_text_sent_away_runs_the_base_model_and_one_passed_runs_the_edit(setup) -> None:
    model, tok = setup
    base, base_tokens = logits(model, tok), greedy(model, tok)
    edit, router = japan_edit(model, tok), router_for(model, tok, ASKED)  # the base model's states
    with registered([edit]):
        edited, edited_tokens = logits(model, tok), greedy(model, tok)
        edit.router = router
        routed, routed_tokens = logits(model, tok), greedy(model, tok)
    assert not torch.equal(edited[1], base[1])  # the edit reaches the other relation without a router
    assert torch.equal(routed[0], edited[0]) and routed_tokens[0] == edited_tokens[0]
    assert torch.equal(routed[1], base[1]) and routed_tokens[1] == base_tokens[1]
    assert torch.equal(routed[2], base[2]) and routed_tokens[2] == base_tokens[2]


def test_a_text_sent_away_stays_off_when_its_continuation_names_the_subject(setup) -> None:
    model, tok = setup
    body, keyword = model.model, cache_keyword(model.model)
    japan = torch.tensor([tok(" Japan", add_special_tokens=False).input_ids])
    inputs = {k: v[1:2] for k, v in batch(tok).items()}

    def continued() -> Any:
        with torch.no_grad():
            first = body(**inputs, use_cache=True)
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(japan)], dim=1)
            positions = inputs["position_ids"][:, -1:] + 1 + torch.arange(japan.shape[1])
            out = body(
                input_ids=japan,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{keyword: returned_cache(first)},
            )
            return out.last_hidden_state

    base = continued()
    edit, router = japan_edit(model, tok), router_for(model, tok, ASKED)
    with registered([edit]):
        opened = continued()
        edit.router = router
        closed = continued()
    assert not torch.equal(opened, base)  # the subject in the continuation opens the gate without a router
    assert torch.equal(closed, base)


def test_no_routing_while_an_edit_trains_or_is_localized_or_gradients_are_kept(setup) -> None:
    model, tok = setup
    edit = japan_edit(model, tok)
    with registered([edit]):
        edited = logits(model, tok)
    edit.router = router_for(model, tok, ASKED)
    with registered([edit]), torch.enable_grad():
        assert torch.equal(model(**batch(tok)).logits.detach(), edited)
    with registered([edit]):
        with unrouted(model):
            assert torch.equal(logits(model, tok), edited)  # localization's passes
        assert not torch.equal(logits(model, tok), edited)  # routed again after the block
    training = japan_edit(model, tok)
    with registered([edit, training], training=(1,)):
        mixed = logits(model, tok)
    with registered([edit, japan_edit(model, tok)]):
        edit.router = None
        without = logits(model, tok)
    assert torch.equal(mixed, without)


def test_the_router_reads_one_pass_that_stops_at_its_layer(setup) -> None:
    model, tok = setup
    edit, router = japan_edit(model, tok), router_for(model, tok, ASKED)
    ran: list[int] = []
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(model.model.layers)
    ]
    try:
        with registered([edit]):
            edit.router = router
            logits(model, tok)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0, 1] + [0, 1, 2]  # the router's pass (two rows name Japan) stops at layer 1; then the pass


def test_the_built_router_passes_the_edits_prompts_and_sets_its_threshold_under_general_texts(setup) -> None:
    model, tok = setup
    request = EditRequest("Japan", (ASKED, "Japan's capital is"), ("Tokyo",), ("Seoul",))
    router = build_router(model, tok, [request], ("", "Here is a fact. "), 1, 0.01)
    assert router.layer == 1 and router.references.shape == (4, model.config.hidden_size)
    prompts = [encode_prompt(tok, p + t, False) for t in request.prompts for p in ("", "Here is a fact. ")]
    ids, mask, positions = left_padded(prompts, tok.pad_token_id, "cpu")
    states = layer_states(model, [1], mask, input_ids=ids, position_ids=positions)[1]
    assert router.passes(states) == [True] * 4
    general = [encode_prompt(tok, t.format(subject="Japan"), False) for t in ("{subject} is", "{subject} is known for")]
    ids, mask, positions = left_padded(general, tok.pad_token_id, "cpu")
    unit = torch.nn.functional.normalize(
        layer_states(model, [1], mask, input_ids=ids, position_ids=positions)[1], dim=-1
    )
    assert float((unit @ router.references.T).max()) <= router.threshold + 0.01 + 1e-6


def test_the_routers_layer_counts_from_the_end_down_to_the_first(setup) -> None:
    model, _ = setup
    assert [router_layer(model, k) for k in (1, 2, 3, 4, 9)] == [2, 1, 0, 0, 0]
    with pytest.raises(MethodError, match="router_layer_from_end"):
        router_layer(model, 0)


def test_the_default_edit_is_routed_and_gains_on_every_token_are_not(setup) -> None:
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.edit.ia3 import IA3TwoStageEditor

    model, tok = setup
    request = EditRequest("Japan", (ASKED,), ("Tokyo",), ("Seoul",))
    targets = all_layer_targets(model)
    quick = {"learn_max_steps": 2, "unlearn_max_steps": 1, "localize": "none"}
    with IA3TwoStageEditor().apply(model, tok, request, targets, resolve_settings(quick)) as edit:
        assert isinstance(edit, SubjectGainEdit) and edit.router is not None and edit.router.layer == 1
        assert edit.router.references.shape == (2, model.config.hidden_size)  # the prompt, behind "" and a prefix
    every = resolve_settings({**quick, "gain_positions": "every"})
    with IA3TwoStageEditor().apply(model, tok, request, targets, every) as edit:
        assert not isinstance(edit, SubjectGainEdit)
    assert GateRegistry.of(model).entries == {}


def kept_states(model: Any, tok: Any) -> KeptStates:
    return KeptStates.of(model, 1, [tuple(encode_prompt(tok, t, False)) for t in TEXTS])


def test_a_row_the_router_surely_sends_away_is_not_reached_and_its_decode_is_the_base_models(setup) -> None:
    """`reaches_row` answers before the decode what the prefill's router will decide, from the kept states:
    a row it says the edit cannot reach decodes as on the base model; one it says it reaches, as edited."""
    from pytest_factedit.run.sequence_base import KeptEditReach

    model, tok = setup
    rows = [DecodeRow(encode_prompt(tok, t, False), 6, False) for t in TEXTS]
    base = [d.tokens for d in decode(model, tok, rows)]
    edit, kept, router = japan_edit(model, tok), kept_states(model, tok), router_for(model, tok, ASKED)
    with registered([edit]):
        edited = [d.tokens for d in decode(model, tok, rows)]
        edit.router = router
        registry, reach = GateRegistry.of(model), KeptEditReach(model)
        assert edit.reaches_row(rows[1].ids, [()])  # no states at hand: the router's verdict is not known
        registry.known_states = kept
        reached = [edit.reaches_row(r.ids, [d]) for r, d in zip(rows, edited)]
        routed = [d.tokens for d in decode(model, tok, rows)]
        assert [reach.row(r.ids, [d], kept) for r, d in zip(rows, edited)] == reached
        assert reach(rows[1].ids) and reach.row(rows[1].ids, [()], None)  # the pattern alone; no states
    assert reached == [True, False, False] and edited[1] != base[1]  # the subject's other relation is sent away
    assert [routed[i] == (edited[i] if reached[i] else base[i]) for i in range(3)] == [True] * 3


def test_a_row_near_the_threshold_or_decoded_while_an_edit_trains_counts_as_reached(setup) -> None:
    """Only a verdict sure by `VERDICT_SLACK` serves the base decode; no verdict while an edit trains (no
    router decides then)."""
    from pytest_factedit.edit.router import VERDICT_SLACK

    model, tok = setup
    kept = kept_states(model, tok)
    other = tuple(encode_prompt(tok, OTHER, False))
    edit = japan_edit(model, tok)
    edit.router = router_for(model, tok, ASKED)
    similarity = float(edit.router.references[0] @ torch.nn.functional.normalize(kept.get(1, other), dim=-1))
    with registered([edit]):
        GateRegistry.of(model).known_states = kept
        assert not edit.reaches_row(other, [()])
        for threshold, reached in ((similarity + VERDICT_SLACK / 2, True), (similarity + 2 * VERDICT_SLACK, False)):
            edit.router = RelationRouter(1, edit.router.references, threshold)
            assert edit.reaches_row(other, [()]) is reached
    with registered([edit, japan_edit(model, tok)], training=(1,)):
        GateRegistry.of(model).known_states = kept
        assert edit.reaches_row(other, [()])
