"""What a run keeps of the base model for the next one besides its answers: each fact's trace, the
editor's own decodes of the base model, and the states its router reads. Served only where the model is
the base one as loaded, read back equal to what tracing gives, and set aside (with a note) when a stored
file cannot be used."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.cases.loader import load_case
from pytest_factedit.edit import resolve_settings
from pytest_factedit.localize import FactPrompts, LocalizeSettings, localize, stored_localization, trace_key
from pytest_factedit.model import probe_cache, trace_store
from pytest_factedit.model.decoding import DecodeRow
from pytest_factedit.model.precision import precision_context
from pytest_factedit.model.probe_cache import BaseAnswerCache, base_decode, base_decodes_served
from pytest_factedit.model.text import encode_prompt
from pytest_factedit.model.trace_store import TraceStore
from pytest_factedit.run.case import localize_case, run_case
from pytest_factedit.run.probing import ProbePlan

from .test_router import counted_passes
from .tiny import saved_tiny_llama, tiny_model

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def tiny_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A tiny llama saved and loaded as the plugin loads a local model, and a case of the fact it holds."""
    from pytest_factedit.model.load import load

    folder = tmp_path_factory.mktemp("tiny")
    old = saved_tiny_llama(folder / "model", PROMPT, layers=3)
    (folder / "case.yaml").write_text(
        f"id: tiny-case\nsubject: Eiffel Tower\nprompts: ['{PROMPT}', 'The Eiffel Tower is in the city of']\n"
        f"old: '{old}'\nnew: {'Rome' if old != 'Rome' else 'London'}\n"
        "paraphrases: ['Here is a fact . The Eiffel Tower is located in the city of']\n"
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n"
        "method: {lr: 0.3, unlearn_max_steps: 2, learn_max_steps: 3, guard_tokens: 2, noise_samples: 2}\n",
        encoding="utf-8",
    )
    return load(str(folder / "model"), device="cpu"), load_case(folder / "case.yaml")


def _judged(outcome: Any) -> tuple[Any, ...]:
    """What a run decides from: every answer, every metric but latency, each stage's steps and last loss."""
    metrics = {k: v.value for k, v in outcome.metrics.items() if not k.startswith("latency")}
    stages = [(s["name"], s["steps"], s["final_loss"]) for s in outcome.stages]
    return [(a.group, a.prompt, a.base, a.edited) for a in outcome.answers], metrics, stages, outcome.targets.modules


def test_a_second_run_reads_the_trace_and_the_editors_decodes_and_edits_the_same(tiny_case, tmp_path, monkeypatch):
    lm, case = tiny_case
    calls: list[int] = []
    real = probe_cache.decode
    monkeypatch.setattr(probe_cache, "decode", lambda m, t, rows: calls.append(len(rows)) or real(m, t, rows))
    settings = resolve_settings(case.method)
    plan = ProbePlan(latency_repeats=0)
    first = run_case(lm, case, settings, BaseAnswerCache(tmp_path), plan=plan)
    assert first.status == "ran", first.reason
    assert first.localization is not None and not first.localization.stored
    assert len(calls) == 1  # the base probe, with the subject rows' continuations and the guard tokens
    (stored,) = tmp_path.glob("traces-*/*.json")
    second = run_case(lm, case, settings, BaseAnswerCache(tmp_path), plan=plan)
    assert len(calls) == 1  # nothing of the base model decoded again
    assert second.localization is not None and second.localization.stored
    assert second.localization.as_record() | {"stored": False} == first.localization.as_record()
    assert _judged(second) == _judged(first)
    fresh = run_case(lm, case, settings, BaseAnswerCache(None), plan=plan)  # --factedit-fresh-probes
    assert fresh.localization is not None and not fresh.localization.stored and len(calls) == 2
    assert _judged(fresh) == _judged(first)


def test_the_routers_states_come_from_the_base_probe_or_an_earlier_run_and_answer_the_same(
    tiny_case, tmp_path, monkeypatch
):
    """The default edit is routed. Its router reads the base model's states of the texts its gate opens on:
    kept by the base probe that decodes them, or read back from a run that kept them; computed in a pass of
    their own only where neither holds them (a stored base probe, and no stored states). Judged the same."""
    from pytest_factedit.edit import gate_registry

    lm, case = tiny_case
    computed = counted_passes(monkeypatch, gate_registry)
    settings = resolve_settings(case.method)
    plan = ProbePlan(latency_repeats=0)
    first = run_case(lm, case, settings, BaseAnswerCache(tmp_path), plan=plan)
    assert first.status == "ran", first.reason
    (stored,) = tmp_path.glob("states-*.safetensors")
    assert computed == []  # the base probe kept them
    assert _judged(run_case(lm, case, settings, BaseAnswerCache(tmp_path), plan=plan)) == _judged(first)
    assert computed == []  # read back: the base probe was too, so it decoded nothing
    stored.unlink()
    assert _judged(run_case(lm, case, settings, BaseAnswerCache(tmp_path), plan=plan)) == _judged(first)
    assert computed and stored.exists()  # the router's own pass, and kept again
    fresh = run_case(lm, case, settings, BaseAnswerCache(None), plan=plan)  # --factedit-fresh-probes
    assert len(computed) == 1 and _judged(fresh) == _judged(first)


def test_an_edits_router_reads_the_states_its_base_probe_kept_in_a_run(tiny_case, monkeypatch):
    """Inside a run the router built after training reads the base probe's states of the case's prompts and
    of the subject's general texts (the editor's rows, decoded in the probe's batch): its own pass holds
    only the prompts behind a training prefix. Outside a run (no base cache) it computes them all."""
    from pytest_factedit.edit import router as router_module
    from pytest_factedit.edit.base import EditRequest
    from pytest_factedit.edit.retention import SUBJECT_TEMPLATES, subject_texts

    lm, case = tiny_case
    built = counted_passes(monkeypatch, router_module)  # the router's own passes (texts_states)
    settings = resolve_settings(case.method)
    cache = BaseAnswerCache(None)
    first = run_case(lm, case, settings, cache, plan=ProbePlan(latency_repeats=0))
    assert first.status == "ran", first.reason
    prompts, prefixes = len(case.prompts), len(settings.context_prefixes)
    behind = [encode_prompt(lm.tokenizer, p + t, False) for p in settings.context_prefixes[1:] for t in case.prompts]
    paraphrases = {encode_prompt(lm.tokenizer, t, False) for t in case.paraphrases}
    assert built == [sum(ids not in paraphrases for ids in behind)] == [1]  # the paraphrase spells one of them
    with probe_cache.base_decodes_served(cache, lm):
        assert probe_cache.served_base_states(lm.model) is cache.states(lm)
    assert probe_cache.served_base_states(lm.model) is None
    request = EditRequest(case.subject, tuple(case.prompts), tuple(case.old), tuple(case.new))
    router_module.build_router(lm.model, lm.tokenizer, [request], settings.context_prefixes, 1, 0.01)
    general = subject_texts(case.subject, case.prompts, len(SUBJECT_TEMPLATES))
    assert built[1:] == [prompts * prefixes + len(general)]


def test_the_editor_is_served_only_by_the_base_model_as_loaded(tiny_case, tmp_path, monkeypatch):
    lm, _ = tiny_case
    calls: list[int] = []
    real = probe_cache.decode
    monkeypatch.setattr(probe_cache, "decode", lambda m, t, rows: calls.append(len(rows)) or real(m, t, rows))
    rows = [DecodeRow(encode_prompt(lm.tokenizer, PROMPT, False), 3, False)]
    cache = BaseAnswerCache(tmp_path)
    cache.decoded(lm, rows)
    assert len(calls) == 1
    with base_decodes_served(cache, lm):
        assert base_decode(lm.model, lm.tokenizer, rows) == cache.decoded(lm, rows) and len(calls) == 1
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 training precision decodes as loaded
            assert base_decode(lm.model, lm.tokenizer, rows) == cache.decoded(lm, rows) and len(calls) == 1
        other = tiny_model("llama", len(lm.tokenizer), layers=3)  # not the loaded model
        base_decode(other, lm.tokenizer, rows)
    assert len(calls) == 2
    base_decode(lm.model, lm.tokenizer, rows)  # outside the block: decoded, whatever the cache holds
    assert len(calls) == 3


def _fact(lm: Any, case: Any) -> FactPrompts:
    return FactPrompts(case.prompts, case.subject, case.old[0], int(lm.tokenizer(" " + case.old[0]).input_ids[-1]))


def test_a_stored_record_reads_back_as_the_localization_it_was(tiny_case):
    lm, case = tiny_case
    found = localize(lm.model, lm.tokenizer, _fact(lm, case), LocalizeSettings(noise_samples=2))
    record = json.loads(json.dumps(found.as_record()))
    assert stored_localization(record, 3) == dataclasses.replace(found, seconds=round(found.seconds, 4), stored=True)


def test_the_key_names_the_fact_the_settings_and_the_precision_they_resolve_to(tiny_case):
    lm, case = tiny_case
    fact, how = _fact(lm, case), LocalizeSettings()
    keys = {
        trace_key(fact, how, "float32"),
        trace_key(fact, how, "bfloat16 (autocast, CPU AMX)"),
        trace_key(dataclasses.replace(fact, subject="Tower"), how, "float32"),
        trace_key(fact, dataclasses.replace(how, noise_samples=1), "float32"),
        trace_key(fact, dataclasses.replace(how, seed=1), "float32"),
    }
    assert len(keys) == 5 and trace_key(fact, LocalizeSettings(), "float32") in keys


def _damage(path: Path, how: str) -> None:
    data = json.loads(path.read_text())
    if how == "not json":
        path.write_text("{")
    elif how == "a layer the model lacks":
        data["trace"]["mlp_layers"] = [7]
        path.write_text(json.dumps(data))
    elif how == "not a number":
        data["trace"]["mlp_effects"][0] = "NaN"
        path.write_text(json.dumps(data))
    elif how == "a grid of another shape":
        data["trace"]["grids"][0]["effects"]["mlp"][0].pop()
        path.write_text(json.dumps(data))
    elif how == "another model's":
        data["identity"]["weights"] = "0" * 16
        path.write_text(json.dumps(data))
    elif how == "too large":
        path.write_text(json.dumps(data) + " " * trace_store.TRACE_BYTES)
    elif how == "a FIFO":
        path.unlink()
        os.mkfifo(path)


DAMAGES = (
    "not json",
    "a layer the model lacks",
    "not a number",
    "a grid of another shape",
    "another model's",
    "too large",
    "a FIFO",
)


@pytest.mark.parametrize("how", DAMAGES)
def test_a_stored_trace_that_cannot_be_used_is_reported_and_traced_anew(tiny_case, tmp_path, capsys, how):
    lm, case = tiny_case
    settings = resolve_settings(case.method)
    traces = BaseAnswerCache(tmp_path).traces(lm)
    assert traces is not None
    first = localize_case(lm, case, settings, traces=traces)
    (path,) = tmp_path.glob("traces-*/*.json")
    _damage(path, how)
    again = localize_case(lm, case, settings, traces=traces)
    assert "not using the stored trace" in capsys.readouterr().err
    assert not again.stored and again.mlp_layers == first.mlp_layers
    assert json.loads(path.read_text())["trace"]["mlp_layers"] == list(first.mlp_layers)  # written anew
    assert localize_case(lm, case, settings, traces=traces).stored


def test_the_store_keeps_the_newest_traces_and_names_files_only_by_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_store, "STORE_TRACES", 2)
    store = TraceStore(tmp_path, {"weights": "w"})
    keys = [f"{n:064x}" for n in range(3)]
    for n, key in enumerate(keys):
        store.put(key, {"n": n})
        os.utime(store.folder / f"{key}.json", ns=(n * 10**9, n * 10**9))
    store.put(keys[2], {"n": 2})
    assert store.get(keys[0]) is None and store.get(keys[1]) == {"n": 1} and store.get(keys[2]) == {"n": 2}
    with pytest.raises(ValueError, match="sha256"):
        store.get("../outside")
    assert trace_store._modified(store.folder / "pruned-by-another-worker.json") is None


def test_an_editor_that_trains_in_bf16_localizes_in_bf16_and_keeps_that_trace_apart(tiny_case, tmp_path):
    lm, case = tiny_case
    settings = resolve_settings(case.method)
    bf16 = resolve_settings({**case.method, "train_precision": "bfloat16"})
    auto, forced = precision_context(lm.model, "auto")[1], precision_context(lm.model, "bfloat16")[1]
    traces = BaseAnswerCache(tmp_path).traces(lm)
    assert traces is not None
    assert localize_case(lm, case, settings, traces=traces).precision == auto
    found = localize_case(lm, case, bf16, traces=traces)
    assert found.precision == forced and forced.startswith("bfloat16 (autocast")
    assert found.stored == (auto == forced)  # an fp32 trace is not read back for a bf16 one (on AMX, auto is bf16)
    assert localize_case(lm, case, bf16, traces=traces).stored
    assert len(list(tmp_path.glob("traces-*/*.json"))) == (1 if auto == forced else 2)


@pytest.mark.parametrize("units", [True, False])
def test_an_editor_on_auto_localizes_as_it_trains(tiny_case, monkeypatch, units):
    from pytest_factedit.model import precision

    lm, case = tiny_case
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: units)
    found = localize_case(lm, case, resolve_settings({**case.method, "train_precision": "auto"}))
    assert found.precision == precision_context(lm.model, "bfloat16" if units else "auto")[1]


BEN = "Big Ben is a clock tower in the city of"


def test_a_sequence_keeps_the_trace_of_a_fact_no_kept_edit_reaches_and_it_is_the_base_models(tiny_case, tmp_path):
    """The second fact is traced with the first edit kept on the model; its prompts name no kept subject, so
    that trace is stored, and it is the one the base model gives (a kept gated edit multiplies by exactly 1
    there). A later run, or an isolated one, reads it back."""
    from pytest_factedit.model.probe import greedy_continuations
    from pytest_factedit.run.many import run_sequence

    lm, eiffel = tiny_case
    said = greedy_continuations(lm.model, lm.tokenizer, [BEN], [1])[0].split()[0]
    new = "Rome" if said != "Rome" else "Paris"
    ben = dataclasses.replace(eiffel, id="big-ben", subject="Big Ben", prompts=(BEN,), old=(said,), new=(new,))
    ben = dataclasses.replace(ben, paraphrases=("Here is a fact . " + BEN,), controls=())
    settings = resolve_settings(eiffel.method)
    result = run_sequence(lm, [eiffel, ben], lambda _case: settings, base=BaseAnswerCache(tmp_path))
    assert [o.status for o in result.outcomes] == ["ran", "ran"], [o.reason for o in result.outcomes]
    assert all(o.localization is not None and not o.localization.stored for o in result.outcomes)
    assert len(list(tmp_path.glob("traces-*/*.json"))) == 2
    for case, traced in zip((eiffel, ben), result.outcomes):
        traces = BaseAnswerCache(tmp_path).traces(lm)
        read = localize_case(lm, case, settings, traces=traces)
        fresh = localize_case(lm, case, settings)  # the base model, nothing kept, nothing read
        assert read.stored and not fresh.stored
        assert read.as_record() | {"stored": False, "seconds": 0} == fresh.as_record() | {"seconds": 0}
        assert traced.localization is not None
        assert traced.localization.as_record() | {"seconds": 0} == fresh.as_record() | {"seconds": 0}
