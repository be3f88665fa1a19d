"""Baselines without a model: the file's round trip, each mismatch, the paired test, and the gate's two
promises as properties: improving never fails, worsening beyond the tolerance always does."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_factedit.errors import BaselineError
from pytest_factedit.metrics.spec import COLUMNS, METRIC_BY_NAME, METRICS
from pytest_factedit.metrics.verdict import mcnemar_worse_p
from pytest_factedit.report.baseline import (
    baseline_of,
    compare_case,
    compare_metric,
    compare_suite,
    environment_warnings,
    missing_cases,
    read_baseline,
    tolerance_for,
    weights_problem,
    write_baseline,
)
from pytest_factedit.report.records import pooled
from pytest_factedit.report.tables import baseline_failure, summary_table

from .test_report import record as hand_made_record

SHARE = [spec.name for spec in METRICS if spec.samples is not None and spec.name in COLUMNS]
RUN = {
    "run_id": "r",
    "model": {"name": "m", "weights_hash": "abc123"},
    "device": "cpu",
    "dtype": "float32",
    "versions": {"torch": "2.13.0", "transformers": "5.24.0"},
}


def record(case_id: str, controls_right_after: list[bool]) -> dict:
    """A record whose controls were all right before the edit and are right after as given."""
    rec = hand_made_record(case_id)
    rec["answers"] = [
        {
            "group": "controls",
            "prompt": f"control {i} of {case_id}",
            "expected": ["London"],
            "base": " London",
            "base_correct": True,
            "edited": " London" if right else " Rome",
            "edited_correct": right,
        }
        for i, right in enumerate(controls_right_after)
    ]
    name = METRIC_BY_NAME["control_retention"].name
    value = sum(controls_right_after) / len(controls_right_after) if controls_right_after else None
    rec["metrics"][name].update(value=value, samples=len(controls_right_after), hits=sum(controls_right_after))
    return rec


def saved(tmp_path: Path, records: list[dict]) -> dict:
    return read_baseline(write_baseline(tmp_path / "b" / "baseline.json", records, RUN))


def test_a_baseline_round_trips_with_every_metric_its_samples_and_where_it_ran(tmp_path: Path) -> None:
    records = [record("a", [True, True, False]), record("b", [True])]
    base = saved(tmp_path, records)
    assert base["schema_version"] == 1 and base["model"]["weights_hash"] == "abc123"
    assert base["device"] == "cpu" and base["dtype"] == "float32" and base["versions"]["torch"] == "2.13.0"
    controls = base["cases"]["a"]["metrics"]["control_retention"]
    assert controls["value"] == pytest.approx(2 / 3) and controls["samples"] == 3
    assert [o["hit"] for o in controls["outcomes"]] == [True, True, False]
    assert base["cases"]["a"]["method"] == records[0].get("method", {})
    # the same run compared with itself: nothing moved, nothing regressed
    for rec in copy.deepcopy(records):
        for entry in compare_case(rec, base, {})["metrics"].values():
            assert entry["baseline"]["delta"] == 0 and not entry["baseline"]["regressed"]
            assert entry["baseline"]["flipped"] == []


def test_a_worse_case_metric_names_its_values_tolerance_and_flipped_prompts(tmp_path: Path) -> None:
    base = saved(tmp_path, [record("a", [True, True, True, True])])
    now = compare_case(record("a", [True, False, True, False]), base, {})
    comparison = now["metrics"]["control_retention"]["baseline"]
    assert comparison["regressed"] and comparison["delta"] == pytest.approx(-0.5)
    message = baseline_failure("a", "control_retention", 0.5, comparison)
    assert "a: control_retention = 0.50, worse than the baseline's 1.00 (▼0.50; tolerance 0)" in message
    assert "right -> wrong  [controls] 'control 1 of a'" in message and "'control 3 of a'" in message
    # within a tolerance it passes
    tolerated = compare_case(record("a", [True, False, True, False]), base, {"control_retention": 0.5})
    assert not tolerated["metrics"]["control_retention"]["baseline"]["regressed"]


def test_each_mismatch_is_named(tmp_path: Path) -> None:
    base = saved(tmp_path, [record("a", [True]), record("gone", [True])])
    assert "other weights" in weights_problem(base, "fff999") and weights_problem(base, "abc123") == ""
    moved = {**RUN, "device": "cuda", "dtype": "bfloat16", "versions": {"torch": "2.14.0", "transformers": "5.24.0"}}
    warnings = environment_warnings(base, moved)
    assert any("device differs" in w and "cpu there, cuda here" in w for w in warnings)
    assert any("dtype differs" in w for w in warnings)
    assert any("torch 2.13.0 -> 2.14.0" in w for w in warnings) and not environment_warnings(base, RUN)
    assert missing_cases(base, [record("a", [True]), record("new", [True])]) == (["gone"], ["new"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ('{"kind": "something else"}', "not a pytest-factedit baseline"),
        ('{"kind": "pytest-factedit baseline", "schema_version": 99}', "key 'schema_version': expected"),
        (
            '{"kind": "pytest-factedit baseline", "schema_version": 1, "cases": [], "model": {}, "versions": {}}',
            "cases",
        ),
    ],
)
def test_a_bad_baseline_file_is_an_error_with_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(BaselineError, match=message) as info:
        read_baseline(path)
    assert str(path) in str(info.value)
    with pytest.raises(BaselineError, match="cannot read the baseline.*--factedit-save-baseline"):
        read_baseline(tmp_path / "missing.json")


def test_mcnemar_one_sided_exact_values() -> None:
    assert mcnemar_worse_p(0, 0) == 1.0
    assert mcnemar_worse_p(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_worse_p(0, 5) == 1.0
    assert mcnemar_worse_p(3, 3) == pytest.approx(42 / 64)  # P(X >= 3), X ~ Bin(6, 1/2)
    assert mcnemar_worse_p(9, 1) < 0.05 < mcnemar_worse_p(7, 3)


def test_the_suite_pairs_samples_across_cases_and_fails_when_mcnemar_finds_it_worse(tmp_path: Path) -> None:
    before = [record(c, [True] * 4) for c in "abc"]
    base = saved(tmp_path, before)
    after = [record("a", [False] * 4), record("b", [False, False, True, True]), record("c", [True] * 4)]
    row = pooled("cases", "control_retention", after, None)
    comparison = compare_suite(row, after, base, tolerance=0.5, alpha=0.05)
    assert comparison["shared"] == 12 and comparison["right_to_wrong"] == 6 and comparison["wrong_to_right"] == 0
    assert comparison["p_value"] == pytest.approx(1 / 64) and comparison["regressed"]  # a drop of 0.5: not > 0.5
    assert comparison["flipped"][0]["group"] == "a: controls"
    small = compare_suite(row, after[1:], base, tolerance=0.5, alpha=0.01)  # 2 flips: not significant
    assert small["right_to_wrong"] == 2 and not small["regressed"]


outcomes = st.lists(st.booleans(), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(before=outcomes, data=st.data(), tolerance=st.sampled_from([0.0, 0.05, 0.2]))
def test_improving_never_fails(before: list[bool], data: st.DataObject, tolerance: float) -> None:
    """Any set of wrong -> right flips (and no right -> wrong) passes the case and the suite gates."""
    after = [b or data.draw(st.booleans()) for b in before]
    base = {"cases": {"a": {"metrics": {"control_retention": _metric(before)}}}}
    now = record("a", after)
    case = compare_metric("control_retention", _rate(after), _outcomes(now), _metric(before), tolerance)
    assert not case["regressed"]
    suite = compare_suite(pooled("s", "control_retention", [now], None), [now], base, tolerance, 0.05)
    assert not suite["regressed"] and suite["right_to_wrong"] == 0


@settings(max_examples=200, deadline=None)
@given(before=outcomes, data=st.data(), tolerance=st.sampled_from([0.0, 0.05, 0.2]))
def test_worsening_beyond_the_tolerance_always_fails(before: list[bool], data: st.DataObject, tolerance: float) -> None:
    after = [b and data.draw(st.booleans()) for b in before]
    drop = _rate(before) - _rate(after)
    base = {"cases": {"a": {"metrics": {"control_retention": _metric(before)}}}}
    now = record("a", after)
    case = compare_metric("control_retention", _rate(after), _outcomes(now), _metric(before), tolerance)
    suite = compare_suite(pooled("s", "control_retention", [now], None), [now], base, tolerance, 0.05)
    if drop > tolerance + 1e-9:
        assert case["regressed"] and suite["regressed"]
        assert {f["prompt"] for f in case["flipped"]} == {
            f"control {i} of a" for i, (b, a) in enumerate(zip(before, after)) if b != a
        }
    elif drop == 0:
        assert not case["regressed"] and not suite["regressed"]


def _rate(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


def _metric(hits: list[bool]) -> dict:
    return {
        "value": _rate(hits),
        "samples": len(hits),
        "outcomes": [{"group": "controls", "prompt": f"control {i} of a", "hit": h} for i, h in enumerate(hits)],
    }


def _outcomes(rec: dict) -> list[dict]:
    return _metric([a["edited_correct"] for a in rec["answers"]])["outcomes"]


def test_lower_is_better_metrics_regress_upwards_and_timings_have_slack() -> None:
    latency = "latency_overhead"
    assert tolerance_for(latency, {}) == METRIC_BY_NAME[latency].baseline_tolerance > 0
    assert tolerance_for("forget_rate", {}) == 0 and tolerance_for(latency, {latency: 0.01}) == 0.01
    assert compare_metric(latency, 1.5, [], {"value": 1.0}, 0.25)["regressed"]
    assert not compare_metric(latency, 0.8, [], {"value": 1.0}, 0.0)["regressed"]  # faster: better


def test_the_summary_shows_the_delta_column_and_never_splits_a_case_id() -> None:
    long_id = "michael-jordan-sport-and-more"
    rec = record(long_id, [True, False])
    base = baseline_of([record(long_id, [True, True])], RUN)
    text = summary_table([compare_case(rec, json.loads(json.dumps(base)), {})], color=False, width=80)
    assert "vs" in text and "baseline" in text and "ctrls▼0.50" in text
    assert any(long_id in line for line in text.splitlines())  # the id on one line, whole


def test_a_same_subject_fact_that_flips_since_the_baseline_regresses_relation_specificity(tmp_path: Path) -> None:
    """The new groups are compared sample by sample like the old ones, an answer-less entry included."""

    def with_same_subject(kept: bool) -> dict:
        rec = record("japan", [True])
        rec["old"], rec["new"] = ["Tokyo"], ["Seoul"]
        rec["answers"] += [
            {
                "group": "same_subject",
                "prompt": "The official language of Japan is",
                "expected": ["Japanese"],
                "base": " Japanese.",
                "base_correct": True,
                "edited": " Japanese." if kept else " Korean.",
                "edited_correct": kept,
            },
            {
                "group": "same_subject",
                "prompt": "Japan is an island country in",
                "expected": ["the pacific ocean"],
                "base": " the Pacific Ocean, in",
                "base_correct": True,
                "edited": " the Pacific Ocean, in",
                "edited_correct": True,
                "unchanged": True,
            },
        ]
        rec["metrics"]["relation_specificity"] = {**rec["metrics"]["control_retention"], "threshold": 0.8}
        rec["metrics"]["relation_specificity"].update(value=1.0 if kept else 0.5, samples=2, hits=1 + kept)
        return rec

    base = saved(tmp_path, [with_same_subject(True)])
    now = compare_case(with_same_subject(False), base, {})
    comparison = now["metrics"]["relation_specificity"]["baseline"]
    assert comparison["regressed"] and comparison["delta"] == pytest.approx(-0.5)
    message = baseline_failure("japan", "relation_specificity", 0.5, comparison)
    assert "right -> wrong  [same_subject] 'The official language of Japan is'" in message
    assert "Japan is an island" not in message  # the unchanged entry kept its first words
