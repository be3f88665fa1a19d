"""The metrics through the plugin, on a tiny random model: recorded metrics gated on request, suites pooled
with intervals, uninformative paraphrases skipped and reported, neighbours that flip, probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pytest_factedit.metrics.answers import matches  # noqa: E402
from pytest_factedit.metrics.verdict import wilson_interval  # noqa: E402
from pytest_factedit.report.files import read_results  # noqa: E402

from .tiny import tiny_model, word_tokenizer  # noqa: E402

PROMPT = "The Eiffel Tower is located in the city of"
NEIGHBOUR = "The Colosseum is located in the city of"
CONTROL = "Big Ben is a clock tower in the city of"
ARGS = ("-p", "no:cacheprovider", "--factedit-device", "cpu", "-rA")
PARAPHRASES = [
    "The Eiffel Tower is in the city of",
    "The Eiffel Tower",
    "Here is a fact . The Eiffel Tower is in",
    "The Eiffel Tower and the Louvre",
    "she opened the Eiffel Tower book",
    "The Eiffel Tower went back to",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return saved_tiny(tmp_path_factory)


def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tiny llama saved as a folder, and its greedy one-word answers to the prompts these tests use."""
    from pytest_factedit.model.probe import greedy_continuations

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=2)
    folder = tmp_path_factory.mktemp("m") / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    prompts = [PROMPT, NEIGHBOUR, "Big Ben is a clock tower in the city of"] + PARAPHRASES
    answers = greedy_continuations(model, tok, prompts, [6] * len(prompts))  # at least the cases' budgets
    return folder, {p: (a.split()[0] if a.split() else "") for p, a in zip(prompts, answers)} | {
        f"full:{p}": a for p, a in zip(prompts, answers)
    }


def case_yaml(old: str, new: str, extra: str = "", method: str = "") -> str:
    method = method or "lr: 0.3, unlearn_max_steps: 2, learn_max_steps: 4, guard_tokens: 1, localize: none"
    return (
        f"subject: Eiffel Tower\nprompts: ['{PROMPT}']\nold: '{old}'\nnew: {new}\n"
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n"
        f"method: {{{method}}}\n" + extra
    )


def other(word: str) -> str:
    return "Rome" if word != "Rome" else "Berlin"


def run(pytester: pytest.Pytester, folder: Path, run_id: str, *args: str) -> tuple[pytest.RunResult, list[dict]]:
    reports = pytester.path / "reports"
    result = pytester.runpytest(
        "fact_cases",
        "--model",
        str(folder),
        *ARGS,
        "--factedit-reports",
        str(reports),
        "--factedit-run-id",
        run_id,
        *args,
    )
    # read back as `factedit show` reads them: every record the plugin writes fits its declared shape
    return result, list(read_results(reports / run_id)) if (reports / run_id).exists() else []


def test_a_recorded_metric_becomes_an_item_when_a_threshold_is_set(pytester, tiny) -> None:
    folder, answers = tiny
    cases = pytester.mkdir("fact_cases")
    old = answers[PROMPT]
    (cases / "a.yaml").write_text(case_yaml(old, other(old), "thresholds: {efficacy: 0.5}\n"))
    result = pytester.runpytest("fact_cases", "--collect-only", "-q", *ARGS[:2])
    result.stdout.fnmatch_lines(["fact_cases/a.yaml::a::efficacy"])
    assert "a::generalization" not in result.stdout.str()


def test_suites_pool_every_case_with_a_wilson_interval(pytester, tiny) -> None:
    folder, answers = tiny
    cases = pytester.mkdir("fact_cases")
    (cases / "_defaults.yaml").write_text("suite_thresholds: {new_fact_accuracy: 0.0, forget_rate: 0.0}\n")
    old = answers[PROMPT]
    for name in ("a", "b"):
        (cases / f"{name}.yaml").write_text(case_yaml(old, other(old)).replace("subject", f"id: {name}\nsubject"))
    result, records = run(pytester, folder, "suite")
    result.stdout.fnmatch_lines(
        ["PASSED fact_cases::suite::new_fact_accuracy", "PASSED fact_cases::suite::forget_rate"]
    )
    assert "2 cases pooled" in result.stdout.str()
    hits = sum(r["metrics"]["new_fact_accuracy"]["hits"] for r in records)
    samples = sum(r["metrics"]["new_fact_accuracy"]["samples"] for r in records)
    summary = json.loads((pytester.path / "reports" / "suite" / "summary.json").read_text())
    row = next(s for s in summary["suites"] if s["metric"] == "new_fact_accuracy")
    assert (row["hits"], row["samples"], row["cases"]) == (hits, samples, 2)
    assert row["interval"] == pytest.approx(list(wilson_interval(hits, samples)))


def test_uninformative_paraphrases_are_not_counted_skipped_and_reported(pytester, tiny) -> None:
    folder, answers = tiny
    old = answers[PROMPT]
    para = next((p for p in PARAPHRASES if not matches(answers[f"full:{p}"], [old])), None)
    if para is None:
        pytest.skip("the tiny model answers every candidate paraphrase with the old answer")
    cases = pytester.mkdir("fact_cases")
    (cases / "a.yaml").write_text(case_yaml(old, other(old), f"paraphrases: ['{para}']\n"))
    result, records = run(pytester, folder, "idle")
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["SKIPPED*a: paraphrase_accuracy: not measured*reword them*"])
    assert "note: a: 1 of 1 paraphrases are uninformative" in out
    metric = records[0]["metrics"]["paraphrase_accuracy"]
    assert metric["value"] is None and metric["passed"] is None and metric["samples"] == 0
    assert records[0]["metrics"]["paraphrase_accuracy_all"]["samples"] == 1


def test_a_neighbour_that_flips_fails_neighbour_retention(pytester, tiny) -> None:
    folder, answers = tiny
    old, neighbour = answers[PROMPT], answers[NEIGHBOUR]
    new = next(w for w in ("Rome", "Berlin", "London") if w not in (old, neighbour))
    cases = pytester.mkdir("fact_cases")
    # no retention term and a large step: the edit moves "... located in the city of" for every subject
    method = "lr: 0.5, unlearn_max_steps: 2, learn_max_steps: 30, learn_stop_prob: 0.99, kl_weight: 0, localize: none"
    (cases / "a.yaml").write_text(
        case_yaml(old, new, f"neighbours: [{{prompt: {NEIGHBOUR}, answer: '{neighbour}'}}]\n", method)
    )
    result, records = run(pytester, folder, "flip")
    answer = next(a for a in records[0]["answers"] if a["group"] == "neighbours")
    assert answer["base_correct"] is True
    if answer["edited_correct"]:
        pytest.skip("the edit did not move this neighbour on this tiny model")
    result.stdout.fnmatch_lines(["FAILED fact_cases/a.yaml::a::neighbour_retention*"])
    assert "neighbour_retention = 0.000 over 1 samples misses" in result.stdout.str()


def test_mean_token_logprobs_are_the_probabilities_the_model_gives(tiny) -> None:
    """The CounterFact comparisons rest on pair_logprobs: check it against a plain forward pass per pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_factedit.model.probe import pair_logprobs
    from pytest_factedit.model.text import answer_token_ids, encode_prompt

    folder, _ = tiny
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    pairs = [(PROMPT, "Paris"), (NEIGHBOUR, "Rome city"), ("Big Ben is a clock tower in", "London")]
    batched = pair_logprobs(model, tok, pairs)
    for (prompt, answer), got in zip(pairs, batched):
        ids = list(encode_prompt(tok, prompt, False)) + answer_token_ids(tok, answer)
        n = len(answer_token_ids(tok, answer))
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        expected = sum(float(logp[len(ids) - n - 1 + i, ids[len(ids) - n + i]]) for i in range(n)) / n
        assert got == pytest.approx(expected, abs=1e-4)


def test_answers_stop_at_the_end_of_sequence_and_hide_control_tokens() -> None:
    from pytest_factedit.model.text import answer_text

    tok = word_tokenizer()
    ids = tok("Rome Paris", add_special_tokens=False).input_ids
    rome, paris = ids
    assert answer_text(tok, [rome, tok.eos_token_id, paris], frozenset({tok.eos_token_id}), frozenset()) == "Rome"
    assert answer_text(tok, [rome, paris], frozenset(), frozenset({paris})) == "Rome"


def test_same_subject_facts_and_context_rows_are_items_that_fail_or_skip_with_the_reason(pytester, tiny) -> None:
    """A same-subject fact given without an answer that the edit moves fails relation_specificity; a case
    with no same-subject facts has the item skipped, saying why; the context rows are probed and counted."""
    folder, answers = tiny
    old = answers[PROMPT]
    new = other(old)
    cases = pytester.mkdir("fact_cases")
    method = "lr: 0.5, unlearn_max_steps: 2, learn_max_steps: 30, learn_stop_prob: 0.99, kl_weight: 0, localize: none"
    same = "same_subject: [{prompt: The Eiffel Tower went back to}, {prompt: 'Here is a fact . The Eiffel Tower'}]\n"
    (cases / "a.yaml").write_text(case_yaml(old, new, same, method + ", gain_positions: every"))
    (cases / "b.yaml").write_text(case_yaml(old, new).replace("subject", "id: b\nsubject"))
    result, records = run(pytester, folder, "same")
    result.stdout.fnmatch_lines(["SKIPPED*b: relation_specificity: not measured: there are no same_subject to count*"])
    a = next(r for r in records if r["case_id"] == "a")
    kept = [x for x in a["answers"] if x["group"] == "same_subject"]
    assert len(kept) == 2 and all(x["unchanged"] and x["base_correct"] for x in kept)
    context = [x for x in a["answers"] if x["group"] == "context"]
    assert [x["prompt"] for x in context] == ["Speaking of Eiffel Tower, here is another question. " + CONTROL]
    assert a["metrics"]["context_retention"]["samples"] == sum(x["base_correct"] for x in context)
    if all(x["edited_correct"] for x in kept):
        pytest.skip("the edit did not move the subject's other continuations on this tiny model")
    result.stdout.fnmatch_lines(["FAILED fact_cases/a.yaml::a::relation_specificity*"])
