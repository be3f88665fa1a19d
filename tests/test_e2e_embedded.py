"""End to end on the embedded Gemma 3 270M: a real fact edit through pytest, reports, restored weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pytest_factedit.report.files import read_results

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
CASE = REPO / "fact_cases" / "playstation-maker.yaml"


@pytest.fixture(scope="module")
def embedded():
    """The embedded model, loaded once for this module (converted into the cache on first use)."""
    from pytest_factedit.model.load import load

    return load(None, "cpu")


def one_case_suite(pytester: pytest.Pytester) -> Path:
    """fact_cases/ with the shipped defaults (less the suite gates set for the nine shipped cases' pool) and
    a copy of CASE."""
    folder = pytester.mkdir("fact_cases")
    defaults = yaml.safe_load((REPO / "fact_cases" / "_defaults.yaml").read_text())
    for pooled_over_the_nine in ("relation_specificity", "context_retention"):  # one case is not that pool
        del defaults["suite_thresholds"][pooled_over_the_nine]
    (folder / "_defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    # the latency gate times the machine, and a test must not (another process's load could flip it):
    # this copy of the case gates it loosely; the metric is still measured and recorded
    data = yaml.safe_load(CASE.read_text())
    data["thresholds"] = {**data.get("thresholds", {}), "latency_overhead": 100}
    (folder / CASE.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def test_plugin_edits_a_real_fact_and_reports_it(pytester: pytest.Pytester) -> None:
    folder = one_case_suite(pytester)
    (folder / "typo.yaml").write_text(CASE.read_text().replace("paraphrases:", "paraphrasses:"))
    result = pytester.runpytest_subprocess(
        "fact_cases", "-p", "no:cacheprovider", "--factedit-run-id", "e2e", "--factedit-show-trace", timeout=900
    )
    out = result.stdout.str()
    # the broken file is a collection error naming file, key and suggestion; the real case still runs and passes
    result.stdout.fnmatch_lines(["*typo.yaml: key 'paraphrasses': unknown key*did you mean 'paraphrases'?*"])
    result.assert_outcomes(passed=13, errors=1)  # 8 metric items, 5 suite items (fact_cases/_defaults.yaml)
    assert "pytest-factedit: fact edits" in out

    records = read_results(pytester.path / "reports" / "e2e")  # checked against the record's declared shape
    assert len(records) == 1
    record = records[0]
    assert record["schema_version"] == 2 and record["case_id"] == "playstation-maker"
    assert record["status"] == "ran" and record["base_restored"] is True
    prompts = [a for a in record["answers"] if a["group"] == "prompts"]
    assert all(a["base_correct"] is False and "Sony" in a["base"] for a in prompts)  # the old fact, before
    assert all(a["edited_correct"] and a["edited_says"] == "new" and a["informative"] for a in prompts)  # took
    assert record["metrics"]["new_fact_accuracy"]["value"] == 1.0
    assert record["metrics"]["forget_rate"]["samples"] == len(prompts) + len(
        yaml.safe_load(CASE.read_text())["paraphrases"]
    )
    assert record["target_modules"] and record["model"]["weights_hash"]
    same = [a for a in record["answers"] if a["group"] == "same_subject"]  # the subject's other facts, kept
    assert len(same) == 2 and record["metrics"]["relation_specificity"]["samples"] == 2
    context = [a for a in record["answers"] if a["group"] == "context"]  # every neighbour and control, prefixed
    assert len(context) == len([a for a in record["answers"] if a["group"] in ("neighbours", "controls")])
    # localization chose the edited layers: MLP at the subject's last token, attention at the last token
    loc = record["localization"]
    assert loc["method"] == "trace" and len(loc["mlp_layers"]) == 2 and len(loc["attention_layers"]) == 2
    expected_modules = {f"model.layers.{i}.mlp.{m}" for i in loc["mlp_layers"] for m in ("up_proj", "down_proj")}
    expected_modules |= {
        f"model.layers.{i}.self_attn.{m}" for i in loc["attention_layers"] for m in ("v_proj", "o_proj")
    }
    assert set(record["target_modules"]) == expected_modules
    assert loc["mlp_effects"][loc["mlp_layers"][0]] == max(e for e in loc["mlp_effects"] if e is not None) > 0
    assert len(loc["grids"]) == len(prompts) and loc["grids"][0]["tokens"][-1].strip("▁") == "by"
    assert "chosen: MLP layers" in out and "MLP output (max" in out  # --factedit-show-trace heatmap
    scores = record["scores"]
    metrics = record["metrics"]
    assert metrics["efficacy"]["value"] == 1.0 and metrics["efficacy"]["protocol"] == "mean_token_logprob"
    assert 0.0 <= metrics["specificity"]["value"] <= 1.0 and metrics["specificity"]["samples"] == 5  # neighbours
    walkman = next(a for a in record["answers"] if a["group"] == "neighbours" and a["shares_old"])
    assert "Walkman" in walkman["prompt"] and walkman["base_correct"]
    assert scores["old_answer_logprob_after"] < scores["old_answer_logprob_before"]  # the old answer went down
    assert scores["fluency_ngram_entropy_after"] > 0
    assert (pytester.path / "reports" / "latest").resolve().name == "e2e"
    latency = metrics["latency_overhead"]
    assert latency["threshold"] == 100 and latency["value"] > 0 and latency["samples"] == len(prompts)
    summary = json.loads((pytester.path / "reports" / "e2e" / "summary.json").read_text())
    assert summary["cases"] == 1 and summary["failed_metrics"] == 0


def test_base_weights_are_bit_identical_after_a_case(embedded) -> None:
    import torch

    from pytest_factedit.cases import load_case
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache

    before = {k: v.clone() for k, v in embedded.model.state_dict().items()}
    case = load_case(CASE, root=REPO)
    outcome = run_case(embedded, case, resolve_settings(case.method), BaseAnswerCache())
    assert outcome.status == "ran" and outcome.metrics["new_fact_accuracy"].value == 1.0
    after = embedded.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any("ia3" in name for name, _ in embedded.model.named_modules())


def test_case_the_model_does_not_know_is_skipped_with_its_answer(embedded, tmp_path: Path) -> None:
    from pytest_factedit.cases import load_case
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache

    (tmp_path / "unknown.yaml").write_text(
        "subject: Eiffel Tower\nprompts: [The Eiffel Tower is located in the city of]\nold: Lyon\nnew: Rome\n"
        "controls: [{prompt: The capital of Japan is, answer: Tokyo}]\n"
    )
    case = load_case(tmp_path / "unknown.yaml")
    outcome = run_case(embedded, case, resolve_settings({}), BaseAnswerCache())
    assert outcome.status == "skipped"
    assert "Lyon" in outcome.reason and "Paris" in outcome.reason


def test_embedded_model_knows_real_facts(embedded) -> None:
    from pytest_factedit.metrics.answers import matches
    from pytest_factedit.model.probe import greedy_continuations

    answers = greedy_continuations(
        embedded.model,
        embedded.tokenizer,
        ["The currency of Japan is the", "The Eiffel Tower is located in the city of"],
        [4, 4],
    )
    assert matches(answers[0], ["yen"]) and matches(answers[1], ["Paris"])


def test_the_saved_tokenizer_reads_like_the_one_transformers_rebuilds(embedded) -> None:
    import random

    from transformers import AutoTokenizer

    from pytest_factedit.model.cache import converted_dir

    folder = converted_dir(embedded.spec)[0]
    rebuilt, fast = AutoTokenizer.from_pretrained(str(folder)), embedded.tokenizer
    texts = ["", "  two spaces", "tab\there\nnew line\n\n", "Ünïcödé 日本語 😀 \u200b", "<bos>x<eos><pad>", "\x00\x7f"]
    for path in sorted((REPO / "fact_cases").glob("*.yaml")):
        texts += [line.split(":", 1)[-1] for line in path.read_text(encoding="utf-8").splitlines()]
    for text in texts:
        for special in (True, False):
            assert (
                fast(text, add_special_tokens=special)["input_ids"]
                == rebuilt(text, add_special_tokens=special)["input_ids"]
            )
    rng = random.Random(0)
    ids = [rng.randrange(len(rebuilt)) for _ in range(4000)]
    for skip in (True, False):
        assert fast.decode(ids, skip_special_tokens=skip) == rebuilt.decode(ids, skip_special_tokens=skip)
    assert fast.all_special_ids == rebuilt.all_special_ids and len(fast) == len(rebuilt)
