"""A sequence decodes every case's rows with the base model before its first edit (run/base_pass.py), and
each step takes the base decode of a row no kept edit can reach (run/sequence_base.py): the answers are
those of decoding every row on the model at each step, and a row a kept edit reaches is always decoded on
the model. Batch mode and an isolated run of several cases read the same cache of base decodes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.edit.gate_index import PatternTrie  # noqa: E402
from pytest_factedit.model.decoding import DecodeRow, decode  # noqa: E402
from pytest_factedit.model.probe_cache import BaseAnswerCache  # noqa: E402
from pytest_factedit.model.text import encode_prompt  # noqa: E402
from pytest_factedit.run import base_pass  # noqa: E402
from pytest_factedit.run.base_pass import merged_rows  # noqa: E402
from pytest_factedit.run.sequence_base import KeptEditReach, KeptEditsCache  # noqa: E402

from .test_sequence_checkpoint import figures, two_case_run  # noqa: E402
from .tiny import tiny_model, word_tokenizer  # noqa: E402


def test_the_trie_tells_whether_any_pattern_occurs_without_counting_a_pass_lookup() -> None:
    trie = PatternTrie()
    trie.add(1, [(5, 6), (9,)])
    trie.add(2, [(5, 6, 7)])
    assert trie.occurs_in((1, 5, 6, 2)) and trie.occurs_in((3, 9)) and trie.occurs_in((5, 6, 7))
    assert not trie.occurs_in((5, 1, 6)) and not trie.occurs_in(()) and not trie.occurs_in((6, 5))
    trie.discard(1, [(5, 6), (9,)])
    assert not trie.occurs_in((1, 5, 6, 2)) and trie.occurs_in((5, 6, 7)) and not trie.occurs_in((9,))
    assert trie.lookups == 0


def test_rows_sharing_a_prompt_are_decoded_once_with_every_candidate_to_the_longest_budget() -> None:
    def settle(tokens: tuple[int, ...]) -> bool:
        return len(tokens) > 1

    first = DecodeRow((1, 2), 4, True, ((7,),), settle)
    second = DecodeRow((1, 2), 6, True, ((8, 9), (7,)), settle)
    prompt = DecodeRow((3,), 16, False, ((7,),))
    merged = merged_rows([first, prompt, second])
    assert merged[1] is prompt  # asked once: as it is
    assert merged[0] == DecodeRow((1, 2), 6, True, ((7,), (8, 9)))  # no settle rule: a run each request cuts
    assert merged_rows([first, DecodeRow((1, 2), 2, False)])[0].stop_at_newline is False


def _changed_model_and_rows() -> tuple[Any, Any, list[DecodeRow], BaseAnswerCache, Any]:
    """A tiny model, three rows decoded and stored as the base model's, then the model's weights changed
    (an edit) so that every row decodes differently now."""
    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    lm = SimpleNamespace(model=model, tokenizer=tok, dtype="float32")
    paris = tuple(tok(" Paris", add_special_tokens=False).input_ids)
    prompts = ["The capital of France is", "The Eiffel Tower is in", "The capital of Italy is"]
    rows = [DecodeRow(encode_prompt(tok, p, False), 4, False, (paris,)) for p in prompts]
    rows[2] = DecodeRow(rows[2].ids, 4, False, (tuple(tok(" Eiffel", add_special_tokens=False).input_ids),))
    base = BaseAnswerCache()
    base.decoded(lm, rows)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5, alpha=1.0)
    return lm, tok, rows, base, model


def test_a_step_takes_the_base_decode_only_of_rows_no_kept_edit_can_reach() -> None:
    """The kept edit reaches texts holding "Eiffel": the row naming it, and the row scoring it as a candidate,
    are decoded on the changed model; the other row is the stored base decode, though the model changed."""
    lm, tok, rows, base, model = _changed_model_and_rows()
    eiffel = tok(" Eiffel", add_special_tokens=False).input_ids[0]
    reach = KeptEditReach(model)
    view = KeptEditsCache(base, reach)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KeptEditReach, "row", lambda self, ids, more, known: any(eiffel in ids + c for c in more))
        found = view.decoded(lm, rows)
    now = decode(model, tok, rows)
    stored = [base.stored(lm, r) for r in rows]
    assert found[0] == stored[0] and found[0].tokens != now[0].tokens  # served: the base model's answer
    assert [d.tokens for d in found[1:]] == [d.tokens for d in now[1:]]  # reached: decoded on the model
    assert found[1].tokens != stored[1].tokens and view.served == 1
    reach.everywhere = True  # an edit merged into the weights: nothing is served any more
    assert [d.tokens for d in view.decoded(lm, rows)] == [d.tokens for d in now] and view.served == 1


def test_an_edit_kept_in_the_weights_reaches_every_text_and_a_gated_one_only_its_own() -> None:
    from pytest_factedit.edit.base import EditHandle

    lm, _tok, _rows, _base, model = _changed_model_and_rows()
    reach = KeptEditReach(model)
    assert not reach((1, 2, 3))  # nothing kept yet
    gated = SimpleNamespace(reaches=lambda ids: bool(ids) and 5 in ids)
    reach.kept(gated)  # type: ignore[arg-type]
    assert not reach.everywhere
    reach.kept(SimpleNamespace(reaches=lambda ids: EditHandle.reaches(None, ids)))  # type: ignore[arg-type]
    assert reach.everywhere and reach((1, 2, 3))


def _answers(result: Any) -> list[list[tuple[str, str, str, str]]]:
    """Each outcome's answers of a many-case run: group, prompt, base answer, edited answer."""
    return [[(a.group, a.prompt, a.base, a.edited) for a in o.answers] for o in result.outcomes]


def _sequence(serve: bool) -> tuple[list[Any], dict[str, Any], int, int]:
    """Two gated edits in sequence on a tiny model: each case's answers, the end figures, and how many rows
    the steps and the end took from the base model's decodes (none with `serve` off: every row decoded)."""
    from pytest_factedit.run.many import run_sequence

    lm, cases, settings_for = two_case_run()
    served = {"steps": 0, "end": 0}  # the end: every decode after the last step was done
    original = KeptEditsCache.decoded

    def counting(self: KeptEditsCache, lm: Any, rows: Any, *layers: Any) -> Any:
        before = self.served
        out = original(self, lm, rows, *layers)
        served["end"] += self.served - before
        return out

    def step_done(position: int, outcome: Any) -> None:
        served["steps"] += served["end"]
        served["end"] = 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KeptEditsCache, "decoded", counting)
        if not serve:  # every row counts as reached: each step decodes all of them on the model
            patch.setattr(KeptEditReach, "__call__", lambda self, ids: True)
            patch.setattr(KeptEditReach, "row", lambda self, prompt, continuations, known: True)
        result = run_sequence(lm, cases, settings_for, each_done=step_done)
    answers = _answers(result)
    figures = {name: m.value for name, m in result.metrics.items() if "latency" not in name}
    return answers, figures, served["steps"], served["end"]


def test_a_sequence_answers_as_when_every_step_and_the_end_decode_every_row() -> None:
    served_answers, served_figures, *served = _sequence(serve=True)
    decoded_answers, decoded_figures, *none = _sequence(serve=False)
    assert all(count > 0 for count in served) and none == [0, 0]
    assert served_answers == decoded_answers
    assert served_figures == decoded_figures


def test_the_rows_checked_again_at_the_end_are_decoded_by_the_base_model_once_in_the_base_pass() -> None:
    """Each paraphrase, neighbour and same-subject fact is asked as its base probe asks it, so the base pass's
    decode serves its answer before the first edit: the base model decodes it once."""
    from pytest_factedit.model import probe_cache
    from pytest_factedit.run.many import END_GROUPS, run_sequence
    from pytest_factedit.run.probing import held_requests

    lm, cases, settings_for = two_case_run()
    decoded: list[Any] = []
    original = probe_cache.missing_decoded

    def recording(lm: Any, rows: Any, served: Any) -> Any:
        out, missing = original(lm, rows, served)
        decoded.extend(rows[i].ids for i in missing)
        return out, missing

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe_cache, "missing_decoded", recording)
        run_sequence(lm, cases, settings_for)
    held = {r.ids for case in cases for _, r in held_requests(lm, case, END_GROUPS)}
    assert held and {ids: decoded.count(ids) for ids in held} == dict.fromkeys(held, 1)


def test_a_step_reads_and_keeps_traces_only_where_no_kept_edit_reaches_the_traced_prompts(tmp_path) -> None:
    """There the model traces as the base model does: a stored trace serves the step, and a trace made at the
    step is kept as the base model's. Where a kept edit reaches a traced prompt, nothing is read or kept."""
    lm, _tok, _rows, _base, model = _changed_model_and_rows()
    lm.weights_hash, lm.device = "w" * 64, "cpu"
    stored = BaseAnswerCache(tmp_path)
    traces = stored.traces(lm)
    assert traces is not None
    key = "a" * 64
    traces.put(key, {"layers": [1]})
    view = KeptEditsCache(stored, KeptEditReach(model))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KeptEditReach, "__call__", lambda self, ids: 5 in ids)
        served = view.traces(lm, [(1, 2), (3, 4)])
        assert served is not None and served.get(key) == {"layers": [1]}
        served.put("b" * 64, {"layers": [2]})
        assert traces.get("b" * 64) == {"layers": [2]}
        assert view.traces(lm, [(1, 2), (5, 4)]) is None  # one traced prompt names a kept subject
        assert view.traces(lm, []) is None
    assert KeptEditsCache(BaseAnswerCache(), KeptEditReach(model)).traces(lm, [(1, 2)]) is None  # nothing kept


def test_the_pass_before_the_first_edit_is_heard_as_the_base_pass_and_fills_the_cache() -> None:
    from pytest_factedit.infra.events import PROBE_END, PROBE_PASS, PROBE_START, PROBED, listening

    lm, cases, settings_for = two_case_run()
    base = BaseAnswerCache()
    heard: list[tuple[str, str, Any, Any]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base_pass, "CASES_PER_PASS", 1)  # one batched decode per case: two progress events
        with listening(lambda event: heard.append((event.kind, event.label, event.done, event.total))):
            seconds = base_pass.probed_before_any_edit(lm, cases, settings_for, base)
    assert heard == [
        (PROBE_START, PROBE_PASS, None, None),
        (PROBED, PROBE_PASS, 1, 2),
        (PROBED, PROBE_PASS, 2, 2),
        (PROBE_END, PROBE_PASS, None, None),
    ]
    assert seconds > 0
    from pytest_factedit.run.probing import base_requests

    rows = [r for case in cases for r in base_requests(lm, case, settings_for(case))]
    assert rows and all(base.stored(lm, r) is not None for r in rows)  # every step's rows, served from the pass


def test_a_sequence_tells_the_seconds_of_its_base_pass_and_a_sequence_with_an_edit_in_the_weights_runs_none() -> None:
    from pytest_factedit.run.many import _resumed_on_base

    lm, cases, settings_for = two_case_run()
    done, _, seconds = _resumed_on_base(lm, cases, settings_for, BaseAnswerCache(), None)
    assert done == [] and seconds is not None and seconds > 0

    def put_back_into_the_weights() -> list[Any]:
        with torch.no_grad():
            next(lm.model.parameters()).add_(1.0)  # what a merged (ungated) edit put back does
        return []

    try:
        _, step_base, seconds = _resumed_on_base(lm, cases, settings_for, BaseAnswerCache(), put_back_into_the_weights)
        assert step_base.reach.everywhere and seconds is None  # no step could take a base decode
    finally:
        with torch.no_grad():
            next(lm.model.parameters()).sub_(1.0)


def test_a_batch_run_reads_the_base_models_decodes_an_earlier_run_stored(tmp_path) -> None:
    """Batch mode probes and decodes for the editor before its adapter exists: a second run with the same
    cache folder decodes no base row again, and answers as the first."""
    from pytest_factedit.model import probe_cache
    from pytest_factedit.run.many import run_batch

    lm, cases, settings_for = two_case_run()
    lm.weights_hash, lm.device = "w" * 64, "cpu"

    first = run_batch(lm, cases, settings_for, base=BaseAnswerCache(tmp_path))
    decoded: list[int] = []
    original = probe_cache.decode
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            probe_cache, "decode", lambda model, tok, rows: decoded.append(len(rows)) or original(model, tok, rows)
        )
        second = run_batch(lm, cases, settings_for, base=BaseAnswerCache(tmp_path))
    assert [o.status for o in first.outcomes] == ["ran", "ran"]
    assert decoded == [] and _answers(second) == _answers(first)


def test_an_isolated_run_of_several_cases_decodes_their_base_rows_in_one_pass_first(tmp_path) -> None:
    """Before its first case, a single-process session decodes every collected case's base rows into the
    cache each case's probe reads; an xdist worker (which runs only some cases) leaves each case to itself."""
    from pytest_factedit.run.options import Options
    from pytest_factedit.run.planned import PlannedCase
    from pytest_factedit.run.probing import base_requests
    from pytest_factedit.session import FactEditSession

    lm, cases, settings_for = two_case_run()
    rows = [r for case in cases for r in base_requests(lm, case, settings_for(case))]
    for worker in (None, (0, 2)):
        session = FactEditSession(Options.from_values(lambda _name: None, tmp_path), None)
        session.held.cache, session.held.worker = BaseAnswerCache(), worker
        session.cases = {(f"{c.id}.yaml", c.id): PlannedCase(c, settings_for(c)) for c in cases}
        session._probe_together(lm)  # type: ignore[arg-type]
        served = [session.held.cache.stored(lm, r) is not None for r in rows]
        assert all(served) if worker is None else not any(served)
        # the pass's seconds are the run's (every record repeats them), as no case's own timings hold them
        passed = session.run_info.get("base_pass_seconds")
        assert (passed is not None and passed > 0) if worker is None else passed is None


def _editor_decodes_live(run: Any) -> list[tuple[int, int]]:
    """Run `run()` and give, for each call an editor made to `base_decode`, (rows asked, rows decoded then
    rather than read from a cache)."""
    from pytest_factedit.edit import objectives
    from pytest_factedit.model import probe_cache

    decoded: list[int] = []
    asked: list[tuple[int, int]] = []
    decode_now, base_decode = probe_cache.decode, objectives.base_decode

    def asking(model: Any, tok: Any, rows: Any) -> Any:
        before = sum(decoded)
        out = base_decode(model, tok, rows)
        asked.append((len(rows), sum(decoded) - before))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe_cache, "decode", lambda m, t, rows: decoded.append(len(rows)) or decode_now(m, t, rows))
        patch.setattr(objectives, "base_decode", asking)
        run()
    return asked


@pytest.mark.parametrize("mode", ["sequential", "isolated", "alone"])
def test_the_base_pass_decodes_what_each_editor_will_ask_of_the_base_model(mode: str) -> None:
    """The subject rows' and the guard's continuations of every case come from the pass (a case run alone:
    from its own base probe's batch): no editor decodes one itself (in a sequence, none of them names a
    kept subject)."""
    from pytest_factedit.edit import planned_base_decodes, resolve_settings
    from pytest_factedit.run.case import edit_request, run_case
    from pytest_factedit.run.many import run_sequence

    from .test_sequence_end import FAST, PLACED

    lm, cases, _ = two_case_run()
    settings = resolve_settings({**FAST, **PLACED, "subject_rows": 2})
    assert len(planned_base_decodes(lm.tokenizer, edit_request(cases[0]), settings)) == 2 + 2  # 2 texts, 2 guards
    base = BaseAnswerCache()

    def isolated() -> None:
        base_pass.probed_before_any_edit(lm, cases, lambda _case: settings, base)
        for case in cases:
            assert run_case(lm, case, settings, base).status == "ran"

    def alone() -> None:
        for case in cases:
            assert run_case(lm, case, settings, BaseAnswerCache()).status == "ran"

    def sequential() -> None:
        assert [o.status for o in run_sequence(lm, cases, lambda _case: settings).outcomes] == ["ran", "ran"]

    asked = _editor_decodes_live({"sequential": sequential, "isolated": isolated, "alone": alone}[mode])
    assert len(asked) == 2 * len(cases) and all(rows > 0 for rows, _ in asked)  # subject rows, guards: per case
    assert [live for _, live in asked] == [0] * len(asked)


def test_a_sequence_probes_each_case_under_its_plan_and_answers_as_under_the_default() -> None:
    """A lighter plan (one timed step pair, no fluency tokens) changes what each case times and generates, not
    what it answers: the base pass decodes the rows as the plan asks them, and the end is timed as always."""
    from pytest_factedit.run import probing
    from pytest_factedit.run.many import run_sequence
    from pytest_factedit.run.probing import DEFAULT_PLAN, ProbePlan

    lm, cases, settings_for = two_case_run()
    light = ProbePlan(latency_repeats=1, fluency_tokens=0)
    timed: list[int] = []
    original = probing.timed_step

    def counted(*args: Any, **kwargs: Any) -> Any:
        timed[-1] += 1
        return original(*args, **kwargs)

    results = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probing, "timed_step", counted)
        for plan in (DEFAULT_PLAN, light):
            timed.append(0)
            results.append(run_sequence(lm, cases, settings_for, plan=plan))
    default, lighter = results
    ran = [o for o in lighter.outcomes if o.status == "ran"]
    assert len(ran) == 2
    assert _answers(default) == _answers(lighter)
    assert figures(default) == figures(lighter)
    assert all("fluency_ngram_entropy_after" in o.scores for o in default.outcomes)
    assert not any("fluency" in name for o in ran for name in (*o.scores, *o.base_scores))
    assert all("old_answer_logprob_after" in o.scores for o in ran)
    # each case times (3 - 1) pairs of steps fewer; the end's timing with every edit on is the default's
    assert timed[0] - timed[1] == 2 * (DEFAULT_PLAN.latency_repeats - light.latency_repeats) * len(ran)
    assert "latency_overhead_at_end" in lighter.metrics and lighter.metrics["latency_overhead_at_end"].value


def test_a_step_serves_the_routers_base_states_only_while_no_edit_changed_the_weights(tmp_path) -> None:
    """A router's pass turns every gated edit off, so with gated edits only kept it reads the base model;
    once an edit is merged into the weights it does not, and nothing is served."""
    lm, _tok, _rows, _base, model = _changed_model_and_rows()
    lm.weights_hash, lm.device = "w" * 64, "cpu"
    stored = BaseAnswerCache(tmp_path)
    reach = KeptEditReach(model)
    view = KeptEditsCache(stored, reach)
    assert view.states(lm) is stored.states(lm) is not None
    reach.kept(SimpleNamespace(reaches=lambda ids: True))  # an edit merged into the weights
    assert view.states(lm) is None
