"""CI gating through the plugin, on a tiny random model: baselines saved and compared (cases and suites),
thresholds from the command line, junit properties, the HTML page, progress lines, xdist, fixtures."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("torch")

from .test_metrics_plugin import PROMPT, case_yaml, other, saved_tiny  # noqa: E402
from .test_metrics_plugin import run as run_in  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return saved_tiny(tmp_path_factory)


WEAK = "lr: 0.3, unlearn_max_steps: 0, learn_max_steps: 0, guard_tokens: 1, localize: none"  # trains nothing
# the answer gates are what these tests are about; timings are never gated by a test (nor compared)
LENIENT = (
    "--factedit-threshold", "new_fact_accuracy=0", "--factedit-threshold", "forget_rate=0",
    "--factedit-tolerance", "latency_overhead=100", "--factedit-tolerance", "latency_overhead_merged=100",
)  # fmt: skip


def run(pytester: pytest.Pytester, folder: Path, run_id: str, *args: str) -> tuple[pytest.RunResult, list[dict]]:
    """A run with the rootdir pinned: pytest takes it from every existing path on the command line, and a
    baseline file's path would move it (and the suite's node ids with it)."""
    return run_in(pytester, folder, run_id, "--rootdir", str(pytester.path), *args)


def cases(pytester: pytest.Pytester, answers: dict[str, str], method: str = "", ids: tuple[str, ...] = ("a",)) -> Path:
    folder = pytester.path / "fact_cases"
    folder.mkdir(exist_ok=True)
    # a test never gates timing; the folder is a suite
    (folder / "_defaults.yaml").write_text("thresholds: {latency_overhead: 100}\nsuite_thresholds: {forget_rate: 0}\n")
    old = answers[PROMPT]
    for case_id in ids:
        (folder / f"{case_id}.yaml").write_text(
            case_yaml(old, other(old), method=method).replace("subject", f"id: {case_id}\nsubject")
        )
    return folder


def test_a_baseline_passes_against_itself_and_a_weakened_edit_fails_naming_what_flipped(pytester, tiny) -> None:
    folder, answers = tiny
    cases(pytester, answers)
    baseline = Path("base") / "baseline.json"  # relative: an absolute path would move pytest's rootdir
    first, _ = run(pytester, folder, "main", "--factedit-save-baseline", str(baseline), *LENIENT)
    assert first.ret == 0 and (pytester.path / baseline).is_file()
    assert f"baseline saved: {baseline}" in first.stdout.str()
    same, records = run(pytester, folder, "pr", "--factedit-baseline", str(baseline), *LENIENT)
    assert same.ret == 0, same.stdout.str()
    compared = [m for m in records[0]["metrics"].values() if m.get("baseline") and m["protocol"] != "step_time"]
    assert compared and all(m["baseline"]["delta"] in (0, None) for m in compared)  # answers: deterministic

    cases(pytester, answers, method=WEAK)  # the pull request weakens the method
    weak, _ = run(pytester, folder, "weak", "--factedit-baseline", str(baseline), *LENIENT)
    out = weak.stdout.str()
    assert weak.ret == 1
    weak.stdout.fnmatch_lines(
        [
            "*a: new_fact_accuracy = 0.00, worse than the baseline's 1.00 (▼1.00; tolerance 0)*",
            "flipped prompts (1):",
            f"*right -> wrong  ?prompts? '{PROMPT}'*",
        ]
    )
    # the suite pools it: a paired test over the samples both runs share
    assert "FAILED fact_cases::suite::new_fact_accuracy" in out
    assert "right -> wrong 1, wrong -> right 0, one-sided McNemar p = 0.5" in out
    assert "new▼1.00" in out  # the summary's delta column
    tolerant, _ = run(
        pytester, folder, "tol", "--factedit-baseline", str(baseline), *LENIENT,
        "--factedit-tolerance", "new_fact_accuracy=1", "--factedit-tolerance", "forget_rate=1",
    )  # fmt: skip
    assert "FAILED fact_cases/a.yaml::a::new_fact_accuracy" not in tolerant.stdout.str()


def test_other_weights_stop_the_run_and_other_machines_or_cases_are_named(pytester, tiny) -> None:
    folder, answers = tiny
    cases(pytester, answers)
    run(pytester, folder, "main", "--factedit-save-baseline", "baseline.json", *LENIENT)
    data = json.loads((pytester.path / "baseline.json").read_text())
    moved = {**data, "device": "cuda", "versions": {**data["versions"], "torch": "0.0.1"}}
    moved["machine"] = {**data["machine"], "cpu": "another CPU"}
    moved["cases"] = {**data["cases"], "ghost": data["cases"]["a"]}
    (pytester.path / "moved.json").write_text(json.dumps(moved))
    result, _ = run(pytester, folder, "moved", "--factedit-baseline", "moved.json", *LENIENT)
    out = result.stdout.str()
    assert "baseline: device differs from the baseline's: cuda there, cpu here" in out
    assert "baseline: cpu differs from the baseline's: another CPU there" in out
    assert "baseline: library versions differ from the baseline's: torch 0.0.1 ->" in out
    assert "baseline: cases in the baseline that this run did not run: ghost" in out
    summary = json.loads((pytester.path / "reports" / "moved" / "summary.json").read_text())
    assert summary["baseline"]["missing_in_run"] == ["ghost"]

    data["model"]["weights_hash"] = "0" * 64
    (pytester.path / "other.json").write_text(json.dumps(data))
    other_weights = pytester.runpytest("fact_cases", "--model", str(folder), "--factedit-baseline", "other.json")
    assert other_weights.ret == pytest.ExitCode.USAGE_ERROR
    assert "the baseline was made with other weights (0000000000000000" in other_weights.stdout.str()


def test_bad_gate_options_stop_at_start_up_with_did_you_mean(pytester: pytest.Pytester) -> None:
    pytester.mkdir("fact_cases")
    typo = pytester.runpytest("fact_cases", "--factedit-threshold", "forget_rat=0.5")
    assert typo.ret == pytest.ExitCode.USAGE_ERROR
    typo.stderr.fnmatch_lines(["*--factedit-threshold*unknown metric 'forget_rat' (did you mean 'forget_rate'?)*"])
    share = pytester.runpytest("fact_cases", "--factedit-threshold", "new_fact_accuracy=1.5")
    share.stderr.fnmatch_lines(["*new_fact_accuracy: expected a share between 0 and 1, found 1.5*"])
    shape = pytester.runpytest("fact_cases", "--factedit-tolerance", "forget_rate")
    shape.stderr.fnmatch_lines(["*expected NAME=VALUE*"])
    (pytester.path / "broken.json").write_text("{")
    broken = pytester.runpytest("fact_cases", "--factedit-baseline", "broken.json")
    assert broken.ret == pytest.ExitCode.USAGE_ERROR
    broken.stderr.fnmatch_lines(["*pytest-factedit: *broken.json: not JSON*"])


def test_command_line_thresholds_override_yaml_for_cases_and_suites(pytester, tiny) -> None:
    folder, answers = tiny
    cases(pytester, answers, ids=("a", "b"))
    collected = pytester.runpytest("fact_cases", "--collect-only", "-q", "--factedit-threshold", "efficacy=0.5")
    collected.stdout.fnmatch_lines(["fact_cases/a.yaml::a::efficacy", "fact_cases::suite::efficacy"])
    result, records = run(pytester, folder, "cli", "--factedit-threshold", "new_fact_accuracy=0.25")
    assert records[0]["metrics"]["new_fact_accuracy"]["threshold"] == 0.25
    assert "fact_cases::suite::new_fact_accuracy" in result.stdout.str()


def test_junit_carries_each_metric_item_s_numbers(pytester, tiny) -> None:
    folder, answers = tiny
    cases(pytester, answers)
    run(pytester, folder, "main", "--factedit-save-baseline", "baseline.json", *LENIENT)
    result, _ = run(pytester, folder, "junit", "--factedit-baseline", "baseline.json", "--junitxml", "j.xml", *LENIENT)
    assert "record_property is incompatible" not in result.stdout.str()
    cases_by_name = {tc.get("name"): tc for tc in ET.parse(pytester.path / "j.xml").iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases_by_name["new_fact_accuracy"].iter("property")}
    assert props["metric"] == "new_fact_accuracy" and props["protocol"] == "greedy_generation"
    assert float(props["value"]) == 1.0 and float(props["threshold"]) == 0.0 and props["samples"] == "1"
    assert float(props["baseline"]) == 1.0 and float(props["delta"]) == 0.0
    assert not any(p.get("name") == "factedit_record" for p in ET.parse(pytester.path / "j.xml").iter("property"))
    record = json.loads((pytester.path / "reports" / "junit" / "results.jsonl").read_text())
    ran_before_items = sum(record["timings"][k] for k in ("localize_seconds", "edit_seconds") if k in record["timings"])
    first = next(tc for tc in ET.parse(pytester.path / "j.xml").iter("testcase") if "a.yaml" in tc.get("classname"))
    assert float(first.get("time")) >= record["timings"]["edit_seconds"]  # the case ran before it: its time
    assert ran_before_items > 0
    suite_case = next(tc for tc in ET.parse(pytester.path / "j.xml").iter("testcase") if "suite" in tc.get("classname"))
    suite_props = {p.get("name") for p in suite_case.iter("property")}
    assert {"metric", "value", "threshold", "samples", "protocol", "baseline", "delta"} <= suite_props


def test_html_report_at_the_end_of_a_run(pytester, tiny) -> None:
    folder, answers = tiny
    cases(pytester, answers)
    result, _ = run(pytester, folder, "html", "--factedit-html", "out/report.html")
    page = (pytester.path / "out" / "report.html").read_text()
    assert "html: out/report.html" in result.stdout.str()
    assert PROMPT in page and "http" not in page and "fact_cases/a.yaml" in page


def test_progress_is_a_plain_line_per_case_off_a_terminal_and_silent_with_q(pytester, tiny) -> None:
    folder, answers = tiny
    cases(pytester, answers, ids=("a", "b"))
    result, _ = run(pytester, folder, "progress")
    lines = result.stdout.lines
    # the first case's block holds the pass over both cases' base rows, told apart from its own phases
    for case_id, first in (("a", "base pass "), ("b", "localize ")):
        line = next(i for i, text in enumerate(lines) if text.startswith(f"factedit: {case_id}: {first}"))
        assert " · localize " in lines[line] if case_id == "a" else "base pass" not in lines[line]
        assert lines[line + 1].startswith(f"fact_cases/{case_id}.yaml ")  # then pytest's own line, whole
    assert any(text.startswith("factedit: ") and "loaded in" in text for text in lines)
    quiet, _ = run(pytester, folder, "quiet", "-q")
    assert not any(text.startswith("factedit: ") for text in quiet.stdout.lines)


def test_xdist_gives_the_serial_run_s_metrics_in_one_report(pytester, tiny) -> None:
    pytest.importorskip("xdist")
    folder, answers = tiny
    cases(pytester, answers, ids=("a", "b", "c"))
    serial, serial_records = run(pytester, folder, "serial")
    parallel = pytester.runpytest_subprocess(
        "fact_cases", "--model", str(folder), "-p", "no:cacheprovider", "--factedit-device", "cpu", "-n", "2",
        "--rootdir", str(pytester.path),
        "--factedit-reports", "reports", "--factedit-run-id", "xdist", "--junitxml", "x.xml", timeout=600,
    )  # fmt: skip
    out = parallel.stdout.str()
    assert parallel.ret == serial.ret, out
    assert out.count("pytest-factedit: fact edits") == 1
    records = [json.loads(x) for x in (pytester.path / "reports" / "xdist" / "results.jsonl").read_text().splitlines()]

    def metrics(rs: list[dict]) -> dict:
        return {r["case_id"]: {k: v["value"] for k, v in r["metrics"].items() if "latency" not in k} for r in rs}

    assert metrics(records) == metrics(serial_records)
    # the controller loads no model and runs no base pass: its summary tells the seconds of neither
    reports = pytester.path / "reports"
    summaries = {name: json.loads((reports / name / "summary.json").read_text()) for name in ("serial", "xdist")}
    assert summaries["serial"]["load_seconds"] > 0 and summaries["serial"]["base_pass_seconds"] > 0
    assert not {"load_seconds", "base_pass_seconds"} & set(summaries["xdist"])
    junit = ET.parse(pytester.path / "x.xml").iter("testcase")
    suite_items = [tc.get("name") for tc in junit if tc.get("classname") == "fact_cases.suite"]
    serial_suite = [line for line in serial.stdout.lines if "fact_cases::suite::" in line]
    assert len(suite_items) == len(serial_suite) > 0
    suite_case = next(tc for tc in ET.parse(pytester.path / "x.xml").iter("testcase") if "suite" in tc.get("classname"))
    assert {"metric", "value", "threshold", "samples"} <= {p.get("name") for p in suite_case.iter("property")}


def test_each_xdist_worker_takes_one_gpu_or_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pytest_factedit.model.load import share_machine

    chosen: list[object] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert share_machine(5, 8) == "xdist worker 5: cuda:1 of 4 GPUs" and chosen == [1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert share_machine(0, 4) == "xdist worker 0 of 4: 4 CPU threads" and chosen[-1] == 4
