"""Text from cases and from a model never drives the terminal: escape sequences (a link, a cleared screen)
and control characters are removed, and rich markup in a prompt or an answer (`[/]`, `[/INST]`,
`[bold red]x`) is shown as written, in the failure report, the summary, `factedit show` and `validate`.
Before, an escape reached the CI log as it was, even with --color=no, and `[/]` stopped the report with
rich's MarkupError."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_factedit.cli import main
from pytest_factedit.report.records import RECORD_SCHEMA_VERSION

from .conftest import FAST

ESCAPES = ("\x1b]8;;http://evil\x1b\\", "\x1b[2J")
MARKUP = ("[/]", "[/INST]", "[bold red]x")
SUBJECT_PROMPTS = (
    "The Eiffel Tower is located in the {} city of",
    "{} The Eiffel Tower is located in the city of",
    "The Eiffel Tower {} is located in the city of",
)


def yaml_text(text: str) -> str:
    """`text` as a YAML double-quoted scalar (JSON is YAML; ESC is written as \\u001b)."""
    return json.dumps(text)


def answered_prompts(folder: Path, hostile: tuple[str, ...]) -> list[tuple[str, str]]:
    """(prompt holding each hostile string, the word the tiny model answers it with), trying a few places
    for the string until the answer is a word: the case must hold the fact, so the prompts are counted."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    found = []
    for text in hostile:
        for shape in SUBJECT_PROMPTS:
            prompt = shape.format(text)
            with torch.no_grad():
                answer = tok.decode([int(model(**tok([prompt], return_tensors="pt")).logits[0, -1].argmax())])
            if answer.strip().isalpha():
                found.append((prompt, answer.strip()))
                break
    assert len(found) == len(hostile), found
    return found


def hostile_case(folder: Path, hostile: tuple[str, ...]) -> str:
    """A case whose prompts hold the hostile strings and whose new answer is `[bold red]x` (a word the tiny
    tokenizer cannot spell, so the edit always misses and the report shows every prompt)."""
    answered = answered_prompts(folder, hostile)
    prompts = ", ".join(yaml_text(prompt) for prompt, _ in answered)
    old = ", ".join(yaml_text(answer) for answer in sorted({answer for _, answer in answered}))
    return (
        f"subject: Eiffel Tower\nprompts: [{prompts}]\nold: [{old}]\nnew: {yaml_text('[bold red]x')}\n"
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n" + FAST
    )


def test_hostile_prompts_are_shown_inert_and_as_written_in_a_run(pytester: pytest.Pytester, tiny_model_dir) -> None:
    folder, _ = tiny_model_dir
    cases = pytester.mkdir("fact_cases")
    (cases / "escapes.yaml").write_text(hostile_case(folder, ESCAPES), encoding="utf-8")
    (cases / "markup.yaml").write_text(hostile_case(folder, MARKUP), encoding="utf-8")
    result = pytester.runpytest(
        "fact_cases", "--model", str(folder), "-p", "no:cacheprovider", "--factedit-device", "cpu",
        "--color=no", "-rA", "--factedit-reports", str(pytester.path / "reports"),
        "--factedit-threshold", "latency_overhead=1000",  # the latency gate times a busy machine; not this test's point
    )  # fmt: skip
    out = result.stdout.str() + result.stderr.str()
    assert "MarkupError" not in out and "Traceback" not in out, out
    assert "\x1b" not in out and "\x07" not in out
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "errors" not in result.parseoutcomes(), out
    for case in ("escapes", "markup"):  # `new` cannot be spelled: each case fails, with its table of answers
        assert f"FAILED fact_cases/{case}.yaml::{case}::new_fact_accuracy" in out, out
    for text in ("[/]", "[/INST]", "[bold red]x"):
        assert text in out, text


def record(case_id: str) -> dict:
    metric = {"value": 1.0, "threshold": 0.9, "passed": True, "direction": "higher", "protocol": "greedy_generation"}
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "case_id": case_id,
        "status": "ran",
        "metrics": {"forget_rate": {**metric, "samples": 2}},
    }


def test_factedit_show_prints_hostile_case_ids_inert_and_as_written(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    ids = [f"{text}case" for text in ESCAPES + MARKUP]
    results.write_text("".join(json.dumps(record(i)) + "\n" for i in ids), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest_factedit.cli", "show", str(results)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout + done.stderr
    for text in ("[/]case", "[/INST]case", "[bold red]xcase"):
        assert text in done.stdout, done.stdout


def test_validate_prints_a_hostile_file_name_and_key_inert(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "\x1b[2Jbad.yaml"
    bad.write_text(
        'subject: Eiffel Tower\nprompts: ["The Eiffel Tower is in"]\nold: Paris\nnew: Rome\n'
        'controls: [{prompt: a, answer: b}]\n"\\e]8;;http://evil\\e\\\\[/]": 1\n',
        encoding="utf-8",
    )
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "bad.yaml: key '[/]': unknown key" in out, out


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\b", "alinkb"),
        ("\x1b[2J\x1b[1;31mred\x1b[0m", "red"),
        ("\x9b31mC1\x9d0;title\x07", "C1"),
        ("tab\there\rback\x08\x00", "tab hereback"),
        ("\u202eevil\u2066", "evil"),
        ("\x1b]unterminated", "unterminated"),
        ("line\nbreak", "line\nbreak"),
    ],
)
def test_terminal_text_removes_what_a_terminal_acts_on(text: str, shown: str) -> None:
    from pytest_factedit.errors import terminal_text

    assert terminal_text(text) == shown
    assert "\n" not in terminal_text(text, newlines=False)
