"""What the command line is given, checked at start-up in one line: `factedit import` (an unhashable case_id,
JSON nested past Python's parser, --out naming a file, a missing --defaults, a negative -n) exits 2 and
writes nothing; --factedit-device-map nested past the parser, or naming a device this machine lacks, is a
usage error before the model loads. Before, each was a traceback, an INTERNALERROR, or (-n -2) a slice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_factedit.cli import main

from .test_import import record

DEEP = "[" * 100_000 + "]" * 100_000


def source(tmp_path: Path, records: object) -> Path:
    path = tmp_path / "cf.json"
    path.write_text(records if isinstance(records, str) else json.dumps(records), encoding="utf-8")
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and printed.err.count("\n") == 1, printed.err
    assert printed.err.startswith("error: ") and "Fix:" in printed.err, printed.err
    return printed.err


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([record(1), record([1, 2])], "key '[1].case_id': expected a number or a string, found list of 2 items"),
        ([record(1), record({"a": 1})], "key '[1].case_id': expected a number or a string, found mapping of 1 keys"),
        ([record(True)], "key '[0].case_id': expected a number or a string, found bool True"),
        (DEEP, "found JSON nested deeper than Python can read"),
    ],
    ids=["list-id", "mapping-id", "bool-id", "deep"],
)
def test_import_refuses_a_source_it_cannot_key_in_one_line(tmp_path: Path, capsys, records, expected: str) -> None:
    path, out = source(tmp_path, records), tmp_path / "cases"
    assert main(["import", "counterfact", str(path), "--out", str(out), "--neighbours", "0"]) == 2
    err = one_line_error(capsys)
    assert f"{path}: " in err and expected in err
    assert not out.exists()


def test_import_refuses_an_out_that_is_a_file(tmp_path: Path, capsys) -> None:
    path, out = source(tmp_path, [record(1)]), tmp_path / "taken.txt"
    out.write_text("mine")
    assert main(["import", "counterfact", str(path), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"--out {out}: expected a folder to write the cases in, found a file" in err
    assert out.read_text() == "mine"


def test_import_refuses_a_missing_defaults_file_before_writing(tmp_path: Path, capsys) -> None:
    path, out = source(tmp_path, [record(1)]), tmp_path / "cases"
    missing = tmp_path / "nowhere" / "_defaults.yaml"
    assert main(["import", "counterfact", str(path), "--out", str(out), "--defaults", str(missing)]) == 2
    err = one_line_error(capsys)
    assert f"--defaults {missing}: expected a _defaults.yaml file to copy into --out, found nothing" in err
    assert not out.exists()


@pytest.mark.parametrize(("flag", "value"), [("-n", "-2"), ("-n", "0"), ("--neighbours", "-1"), ("--anchors", "-3")])
def test_import_refuses_a_count_below_its_minimum(tmp_path: Path, capsys, flag: str, value: str) -> None:
    path, out = source(tmp_path, [record(i) for i in range(1, 6)]), tmp_path / "cases"
    assert main(["import", "counterfact", str(path), "--out", str(out), flag, value]) == 2
    err = one_line_error(capsys)
    assert f"{flag}: expected a whole number >= " in err and f"found {value}" in err
    assert not out.exists()


def test_import_takes_its_defaults_file_from_the_out_folder_itself(tmp_path: Path, capsys) -> None:
    """The hint it prints (--defaults fact_cases/_defaults.yaml) names the file in --out: not copied onto itself."""
    path, out = source(tmp_path, [record(1)]), tmp_path / "cases"
    out.mkdir()
    (out / "_defaults.yaml").write_text("controls: [{prompt: Big Ben is in the city of, answer: London}]\n")
    code = main(["import", "counterfact", str(path), "--out", str(out), "--defaults", str(out / "_defaults.yaml")])
    assert code == 0 and "wrote 1 cases" in capsys.readouterr().out


def pytest_run(tmp_path: Path, device_map: str) -> subprocess.CompletedProcess[str]:
    """`pytest --factedit-device-map MAP` on a folder with no model (none is needed to refuse the map)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path), "-p", "no:cacheprovider", "--factedit-device-map", device_map],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )


def test_a_device_map_nested_past_the_parser_is_a_usage_error(tmp_path: Path) -> None:
    done = pytest_run(tmp_path, "{" + '"a":{' * 10_000 + "}" * 10_001)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
    assert "--factedit-device-map" in done.stderr and "nested" in done.stderr


@pytest.mark.parametrize("device_map", ['{"model": true}', '{"model": "gpu7"}'])
def test_a_device_map_naming_no_device_is_a_usage_error(tmp_path: Path, device_map: str) -> None:
    done = pytest_run(tmp_path, device_map)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stderr[-2000:]
    assert "--factedit-device-map" in done.stderr and "expected" in done.stderr and "Traceback" not in done.stderr


def test_a_device_map_naming_a_gpu_this_machine_lacks_stops_before_the_model_loads(tiny_model_dir) -> None:
    """cuda:N with N at or past torch.cuda.device_count(): one line, before any weight loads."""
    import torch

    from pytest_factedit.errors import ModelLoadError
    from pytest_factedit.model.load import load

    folder, _ = tiny_model_dir
    missing = torch.cuda.device_count()
    for where in (f"cuda:{missing}", missing):
        with pytest.raises(ModelLoadError) as caught:
            load(str(folder), device="cpu", device_map={"model": where, "lm_head": "cpu"})
        message = str(caught.value)
        assert "\n" not in message and "--factedit-device-map" in message
        assert f"found {where!r}" in message and f"{missing} CUDA device" in message
