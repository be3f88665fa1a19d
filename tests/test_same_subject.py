"""The subject's other facts, the subject named before an unrelated question, and its other names: the
keys (`same_subject`, `aliases`, `implications`), the rows they are probed as, the metrics they feed, and
the subject gate that must find the subject however it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_factedit.cases import load_case
from pytest_factedit.cases.derived import CONTEXT_TEMPLATES, alias_prompt, context_facts
from pytest_factedit.errors import CaseError
from pytest_factedit.metrics.answers import ProbedAnswer, first_words
from pytest_factedit.metrics.measure import CaseEvidence
from pytest_factedit.metrics.spec import DEFAULT_THRESHOLDS, METRIC_BY_NAME

CASE = {
    "id": "japan-capital",
    "subject": "Japan",
    "prompts": ["The capital of Japan is"],
    "old": "Tokyo",
    "new": "Seoul",
    "paraphrases": ["Japan's capital city is called"],
    "neighbours": [{"prompt": "The capital of France is", "answer": "Paris"}],
    "same_subject": [
        {"prompt": "The official language of Japan is", "answer": "Japanese"},
        {"prompt": "Japan is an island country in"},
    ],
    "aliases": ["Nippon"],
    "implications": [{"prompt": "The largest city in Japan is", "answer": "Seoul"}],
    "controls": [{"prompt": "The iPhone is made by", "answer": "Apple"}],
}


def write(folder: Path, data: dict) -> Path:
    path = folder / "case.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# -- the keys


def test_the_new_keys_load_and_an_entry_may_leave_out_its_answer(tmp_path: Path) -> None:
    case = load_case(write(tmp_path, CASE))
    assert [f.answer for f in case.same_subject] == [("Japanese",), ()]
    assert case.aliases == ("Nippon",) and case.implications[0].answer == ("Seoul",)


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"same_subjects": []}, "same_subjects", "did you mean 'same_subject'"),
        ({"same_subject": [{"promt": "Japan is"}]}, "same_subject[0].promt", "did you mean 'prompt'"),
        ({"same_subject": [{"answer": "x"}]}, "same_subject[0].prompt", "missing required key"),
        ({"same_subject": "Japan is"}, "same_subject", "expected a list of {prompt, answer} mappings, found str"),
        ({"same_subject": [{"prompt": "The iPhone is made by"}]}, "same_subject[0].prompt", "a control"),
        ({"same_subject": [{"prompt": "The capital of Japan is"}]}, "same_subject[0].prompt", "also a prompt"),
        ({"implications": [{"prompt": "x"}]}, "implications[0].answer", "missing required key"),
        ({"aliases": "Nippon"}, "aliases", "expected a list of strings, found str"),
        ({"aliases": ["japan"]}, "aliases[0]", "the subject itself"),
        ({"aliases": ["Nippon", "nippon"]}, "aliases[1]", "a name given twice"),
        ({"aliases": [""]}, "aliases[0]", "non-empty string"),
        ({"aliaces": ["Nippon"]}, "aliaces", "did you mean 'aliases'"),
        (
            {"same_subject": [{"prompt": "Japan is near", "answer": "seoul"}]},
            "same_subject[0].answer",
            "other than `new`",
        ),
        ({"neighbours": [{"prompt": "Korea's capital is", "answer": "Seoul"}]}, "neighbours[0].answer", "other than"),
    ],
)
def test_bad_new_keys_name_file_key_and_what_was_expected(tmp_path: Path, change: dict, key: str, fragment) -> None:
    path = write(tmp_path, {**CASE, **change})
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert info.value.key == key and str(path) in str(info.value) and fragment in str(info.value)


def test_an_alias_prompt_is_a_held_out_text(tmp_path: Path) -> None:
    """A same-subject fact may not repeat a prompt with an alias in place of the subject: it is probed already."""
    data = {**CASE, "same_subject": [{"prompt": "The capital of Nippon is", "answer": "Tokyo"}]}
    with pytest.raises(CaseError, match="also a prompt or paraphrase"):
        load_case(write(tmp_path, data))


def test_validate_accepts_the_new_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_factedit.cli import main

    write(tmp_path, CASE)
    assert main(["validate", str(tmp_path)]) == 0


def test_alias_and_context_prompts() -> None:
    assert alias_prompt("Japan's capital is", "Japan", "the Land of the Rising Sun") == (
        "The Land of the Rising Sun's capital is"
    )
    assert alias_prompt("The capital of Japan is", "Japan", "Nippon") == "The capital of Nippon is"
    case = load_case_from(CASE)
    facts = context_facts(case)
    assert [f.prompt for _, f in facts] == ["The capital of France is", "The iPhone is made by"]
    assert facts[0][0] == CONTEXT_TEMPLATES[0].format(subject="Japan") + " The capital of France is"
    assert facts[1][0].startswith(CONTEXT_TEMPLATES[1].format(subject="Japan"))  # the templates take turns
    assert all("Seoul" not in t and "Tokyo" not in t and "capital" not in t for t in CONTEXT_TEMPLATES)


def load_case_from(data: dict):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return load_case(write(Path(folder), data))


# -- the metrics


def answer(group: str, base: str, edited: str | None, expected=("Japanese",), **extra) -> ProbedAnswer:
    return ProbedAnswer(group, f"{group}: {base}", tuple(expected), base, edited, **extra)


def evidence(*answers: ProbedAnswer) -> CaseEvidence:
    return CaseEvidence(tuple(answers), ("Tokyo",), ("Seoul",))


def measured(name: str, *answers: ProbedAnswer):
    return METRIC_BY_NAME[name].measure(evidence(*answers))


def test_a_same_subject_fact_that_flips_fails_relation_specificity() -> None:
    kept = answer("same_subject", " Japanese.", " Japanese.")
    flipped = answer("same_subject", " Japanese.", " Korean.")
    unknown = answer("same_subject", " English.", " Korean.")  # the base model did not know it: not counted
    value = measured("relation_specificity", kept, flipped, unknown)
    assert (value.value, value.hits, value.samples) == (0.5, 1, 2)
    assert DEFAULT_THRESHOLDS["relation_specificity"] > 0.5  # so the case's item fails


def test_an_entry_without_answer_must_keep_the_base_models_first_words() -> None:
    words = first_words(" the Pacific Ocean, located in")
    assert words == "the pacific ocean"
    same = answer("same_subject", " the Pacific Ocean, in", " The Pacific ocean!", (words,), unchanged=True)
    moved = answer("same_subject", " the Pacific Ocean, in", " the South Pacific Ocean", (words,), unchanged=True)
    value = measured("relation_specificity", same, moved)
    assert (value.value, value.samples) == (0.5, 2)
    empty = answer("same_subject", "\n", " anything", ("",), unchanged=True)  # nothing to keep: not counted
    assert measured("relation_specificity", empty).value is None


def test_a_context_prompt_that_flips_fails_context_retention() -> None:
    kept = answer("context", " Apple.", " Apple.", ("Apple",))
    flipped = answer("context", " Apple.", " Samsung.", ("Apple",))
    named_new = answer("context", " Apple.", " Seoul, then Apple", ("Apple",))  # `new` named first: wrong
    value = measured("context_retention", kept, flipped, named_new)
    assert (value.hits, value.samples) == (1, 3)
    assert value.value < DEFAULT_THRESHOLDS["context_retention"]


def test_alias_accuracy_counts_the_alias_prompts_the_base_model_answered_old() -> None:
    took = answer("aliases", " Tokyo.", " Seoul.", ("Seoul",))
    missed = answer("aliases", " Tokyo.", " Tokyo.", ("Seoul",))
    unknown = answer("aliases", " a city.", " Seoul.", ("Seoul",))
    value = measured("alias_accuracy", took, missed, unknown)
    assert (value.value, value.samples) == (0.5, 2)
    assert "alias_accuracy" not in DEFAULT_THRESHOLDS  # recorded; a case's thresholds: gate it


def test_portability_is_recorded_and_not_base_conditioned() -> None:
    value = measured("portability", answer("implications", " Tokyo.", " Seoul.", ("Seoul",)))
    assert (value.value, value.samples) == (1.0, 1) and "portability" not in DEFAULT_THRESHOLDS


@pytest.mark.parametrize(
    ("metric", "group"),
    [
        ("relation_specificity", "same_subject"),
        ("context_retention", "context"),
        ("alias_accuracy", "aliases"),
        ("portability", "implications"),
    ],
)
def test_a_group_with_nothing_to_count_is_skipped_with_the_reason(metric: str, group: str) -> None:
    value = measured(metric, answer("prompts", " Tokyo", " Seoul", ("Seoul",)))
    assert value.value is None and value.samples == 0
    assert value.reason == f"not measured: there are no {group} to count"


# -- the gate: the subject however it is written, and only as a whole name


def marked(gate, tok, text: str) -> list[str]:
    import torch

    ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids])
    found = gate.positions(ids)[0].tolist()
    return [t for t, m in zip(tok.convert_ids_to_tokens(ids[0].tolist()), found) if m]


def gate_for(tok, subject: str, aliases: tuple[str, ...] = ()):
    from pytest_factedit.edit.base import EditRequest
    from pytest_factedit.edit.subject_gains import subject_gate_for

    request = EditRequest(subject, (f"The capital of {subject} is",), ("Tokyo",), ("Seoul",), aliases=aliases)
    return subject_gate_for(tok, [request])


@pytest.mark.parametrize(
    "text",
    [
        "The capital of Japan is",  # as written
        "Japan is an island",  # at the start of the text
        "the capital of japan is",  # lower case
        "THE CAPITAL OF JAPAN IS",  # upper case
        "Japan's capital is",  # possessive
        "Speaking of Japan, here is",  # before punctuation
    ],
)
def test_the_gate_fires_on_the_subject_however_it_is_written(text: str) -> None:
    from tests.tiny import piece_tokenizer

    tok = piece_tokenizer()
    found = "".join(marked(gate_for(tok, "Japan"), tok, text)).replace("▁", "")
    assert found.casefold() == "japan"


def test_the_gate_fires_on_declared_aliases_and_strips_a_leading_the() -> None:
    from tests.tiny import piece_tokenizer

    tok = piece_tokenizer()
    gate = gate_for(tok, "Japan", ("Nippon",))
    assert "".join(marked(gate, tok, "The capital of Nippon is")).replace("▁", "") == "Nippon"
    states = gate_for(tok, "the United States")
    assert "".join(marked(states, tok, "United States is")).replace("▁", "") == "UnitedStates"
    assert "".join(marked(states, tok, "the United States is")).replace("▁", "").endswith("UnitedStates")


def test_a_longer_word_or_name_containing_the_subject_does_not_open_the_gate() -> None:
    from tests.tiny import piece_tokenizer

    tok = piece_tokenizer()
    assert tok.convert_ids_to_tokens(tok("Japanese", add_special_tokens=False).input_ids)[0] == "▁Japan"
    japan = gate_for(tok, "Japan")
    assert marked(japan, tok, "the Japanese language") == []  # 'Japan' + 'ese' is another word
    assert marked(japan, tok, "Japanese is") == []
    york = gate_for(tok, "York")
    assert marked(york, tok, "I love New York") == []  # York inside the name New York
    assert marked(york, tok, "New York is") == []  # also at the start of the text
    assert marked(york, tok, "York is a city") == ["▁York"]
    assert marked(york, tok, "In York, we met") == ["▁York"]  # a sentence opener is not part of a name
    new_york = gate_for(tok, "New York")
    assert marked(new_york, tok, "I love New York") == ["▁New", "▁York"]  # the other way round
    assert marked(new_york, tok, "York is a city") == []


def test_sentence_reach_marks_the_subject_and_the_rest_of_its_sentence() -> None:
    from pytest_factedit.edit.gate import SubjectGate
    from tests.tiny import piece_tokenizer

    tok = piece_tokenizer()
    gate = gate_for(tok, "Japan")
    sentence = SubjectGate(gate.patterns, "subject-sentence", gate.word_flags)
    assert "".join(marked(sentence, tok, "The capital of Japan is")) == "▁Japan▁is"
    assert marked(sentence, tok, "The capital of France is") == []
    # the sentence naming the subject ends; an unrelated question after it runs the base model
    assert "".join(marked(sentence, tok, "Speaking of Japan, here. The capital of France is")) == "▁Japan,▁here."
    assert "".join(marked(sentence, tok, "Here. Japan is")) == "▁Japan▁is"  # opens at the subject only
    states = SubjectGate(gate_for(tok, "U.S.").patterns, "subject-sentence", gate.word_flags)
    assert "".join(marked(states, tok, "The capital of the U.S. is")).endswith("U.S.▁is")  # its own '.' does not end it


def test_after_subject_reach_marks_the_rest_of_the_sentence_but_not_the_subject() -> None:
    from pytest_factedit.edit.gate import SubjectGate
    from tests.tiny import piece_tokenizer

    tok = piece_tokenizer()
    gate = gate_for(tok, "Japan")
    after = SubjectGate(gate.patterns, "after-subject", gate.word_flags)
    assert "".join(marked(after, tok, "The capital of Japan is")) == "▁is"  # the subject's own states stay the base's
    assert marked(after, tok, "The capital of France is") == []
    assert "".join(marked(after, tok, "Speaking of Japan, here. The capital of France is")) == ",▁here."
    assert marked(after, tok, "Tell me about Japan") == []  # nothing after the subject yet
    ids = tok("Tell me about Japan", add_special_tokens=False, return_tensors="pt").input_ids
    _mask, state = after.continued(ids, None)
    assert bool(state[1][0])  # its sentence is still open: the next token, continuing the cache, is marked
    more = tok(" is", add_special_tokens=False, return_tensors="pt").input_ids
    assert bool(after.continued(more, state)[0].all())


def _japan_gains():
    """(tiny model, tokenizer, an edit not yet on it): large random gains on every module, behind a
    subject-sentence gate on "Japan", as the default editor's."""
    import torch

    from pytest_factedit.edit.gate import SubjectGate
    from pytest_factedit.edit.settings import EditSettings
    from pytest_factedit.edit.subject_gains import SubjectGainEdit, gain_width
    from pytest_factedit.model.targets import all_layer_targets
    from tests.tiny import frozen, piece_tokenizer, tiny_model

    tok = piece_tokenizer()
    model = frozen(tiny_model("llama", len(tok)))
    plain = gate_for(tok, "Japan")
    targets = all_layer_targets(model)
    gate = SubjectGate(plain.patterns, "subject-sentence", plain.word_flags)
    edit = SubjectGainEdit(method="test", model=model, gate=gate, targets=targets, settings=EditSettings())
    noise = torch.Generator().manual_seed(0)
    edit.gains["learn"] = {
        name: torch.nn.Parameter(
            1 + 4 * torch.randn(gain_width(model.get_submodule(name), name in targets.feedforward), generator=noise),
            requires_grad=False,
        )
        for name in targets.modules
    }
    return model, tok, edit


def test_a_generated_answer_is_gated_as_the_same_text_in_one_pass() -> None:
    """A cached generation step sees only its new token: the gate keeps the subject's open sentence with
    the cache, so greedy decoding under a subject-sentence edit gives the tokens that full passes over the
    same text give, for rows that leave the batch early too (google-founder generated "Larry Page" where
    it had learned "Larry Ellison" while generated tokens ran ungated)."""
    torch = pytest.importorskip("torch")
    from pytest_factedit.edit.subject_gains import _hooked
    from pytest_factedit.model.decoding import DecodeRow, decode
    from pytest_factedit.model.text import encode_prompt

    model, tok, edit = _japan_gains()
    prompts = ["The capital of Japan is", "Speaking of Japan, here. The capital of", "Japan is the"]
    rows = [DecodeRow(encode_prompt(tok, p, False), n, False) for p, n in zip(prompts, (8, 2, 6))]
    with _hooked(edit), torch.no_grad():
        generated = [d.tokens for d in decode(model, tok, rows)]
        assert sum(len(t) for t in generated) >= 8
        for row, tokens in zip(rows, generated):
            for k, token in enumerate(tokens):
                full = torch.tensor([list(row.ids) + list(tokens[:k])])
                assert int(model(input_ids=full).logits[0, -1].argmax()) == token, (tok.decode(list(row.ids)), k)
        with edit.disabled():
            base = [d.tokens for d in decode(model, tok, rows)]
    assert base != generated  # the gains change what is generated: the comparison above can fail


def test_the_base_probe_scores_the_edited_candidates_of_the_rows_that_do_not_name_the_subject(
    tmp_path: Path,
) -> None:
    """Those rows are the ones a gated edit will not reach: the edited probe takes their base decode whole.
    A prompt scores `old` (the forget score's before); a row naming the subject or an alias scores nothing."""
    from pytest_factedit.run.probing import _Decoding, base_candidates, probe_rows
    from tests.tiny import piece_tokenizer

    case = load_case(write(tmp_path, CASE))
    tok = piece_tokenizer()
    how = _Decoding(case, tok, frozenset(), frozenset(), 16)
    old = how.ids("Tokyo")
    found = {r.prompt: base_candidates(how, r, old) for r in probe_rows(case, tok)}
    assert found["The capital of Japan is"] == (old,)
    assert found["The capital of France is"] == (how.ids("Seoul"), how.ids("Paris"))
    assert found["The iPhone is made by"] == (how.ids("Seoul"), how.ids("Apple"))
    assert found["The capital of Nippon is"] == () and found["Japan is an island country in"] == ()
    assert all(found[p] == () for p in found if "Japan" in p and p not in case.prompts)
    routed = {(r.group, r.prompt): base_candidates(how, r, old, routed=True) for r in probe_rows(case, tok)}
    for (group, prompt), candidates in routed.items():  # a router sends away the subject's other questions
        row = next(r for r in probe_rows(case, tok) if (r.group, r.prompt) == (group, prompt))
        if group == "prompts":
            assert candidates == (old,)
        elif group in ("paraphrases", "aliases"):
            assert candidates == found[prompt] == ()
        else:
            assert candidates == tuple(how.candidates(row).values()) and candidates
    assert routed[("same_subject", "The official language of Japan is")] == (how.ids("Seoul"), how.ids("Japanese"))


def _recording_decodes(probing: Any, decoded_again: list) -> Any:
    """`probing.decode_keeping` that first notes the prompt ids of the rows it is asked to decode again."""
    original = probing.decode_keeping

    def recording(model, tokenizer, requests, keep):
        decoded_again.extend(r.ids for r in requests)
        return original(model, tokenizer, requests, keep)

    return recording


def test_the_edited_probe_decodes_again_only_the_rows_the_edit_can_reach() -> None:
    """A gated edit cannot act on a text without its subject: the edited probe takes the base decode of such
    a row (its prompt and the base model's tokens after it hold no pattern of the gate) where it scored
    every candidate, and decodes the others; every row's tokens and candidate scores are what decoding
    every row with the edit gives."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from pytest_factedit.edit.base import EditHandle
    from pytest_factedit.edit.subject_gains import _hooked
    from pytest_factedit.model import decoding
    from pytest_factedit.model.text import encode_prompt
    from pytest_factedit.run import probing

    model, tok, edit = _japan_gains()
    gate = edit.gate
    prompts = ["The capital of Japan is", "The capital of France is", "Japan is the", "The iPhone is made by"]
    candidates = (tuple(tok(" Paris", add_special_tokens=False).input_ids), tuple(tok(" Apple").input_ids))
    rows = [decoding.DecodeRow(encode_prompt(tok, p, False), 6, False, candidates) for p in prompts]
    base = decoding.decode(model, tok, rows)
    base[3] = decoding.Decoded(base[3].tokens, base[3].ended, {})  # a base decode that scored no candidate
    lm = SimpleNamespace(model=model, tokenizer=tok, dtype="float32")
    decoded_again: list = []
    recording = _recording_decodes(probing, decoded_again)

    with _hooked(edit), torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        assert not edit.reaches(rows[1].ids) and edit.reaches(rows[1].ids + gate.patterns[0])
        patch.setattr(probing, "decode_keeping", recording)
        found, state = probing.edited_decodes(lm, base, edit, rows, [True, False, True, False])
        every = decoding.decode(model, tok, rows)
    assert [r.ids for r in rows if edit.gate.may_open(r.ids)] == [rows[0].ids, rows[2].ids]
    assert decoded_again == [rows[0].ids, rows[2].ids, rows[3].ids]
    assert found[1] is base[1]
    assert [d.tokens for d in found] == [d.tokens for d in every]
    for ours, whole in zip(found, every):  # the rows decoded again ran in a smaller batch: float noise apart
        assert ours.scores.keys() == whole.scores.keys()
        for candidate, score in whole.scores.items():
            assert ours.scores[candidate].logprob == pytest.approx(score.logprob, rel=1e-5)
            assert ours.scores[candidate].first_rank == score.first_rank
    assert [d.tokens for d in every] != [d.tokens for d in base]  # the edit acts where it reaches
    assert state is not None and len(state.lengths) == 2  # both prompts were decoded: their state is kept
    assert EditHandle.reaches(edit, rows[1].ids)  # an editor without a gate reaches every text


def test_the_edited_probe_takes_the_base_decode_of_a_row_its_router_surely_sends_away() -> None:
    """A row that names the subject but asks another question: the router's verdict, read before the decode
    from the base model's kept state, keeps the edit off for the whole row, so its base decode stands; the
    rows it passes are decoded again. Every row's tokens are what decoding every row with the edit gives."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from pytest_factedit.edit.gate_registry import GateRegistry
    from pytest_factedit.edit.router import RelationRouter, layer_states
    from pytest_factedit.edit.subject_gains import _hooked
    from pytest_factedit.model import decoding
    from pytest_factedit.model.text import encode_prompt
    from pytest_factedit.run import probing
    from tests.stacked_gates import KeptStates

    model, tok, edit = _japan_gains()
    prompts = ["The capital of Japan is", "Japan is the", "The iPhone is made by"]
    rows = [decoding.DecodeRow(encode_prompt(tok, p, False), 6, False) for p in prompts]
    kept = KeptStates.of(model, 1, [r.ids for r in rows])
    asked = layer_states(model, [1], None, input_ids=torch.tensor([rows[0].ids]))[1]
    base = decoding.decode(model, tok, rows)
    lm = SimpleNamespace(model=model, tokenizer=tok, dtype="float32")
    decoded_again: list = []
    recording = _recording_decodes(probing, decoded_again)

    with _hooked(edit, sealed=True), torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        unrouted = decoding.decode(model, tok, rows)
        edit.router = RelationRouter(1, torch.nn.functional.normalize(asked, dim=-1), 0.9999)
        GateRegistry.of(model).known_states = kept
        patch.setattr(probing, "decode_keeping", recording)
        found, _ = probing.edited_decodes(lm, base, edit, rows, [True, False, False])
        every = decoding.decode(model, tok, rows)
    assert unrouted[1].tokens != base[1].tokens  # without its router the edit changes the other question
    assert decoded_again == [rows[0].ids] and found[1] is base[1] and found[2] is base[2]
    assert [d.tokens for d in found] == [d.tokens for d in every]
    assert every[0].tokens != base[0].tokens  # the edit acts on the question it passes


# -- held out means held out: the training rows an edit reads


def test_alias_same_subject_and_context_prompts_are_never_trained_on(tmp_path: Path, monkeypatch) -> None:
    """Every row a subject-gated edit's losses read (training, retention, references) is recorded; none
    holds an alias prompt, a same-subject fact, a context prompt, or any other held-out text."""
    torch = pytest.importorskip("torch")
    from pytest_factedit.cases.derived import derived_held_out
    from pytest_factedit.edit import batching, get_editor, objectives, resolve_settings, training
    from pytest_factedit.edit.retention import FACT_TEXTS, NEUTRAL_TEXTS, RELATION_TEMPLATES, SUBJECT_TEMPLATES
    from pytest_factedit.model.targets import all_layer_targets
    from pytest_factedit.run.case import edit_request, held_out_texts
    from tests.tiny import piece_tokenizer, tiny_model

    case = load_case(write(tmp_path, CASE))
    tok = piece_tokenizer(
        NEUTRAL_TEXTS + FACT_TEXTS + SUBJECT_TEMPLATES + RELATION_TEMPLATES + tuple(held_out_texts(case))
    )
    model = tiny_model("llama", len(tok))
    seen: list[tuple[int, ...]] = []

    def recording(original):
        def wrapped(model, rows, *args, **kwargs):
            seen.extend(r.ids for r in rows)
            return original(model, rows, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(training, "tail_logprobs", recording(batching.tail_logprobs))
    monkeypatch.setattr(objectives, "base_tails", recording(batching.base_tails))
    settings = resolve_settings(
        {
            "gain_positions": "subject-sentence",
            "subject_rows": 6,
            "relation_rows": len(RELATION_TEMPLATES),
            "unlearn_max_steps": 2,
            "learn_max_steps": 2,
        }
    )
    request = edit_request(case)
    assert set(derived_held_out(case)) <= set(request.held_out) and request.aliases == ("Nippon",)
    with get_editor("ia3-two-stage").apply(model, tok, request, all_layer_targets(model), settings):
        pass
    assert seen
    for text in held_out_texts(case):
        held = tuple(tok(text, add_special_tokens=False).input_ids)
        inside = [row for row in seen if any(row[i : i + len(held)] == held for i in range(len(row)))]
        assert not inside, f"{text!r} was trained on"
    assert torch.is_grad_enabled()


def _gated_edit(
    tmp_path: Path, monkeypatch, untouched: Any = None, edited_layer: int | None = None
) -> tuple[dict, list, int, int]:
    """(gains, stage steps, rows run, tokens run) of a gated edit on the tiny model; `untouched` replaces
    the gate's count of the leading tokens it leaves closed in a text. `edited_layer`: the edit's MLP and
    attention there alone, on a 3-layer model (the layers below run once per row: batching.FrozenBelow)."""
    import torch

    from pytest_factedit.edit import batching, gate, get_editor, resolve_settings, training
    from pytest_factedit.edit.retention import FACT_TEXTS, NEUTRAL_TEXTS, SUBJECT_TEMPLATES
    from pytest_factedit.model.lmhead import decoder
    from pytest_factedit.model.targets import all_layer_targets, layer_targets
    from pytest_factedit.run.case import edit_request, held_out_texts
    from tests.tiny import frozen, piece_tokenizer, tiny_model

    case = load_case(write(tmp_path, CASE))
    tok = piece_tokenizer(NEUTRAL_TEXTS + FACT_TEXTS + SUBJECT_TEMPLATES + tuple(held_out_texts(case)))
    settings = resolve_settings({"subject_rows": 4, "unlearn_max_steps": 3, "learn_max_steps": 4, "lr": 0.1})
    torch.manual_seed(0)
    model = frozen(tiny_model("llama", len(tok), layers=2 if edited_layer is None else 3))
    targets = (
        all_layer_targets(model)
        if edited_layer is None
        else layer_targets(model, [edited_layer], [edited_layer], "one layer")
    )
    rows_run, tokens_run = [0], [0]
    original = batching.tail_logprobs

    def counting(model, rows, *args, **kwargs):
        rows_run[0] += len(rows)
        return original(model, rows, *args, **kwargs)

    def count_tokens(_module, _args, kwargs):
        tokens_run[0] += kwargs["input_ids"].numel()

    with monkeypatch.context() as patch:
        patch.setattr(training, "tail_logprobs", counting)
        if untouched is not None:
            patch.setattr(gate.SubjectGate, "untouched", untouched)
        hook = decoder(model).register_forward_pre_hook(count_tokens, with_kwargs=True)
        try:
            handle = get_editor("ia3-two-stage").apply(model, tok, edit_request(case), targets, settings)
        finally:
            hook.remove()
    with handle:
        gains = {(s, m): p.detach().clone() for s, part in handle.gains.items() for m, p in part.items()}
        steps = [(s.name, s.steps) for s in handle.stages]
    return gains, steps, rows_run[0], tokens_run[0]


def _same_training(found: tuple, reference: tuple) -> None:
    """The same steps to the same gains (within float noise), and gains that moved, so equal says something."""
    torch = pytest.importorskip("torch")
    assert found[1] == reference[1] and sum(n for _, n in reference[1]) >= 3
    assert found[0].keys() == reference[0].keys()
    assert max(float((g - 1).abs().max()) for g in reference[0].values()) > 1e-2
    for key, gain in reference[0].items():
        torch.testing.assert_close(found[0][key], gain, rtol=1e-4, atol=1e-5)


def test_a_gated_edit_runs_only_the_retention_rows_its_gate_reaches_and_trains_the_same_gains(
    tmp_path: Path, monkeypatch
) -> None:
    """A retention row that never names the subject runs the base model whatever the gains are: its KL is 0
    and its gradient exactly 0. The edit skips such rows; run with every row (the gate said to reach all,
    from their first token), it takes the same steps to the same gains, with more rows in its passes."""
    pytest.importorskip("torch")
    skipping = _gated_edit(tmp_path, monkeypatch)
    every = _gated_edit(tmp_path, monkeypatch, lambda self, ids: 0)
    assert skipping[2] < every[2]  # fewer rows run
    _same_training(skipping, every)


def test_a_gated_edit_runs_each_row_from_the_first_token_its_gate_opens_on(tmp_path: Path, monkeypatch) -> None:
    """The tokens before the subject keep the base model's states whatever the gains are, so each step runs a
    row from where the gate first opens, on a cache of the tokens before (edit/prefixes.py). Run whole, with
    the same rows reached, the edit takes the same steps to the same gains, with more tokens in its passes."""
    pytest.importorskip("torch")
    from pytest_factedit.edit.gate import SubjectGate

    real = SubjectGate.untouched
    split = _gated_edit(tmp_path, monkeypatch)
    whole = _gated_edit(tmp_path, monkeypatch, lambda self, ids: 0 if real(self, ids) < len(ids) else len(ids))
    assert split[2] == whole[2]  # the same rows
    assert split[3] < whole[3]  # fewer tokens: each step skips the tokens before the subject
    _same_training(split, whole)


def test_an_edit_above_the_first_layer_runs_rows_from_their_split_over_states_computed_once(
    tmp_path: Path, monkeypatch
) -> None:
    """With the edit at layer 2 only, the states entering it are computed once per row, in the passes that
    make the base references, from each row's split on after the prefixes' shared pass; the same steps to
    the same gains as whole rows."""
    pytest.importorskip("torch")
    from pytest_factedit.edit.gate import SubjectGate

    real = SubjectGate.untouched
    split = _gated_edit(tmp_path, monkeypatch, edited_layer=2)
    whole = _gated_edit(
        tmp_path, monkeypatch, lambda self, ids: 0 if real(self, ids) < len(ids) else len(ids), edited_layer=2
    )
    assert split[3] < whole[3]
    _same_training(split, whole)


def test_references_and_states_below_the_edit_made_from_prefixes_are_the_whole_rows() -> None:
    """`base_tails` through the shared prefixes gives each row's base distributions and its states
    entering the edited layer over the whole row, as a pass over the whole rows does."""
    torch = pytest.importorskip("torch")
    from pytest_factedit.edit.batching import Row, base_tails
    from pytest_factedit.edit.prefixes import UntouchedPrefixes
    from tests.tiny import frozen, tiny_model

    torch.manual_seed(0)
    model = frozen(tiny_model("llama", 40, layers=3))
    rows = [Row((1, 5, 6, 7, 8), 2), Row((1, 9, 6, 7), 1), Row((1, 3, 4, 11, 12, 13), 3), Row((1, 2), 1)]
    shared = UntouchedPrefixes(lambda ids: 3 if len(ids) > 3 else len(ids), rows)
    with torch.no_grad():
        whole, _, whole_below = base_tails(model, rows, 0, 2)
        split, _, split_below = base_tails(model, rows, 0, 2, shared)
    assert shared.shared is not None and shared.shared.entering is not None  # the prefixes took this path
    assert whole_below is not None and split_below is not None
    assert split_below.states.keys() == whole_below.states.keys() == {r.ids for r in rows}
    for ids, state in whole_below.states.items():
        assert split_below.states[ids].shape == state.shape == (len(ids), state.shape[-1])
        torch.testing.assert_close(split_below.states[ids], state, rtol=1e-5, atol=1e-5)
    for a, b in zip(split, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_gated_edit_runs_its_rows_prefixes_once_for_both_stages(tmp_path: Path, monkeypatch) -> None:
    """The tokens before the gate opens are the same in the unlearn rows, the learn rows and the retention
    rows, and at every step: one pass over every row's prefix serves the whole edit."""
    pytest.importorskip("torch")
    from pytest_factedit.edit import prefixes

    passes: list[int] = []
    original = prefixes.left_padded

    def counting(sequences, *args, **kwargs):
        passes.append(len(sequences))
        return original(sequences, *args, **kwargs)

    monkeypatch.setattr(prefixes, "left_padded", counting)
    gains, steps, _, _ = _gated_edit(tmp_path, monkeypatch)
    assert len(passes) == 1 and passes[0] > 1
    assert dict(steps)["unlearn"] + dict(steps)["learn"] >= 3  # both stages ran steps on that one pass


def test_rows_the_edit_did_not_announce_get_their_prefixes_in_a_new_pass() -> None:
    """A row whose prefix the shared pass lacks makes it run again with every prefix; each group's tail
    distributions are the whole rows' either way."""
    torch = pytest.importorskip("torch")
    from pytest_factedit.edit.batching import Row, tail_logprobs
    from pytest_factedit.edit.prefixes import UntouchedPrefixes
    from tests.tiny import frozen, tiny_model

    torch.manual_seed(0)
    model = frozen(tiny_model("llama", 40))
    announced = [Row((1, 5, 6, 7, 8), 2), Row((1, 9, 6, 7), 1)]
    late = [Row((1, 3, 4, 11, 12, 13), 3), Row((1, 5, 6, 10), 1)]
    shared = UntouchedPrefixes(lambda ids: 3 if len(ids) > 3 else len(ids), announced)
    for rows in (announced, late, announced + late):
        with torch.no_grad():
            split = tail_logprobs(model, rows, 0, None, shared)
            whole = tail_logprobs(model, rows, 0)
        for a, b in zip(split, whole):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert shared.shared is not None
    assert set(shared.shared.index) == {(1, 5, 6), (1, 9, 6), (1, 3, 4)}


def test_a_model_that_returns_no_cache_trains_on_whole_rows(tmp_path: Path, monkeypatch) -> None:
    """Without a key-value cache to continue, each step runs whole rows, to the same gains."""
    pytest.importorskip("torch")
    from pytest_factedit.edit import prefixes

    split = _gated_edit(tmp_path, monkeypatch)
    monkeypatch.setattr(prefixes, "returned_cache", lambda output: None)
    whole = _gated_edit(tmp_path, monkeypatch)
    assert split[3] < whole[3]
    _same_training(whole, split)


def test_the_subjects_other_relations_are_held_but_not_the_edited_one(monkeypatch) -> None:
    """`relation_rows` asks the subject for each common relation and holds the base model's answer; the
    question that answers the old fact (the edited relation), an edited prompt and a held-out text are not
    held."""
    pytest.importorskip("torch")
    from pytest_factedit.edit import objectives, resolve_settings
    from pytest_factedit.edit.base import EditRequest
    from pytest_factedit.edit.retention import RELATION_TEMPLATES
    from pytest_factedit.model.decoding import Decoded
    from pytest_factedit.model.text import encode_prompt
    from tests.tiny import piece_tokenizer, tiny_model

    tok = piece_tokenizer(RELATION_TEMPLATES + ("Japan Tokyo Seoul Asia",))
    texts = [t.format(subject="Japan") for t in RELATION_TEMPLATES]
    ids = {tuple(encode_prompt(tok, t, False)): t for t in texts}
    answers = {"Japan is located in": " Tokyo and the"}  # the edited relation, asked another way

    def base_decode(_model: Any, _tok: Any, rows: Any) -> list[Decoded]:
        said = [answers.get(ids[tuple(r.ids)], " Asia and the") for r in rows]
        return [Decoded(tuple(tok(s, add_special_tokens=False).input_ids), False, {}) for s in said]

    monkeypatch.setattr(objectives, "base_decode", base_decode)
    request = EditRequest(
        "Japan", ("The capital of Japan is",), ("Tokyo",), ("Seoul",), held_out=("Japan was born in",)
    )
    settings = resolve_settings({"subject_rows": 0, "relation_rows": len(RELATION_TEMPLATES)})
    assert resolve_settings({}).relation_rows == 0  # an option: the default edit asks none
    rows = objectives.subject_rows(tiny_model("llama", len(tok)), tok, request, settings)
    held = {ids[r.ids[: -r.tail]] for r in rows}
    assert held == set(texts) - {"Japan is located in", "The capital of Japan is", "Japan was born in"}
    asia = tuple(tok(" Asia and the", add_special_tokens=False).input_ids)[: objectives.SUBJECT_ROW_TOKENS]
    assert all(r.ids[-r.tail :] == asia for r in rows)
    assert objectives.subject_rows(None, tok, request, resolve_settings({"subject_rows": 0})) == []
