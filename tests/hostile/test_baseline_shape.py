"""A baseline is checked whole at start-up: a wrong inner entry, a NaN, a file that is not UTF-8 or nests
too deep stops the run in one line (file, key, expected, found, fix), before the model loads. A baseline of
other weights, or of none recorded, is compared only with --factedit-baseline-any-model. A comparison that
still fails at run time becomes the case's error: the case is edited once and every report is written.

(Before, `forget_rate: 5` passed start-up, then every item failed with a pytest-internal traceback, each
case was edited once per item, and nothing was written; a NaN turned the gate off without a word.)"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_factedit.errors import BaselineError
from pytest_factedit.report.baseline import read_baseline

from .test_reports import assert_every_item_ran, run, suite  # noqa: F401 (suite: a fixture)

CASE = "cases.tower.metrics"
ANY_MODEL = "--factedit-baseline-any-model"
LENIENT = ("--factedit-threshold", "latency_overhead=1000")  # a busy machine never fails these runs on timing


def valid(weights_hash: str | None = "ab" * 32) -> dict[str, Any]:
    """A baseline as --factedit-save-baseline writes it, for a run of one case `tower`."""
    return {
        "schema_version": 1,
        "kind": "pytest-factedit baseline",
        "created": "2025-01-01T00:00:00+0000",
        "run_id": "main",
        "model": {"name": "tiny", "kind": "hf", "source": "folder", "weights_hash": weights_hash},
        "device": "cpu",
        "dtype": "float32",
        "versions": {"torch": "2.13.0", "gguf": None},
        "machine": {"cpu": "some CPU", "cpu_capability": None, "platform": "x86_64"},
        "cases": {
            "tower": {
                "case_file": "fact_cases/tower.yaml",
                "status": "ran",
                "method": {"name": "staged", "settings": {"lr": 0.3}},
                "metrics": {
                    "forget_rate": {
                        "value": 1.0,
                        "samples": 1,
                        "outcomes": [{"group": "prompts", "prompt": "p", "hit": True}],
                    },
                    "latency_overhead": {"value": 1.2, "samples": 3},
                },
            }
        },
    }


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


def _forget(base: dict, **changes: Any) -> None:
    base["cases"]["tower"]["metrics"]["forget_rate"].update(changes)


BROKEN: dict[str, tuple[Callable[[dict], None], str, str]] = {
    "a metric that is a number": (
        lambda b: b["cases"]["tower"]["metrics"].update(forget_rate=5),
        f"{CASE}.forget_rate",
        "expected an object, found int",
    ),
    "a value that is a string": (lambda b: _forget(b, value="0.5"), f"{CASE}.forget_rate.value", "found str"),
    "outcomes that are numbers": (
        lambda b: _forget(b, outcomes=[1, 2]),
        f"{CASE}.forget_rate.outcomes[0]",
        "expected an object, found int",
    ),
    "an outcome without its hit": (
        lambda b: _forget(b, outcomes=[{"group": "prompts", "prompt": "p"}]),
        f"{CASE}.forget_rate.outcomes[0]",
        "the key 'hit' is missing",
    ),
    "a hit that is a string": (
        lambda b: _forget(b, outcomes=[{"group": "prompts", "prompt": "p", "hit": "yes"}]),
        f"{CASE}.forget_rate.outcomes[0].hit",
        "expected true or false, found str",
    ),
    "a NaN value": (lambda b: _forget(b, value=float("nan")), f"{CASE}.forget_rate.value", "expected a finite"),
    "an infinite value": (lambda b: _forget(b, value=float("inf")), f"{CASE}.forget_rate.value", "expected a finite"),
    "a NaN ratio": (
        lambda b: b["cases"]["tower"]["metrics"]["latency_overhead"].update(value=float("nan")),
        f"{CASE}.latency_overhead.value",
        "expected a finite",
    ),
    "a share below 0": (lambda b: _forget(b, value=-5), f"{CASE}.forget_rate.value", "a share between 0 and 1"),
    "a negative sample count": (lambda b: _forget(b, samples=-1), f"{CASE}.forget_rate.samples", "0 or more"),
    "a sample count that is a string": (lambda b: _forget(b, samples="3"), f"{CASE}.forget_rate.samples", "integer"),
    "no metrics": (lambda b: b["cases"]["tower"].pop("metrics"), "cases.tower", "the key 'metrics' is missing"),
    "a case file that is a number": (
        lambda b: b["cases"]["tower"].update(case_file=3),
        "cases.tower.case_file",
        "expected a string, found int",
    ),
    "a machine that is a string": (lambda b: b.update(machine="x86"), "machine", "expected an object, found str"),
    "a version that is a number": (lambda b: b["versions"].update(torch=2), "versions.torch", "found int"),
    "a weights hash that is a number": (
        lambda b: b["model"].update(weights_hash=5),
        "model.weights_hash",
        "expected a string or null, found int",
    ),
    "nesting 40 levels deep": (lambda b: b["model"].update(extra=nested(40)), "model.extra.x.x", "levels"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_wrong_inner_entry_is_one_line_with_file_key_expected_found_and_fix(tmp_path: Path, name: str) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(valid()), encoding="utf-8")
    assert read_baseline(path)["cases"]["tower"]["metrics"]["forget_rate"]["value"] == 1.0  # the valid one reads
    change, key, expected = BROKEN[name]
    broken = copy.deepcopy(valid())
    change(broken)
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(BaselineError) as info:
        read_baseline(path)
    message = str(info.value)
    assert message.startswith(f"{path}: key '{key}") and expected in message, message
    assert "\n" not in message and "Fix: save the baseline again with --factedit-save-baseline" in message
    assert "'0.5'" not in message and "yes" not in message  # a value from the file is named by its type only


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b'{"kind": "pytest-factedit baseline", "model": {"name": "t\xff\xfe"}}',
            "expected UTF-8 text, found the byte 0xff",
        ),
        (b'{"kind": "pytest-factedit baseline", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "levels"),
        (json.dumps(valid()).replace('"value": 1.0', '"value": 1e400').encode(), "expected a finite number"),
    ],
    ids=["not UTF-8", "nested beyond Python's recursion limit", "1e400"],
)
def test_a_file_that_is_not_utf8_or_nests_too_deep_is_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "baseline.json"
    path.write_bytes(content)
    with pytest.raises(BaselineError) as info:
        read_baseline(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value) and "\n" not in str(info.value)


def test_pytest_stops_at_start_up_in_one_line_before_the_model_loads(
    pytester: pytest.Pytester,
    suite: tuple[Path, Path],  # noqa: F811
) -> None:
    model, root = suite
    broken = valid()
    _forget(broken, value="0.5")
    (root / "inner.json").write_text(json.dumps(broken))
    (root / "deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    for name, key in (("inner.json", f"key '{CASE}.forget_rate.value'"), ("deep.json", "levels")):
        result = run(pytester, Path("/nonexistent/model"), "--factedit-baseline", str(root / name))
        out = result.stdout.str() + result.stderr.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR, out
        assert "Traceback" not in out and "INTERNALERROR" not in out and "could not load" not in out, out
        line = next(line for line in out.splitlines() if "pytest-factedit:" in line)
        assert f"{root / name}: " in line and key in line and "Fix:" in line, line


@pytest.fixture(scope="module")
def tiny_hash(tiny_model_dir: tuple[Path, str]) -> str:
    """The weights hash the plugin gives the tiny model folder."""
    from pytest_factedit.model.load import load

    return load(str(tiny_model_dir[0]), device="cpu").weights_hash


def test_a_baseline_without_a_weights_hash_is_refused_unless_any_model_is_given(
    pytester: pytest.Pytester,
    suite: tuple[Path, Path],  # noqa: F811
) -> None:
    model, root = suite
    (root / "nohash.json").write_text(json.dumps(valid(weights_hash=None)))
    refused = run(pytester, Path("/nonexistent/model"), "--factedit-baseline", str(root / "nohash.json"))
    out = refused.stdout.str() + refused.stderr.str()
    assert refused.ret == pytest.ExitCode.USAGE_ERROR and "could not load" not in out, out  # known before loading
    assert "key 'model.weights_hash'" in out and ANY_MODEL in out and "Traceback" not in out
    allowed = run(pytester, Path("/nonexistent/model"), "--factedit-baseline", str(root / "nohash.json"), ANY_MODEL)
    out = allowed.stdout.str() + allowed.stderr.str()
    assert "/nonexistent/model" in out and "key 'model.weights_hash'" not in out, out  # past the baseline


def test_other_weights_are_refused_naming_the_option_and_compared_with_it_warn(
    pytester: pytest.Pytester,
    suite: tuple[Path, Path],  # noqa: F811
) -> None:
    model, root = suite
    (root / "other.json").write_text(json.dumps(valid(weights_hash="0" * 64)))
    refused = run(pytester, model, "--factedit-baseline", str(root / "other.json"), "--factedit-run-id", "no")
    out = refused.stdout.str() + refused.stderr.str()
    assert refused.ret == pytest.ExitCode.USAGE_ERROR, out
    assert "other weights (0000000000000000" in out and ANY_MODEL in out and "key 'model.weights_hash'" in out
    compared = run(
        pytester, model, "--factedit-baseline", str(root / "other.json"), ANY_MODEL, "--factedit-run-id", "any"
    )
    out = assert_every_item_ran(compared)
    assert f"compared with it anyway ({ANY_MODEL}): the baseline was made with other weights" in out
    warnings = json.loads((root / "reports" / "any" / "summary.json").read_text())["baseline"]["warnings"]
    assert any(ANY_MODEL in warning for warning in warnings)


def test_a_comparison_that_fails_at_run_time_is_the_cases_error_and_every_report_is_written(
    pytester: pytest.Pytester,
    suite: tuple[Path, Path],  # noqa: F811
    tiny_hash: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_factedit import session
    from pytest_factedit.report import baseline

    def broken_comparison(*args: Any) -> None:
        raise RuntimeError("the comparison broke")

    edits: list[str] = []
    real_run = session.FactEditSession._run_isolated

    def counted(self: Any, case_file: str, planned: Any) -> Any:
        edits.append(planned.case.id)
        return real_run(self, case_file, planned)

    monkeypatch.setattr(baseline, "compare_case", broken_comparison)
    monkeypatch.setattr(session.FactEditSession, "_run_isolated", counted)
    model, root = suite
    (root / "base.json").write_text(json.dumps(valid(weights_hash=tiny_hash)))
    out = assert_every_item_ran(run(pytester, model, "--factedit-baseline", str(root / "base.json"), *LENIENT))
    (latest,) = [p for p in (root / "reports").iterdir() if p.name != "latest"]
    (record,) = [json.loads(line) for line in (latest / "results.jsonl").read_text().splitlines()]
    assert edits == ["tower"], f"edited {len(edits)} times: {record['reason']}"
    assert record["status"] == "error" and "the comparison broke" in record["reason"]
    assert "comparing it with the baseline" in record["reason"] and "INTERNALERROR" not in out
    assert json.loads((latest / "summary.json").read_text())["errors"] == 1
