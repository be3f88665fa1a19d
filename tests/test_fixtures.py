"""The fixtures `factedit_model` and `fact_edit`, from a fresh project that only installs the package
(pytester): on a tiny random model (fast), and the shipped example on the embedded model (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

from .test_metrics_plugin import PROMPT, other, saved_tiny  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return saved_tiny(tmp_path_factory)


TESTS = """
import pytest
from pytest_factedit import matches
from pytest_factedit.errors import MetricFailure

CASE = {{"id": "tiny-fact", "subject": "Eiffel Tower", "prompts": [{prompt!r}], "old": {old!r}, "new": {new!r},
         "method": {{"lr": 0.3, "unlearn_max_steps": 2, "learn_max_steps": 4, "guard_tokens": 1, "localize": "none"}},
         "controls": [{{"prompt": "Big Ben is a clock tower in the city of", "answer": "London"}}],
         "thresholds": {{"latency_overhead": 100}}}}
NO_STEPS = {{**CASE["method"], "learn_max_steps": 0, "unlearn_max_steps": 0}}
WEAK = {{**{{k: v for k, v in CASE.items() if k != "id"}}, "method": NO_STEPS}}


def test_runs_the_yaml_protocol(fact_edit, factedit_model):
    outcome = fact_edit(CASE).check()
    assert outcome.metrics["new_fact_accuracy"] == 1.0 and outcome.record["base_restored"] is True
    assert factedit_model.weights_hash == outcome.record["model"]["weights_hash"]


def test_a_weak_edit_fails_like_an_item(fact_edit):
    with pytest.raises(MetricFailure, match="new_fact_accuracy = 0.000 over 1 samples misses the threshold"):
        fact_edit(WEAK).check()


def test_applied_gives_the_edited_model(fact_edit):
    with fact_edit.applied(CASE) as edited:
        assert matches(edited.answer({prompt!r}), [{new!r}])
    with fact_edit.applied(CASE) as edited:
        raise RuntimeError("the test failed while the edit was applied")
"""


def test_fixtures_run_cases_share_the_model_and_report_their_records(pytester: pytest.Pytester, tiny) -> None:
    folder, answers = tiny
    old = answers[PROMPT]
    pytester.makepyfile(test_edits=TESTS.format(prompt=PROMPT, old=old, new=other(old)))
    result = pytester.runpytest(
        "--model", str(folder), "--factedit-device", "cpu", "-p", "no:cacheprovider", "--factedit-run-id", "fx",
        "--rootdir", str(pytester.path), "-rA",
    )  # fmt: skip
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: the test failed while the edit was applied*"])
    assert "RestoreError" not in result.stdout.str()  # the edit was undone, and teardown found the base intact
    records = [json.loads(x) for x in (pytester.path / "reports" / "fx" / "results.jsonl").read_text().splitlines()]
    assert {r["case_id"]: r["case_file"] for r in records} == {  # a dict without `id`: the test's name
        "tiny-fact": "test_edits.py::test_runs_the_yaml_protocol",
        "test_a_weak_edit_fails_like_an_item": "test_edits.py::test_a_weak_edit_fails_like_an_item",
    }
    assert "pytest-factedit: fact edits" in result.stdout.str()  # the summary table holds them


TRACED = """
from pytest_factedit import matches

CASE = {{"id": "tiny-traced", "subject": "Eiffel Tower", "prompts": [{prompt!r}], "old": {old!r}, "new": {new!r},
         "method": {{"lr": 0.3, "unlearn_max_steps": 2, "learn_max_steps": 4, "guard_tokens": 1, "noise_samples": 2}},
         "controls": [{{"prompt": "Big Ben is a clock tower in the city of", "answer": "London"}}]}}


def test_applied_twice(fact_edit):
    for _ in range(2):
        with fact_edit.applied(CASE) as edited:
            assert matches(edited.answer({prompt!r}), [{new!r}])
"""


def test_applied_localizes_as_a_run_does_keeping_the_trace(
    pytester: pytest.Pytester, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, answers = tiny
    monkeypatch.setenv("FACTEDIT_CACHE", str(pytester.path / "cache"))
    pytester.makepyfile(test_traced=TRACED.format(prompt=PROMPT, old=answers[PROMPT], new=other(answers[PROMPT])))
    result = pytester.runpytest(
        "--model", str(folder), "--factedit-device", "cpu", "-p", "no:cacheprovider", "--rootdir", str(pytester.path)
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    assert len(list((pytester.path / "cache" / "probes").glob("traces-*/*.json"))) == 1


@pytest.mark.slow
def test_the_shipped_example_passes_in_a_fresh_project(pytester: pytest.Pytester) -> None:
    shutil.copytree(REPO / "examples" / "python_tests", pytester.path / "python_tests")
    result = pytester.runpytest_subprocess(
        "python_tests", "-p", "no:cacheprovider", "--factedit-run-id", "ex", timeout=900
    )
    result.assert_outcomes(passed=3)
    records = [json.loads(x) for x in (pytester.path / "reports" / "ex" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["case_id"] for r in records) == ["germany-capital", "norway-capital-stockholm"]
