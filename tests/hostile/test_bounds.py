"""Bounded work per case: texts and lists are capped at validation, a case too long for the model's
context is skipped before anything reaches the model, and a probe pass holds a bounded number of tokens.
(A 100,000-character prompt once asked a 2-layer tiny model for a 5.4 GB attention tensor.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_factedit.cases import load_case
from pytest_factedit.cli import main
from pytest_factedit.errors import CaseError

from .conftest import PROMPT, case_text

CASE = (
    "subject: Eiffel Tower\nprompts: [The Eiffel Tower is located in the city of]\nold: Paris\nnew: Rome\n"
    "controls: [{prompt: Big Ben is in the city of, answer: London}]\n"
)
LONG = "The Eiffel Tower " + "stands tall " * 8_333 + "in the city of"  # 100,027 characters
BATCH_TOKENS = 8_192  # the documented bound on one probe pass: rows x padded length


def load(tmp_path: Path, text: str, defaults: str | None = None):
    if defaults is not None:
        (tmp_path / "_defaults.yaml").write_text(defaults)
    path = tmp_path / "case.yaml"
    path.write_text(text)
    return load_case(path)


def test_a_100k_character_prompt_is_refused_at_validation(tmp_path, capsys) -> None:
    assert len(LONG) > 100_000
    (tmp_path / "long.yaml").write_text(CASE.replace("[The Eiffel Tower is located in the city of]", f"['{LONG}']"))
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "long.yaml: key 'prompts[0]': expected at most 2,000 characters, found 100,027" in out, out[:500]
    assert len(out) < 500  # the prompt itself is not echoed


def test_a_100k_character_prompt_never_reaches_the_model(pytester: pytest.Pytester) -> None:
    folder = pytester.mkdir("fact_cases")
    (folder / "long.yaml").write_text(CASE.replace("[The Eiffel Tower is located in the city of]", f"['{LONG}']"))
    result = pytester.runpytest("fact_cases", "--collect-only", "-q", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "long.yaml: key 'prompts[0]': expected at most 2,000 characters, found 100,027" in out, out[-1000:]
    assert "long.yaml::" not in out and "stands tall stands" not in out


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("subject", CASE.replace("Eiffel Tower", "x" * 2_001)),  # in the prompt too, as a subject must be
        ("new", CASE.replace("new: Rome", "new: '" + "R" * 2_001 + "'")),
        ("controls[0].answer", CASE.replace("answer: London", "answer: '" + "L" * 2_001 + "'")),
        ("method.context_prefixes[0]", CASE + "method: {context_prefixes: ['" + "x" * 2_001 + "']}\n"),
    ],
)
def test_every_text_of_a_case_is_capped(tmp_path: Path, key: str, text: str) -> None:
    with pytest.raises(CaseError) as info:
        load(tmp_path, text)
    assert f"key '{key}': expected at most 2,000 characters, found 2,001" in str(info.value)


def _many(key: str, count: int) -> str:
    """`key` with `count` entries that are each valid for it."""
    items = {
        "prompts": [f"The Eiffel Tower is located in the city of {i} of" for i in range(count)],
        "paraphrases": [f"Where is the Eiffel Tower {i}? In" for i in range(count)],
        "aliases": [f"the tower {i}" for i in range(count)],
        "anchors": [f"A sentence {i}." for i in range(count)],
    }
    facts = {
        "neighbours": "{prompt: 'The Louvre %d is in the city of', answer: Paris}",
        "controls": "{prompt: 'Big Ben %d is in the city of', answer: London}",
        "same_subject": "{prompt: 'The Eiffel Tower %d was built in', answer: '1889'}",
        "implications": "{prompt: 'The Eiffel Tower %d is in the country of', answer: Italy}",
    }
    if key in facts:
        return f"{key}: [" + ", ".join(facts[key] % i for i in range(count)) + "]\n"
    if key == "old":
        return "old: [" + ", ".join(f"Paris{i}" for i in range(count)) + "]\n"
    return f"{key}: {json.dumps(items[key])}\n"


CAPS = [
    ("prompts", 64),
    ("paraphrases", 64),
    ("aliases", 16),
    ("neighbours", 64),
    ("controls", 64),
    ("same_subject", 64),
    ("implications", 64),
    ("anchors", 64),
    ("old", 16),
]


@pytest.mark.parametrize(("key", "cap"), CAPS)
def test_lists_are_capped_at_validation_with_the_key_and_both_numbers(tmp_path: Path, key: str, cap: int) -> None:
    base = {line.split(":")[0]: line for line in CASE.splitlines()}
    at_cap = "\n".join(v for k, v in base.items() if k != key) + "\n" + _many(key, cap)
    assert len(getattr(load(tmp_path, at_cap), key)) >= cap  # the cap itself is allowed
    over = "\n".join(v for k, v in base.items() if k != key) + "\n" + _many(key, cap + 1)
    with pytest.raises(CaseError, match=rf"key '{key}': expected at most {cap} [a-z ]+, found {cap + 1}:"):
        load(tmp_path, over)


def test_controls_are_capped_with_those_of_defaults(tmp_path: Path) -> None:
    defaults = _many("controls", 40).replace("Big Ben", "The Shard")
    case = CASE.replace("controls: [{prompt: Big Ben is in the city of, answer: London}]\n", _many("controls", 30))
    with pytest.raises(
        CaseError, match=r"key 'controls': expected at most 64 controls with _defaults.yaml's, found 70"
    ):
        load(tmp_path, case, defaults)


@pytest.mark.parametrize(
    "folder",
    [
        "fact_cases",
        "examples/hard_cases",
        "examples/custom_editor/fact_cases",
        "examples/python_tests/cases",
        "bench/same_subject",
    ],
)
def test_the_shipped_cases_stay_within_every_cap(folder: str) -> None:
    """Every shipped case loads, with the repository as its root (examples/hard_cases links the defaults of
    fact_cases); its `method:` may name an editor its own conftest registers."""
    from pytest_factedit.cases import is_case_file

    repo = Path(__file__).resolve().parents[2]
    files = [path for path in sorted((repo / folder).rglob("*")) if is_case_file(path)]
    assert files and all(load_case(path, root=repo) for path in files)


def test_a_case_longer_than_the_models_context_is_skipped_with_the_numbers(pytester, tiny_model_dir) -> None:
    """The tiny model has 64 positions; a 90-word prompt (under the character cap) cannot fit."""
    folder, old = tiny_model_dir
    long_prompt = "Here is a fact . " * 18 + PROMPT
    cases = pytester.mkdir("fact_cases")
    (cases / "long.yaml").write_text(case_text(old).replace(f"['{PROMPT}']", f"['{long_prompt}']"))
    reports = pytester.path / "reports"
    result = pytester.runpytest(
        "fact_cases", "--model", str(folder), "-rs", "-p", "no:cacheprovider", "--factedit-device", "cpu",
        "--factedit-reports", str(reports), "--factedit-run-id", "long",
    )  # fmt: skip
    record = json.loads((reports / "long" / "results.jsonl").read_text().splitlines()[0])
    assert record["status"] == "skipped", record.get("reason")
    assert "more than the 64 positions of the model" in record["reason"], record["reason"]
    assert re.search(r"needs \d+ tokens \(prompt 100 \+ context prefix \d+ \+ answer \d+\)", record["reason"])
    result.stdout.fnmatch_lines(["*SKIPPED*longest row needs * tokens*64 positions*"])


def test_a_probe_pass_holds_a_bounded_number_of_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 rows of 200 prompt tokens are 12,800 tokens in one pass without the bound; each pass stays under it,
    and the answers are the ones each row gets alone."""
    from pytest_factedit.model import decoding
    from tests.tiny import tiny_model, word_tokenizer

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok))
    ids = tuple(tok("Here is a fact . " * 40 + PROMPT).input_ids)
    rows = [decoding.DecodeRow(ids[i % 7 :], 3, candidates=((5, 6, 7),)) for i in range(64)]
    passes: list[int] = []
    prefill, teacher_forced = decoding.prefill, decoding._teacher_forced

    def counted_prefill(model, prompts, pad):  # noqa: ANN001, ANN202
        passes.append(len(prompts) * (max(map(len, prompts)) + 3))
        return prefill(model, prompts, pad)

    def counted_teacher_forced(model, pre, pairs, pad):  # noqa: ANN001, ANN202
        passes.append(len(pairs) * (pre.mask.shape[1] + max(len(c) for _, c in pairs)))
        return teacher_forced(model, pre, pairs, pad)

    monkeypatch.setattr(decoding, "prefill", counted_prefill)
    monkeypatch.setattr(decoding, "_teacher_forced", counted_teacher_forced)
    batched = decoding.decode(model, tok, rows)
    assert passes and max(passes) <= BATCH_TOKENS, passes
    alone = decoding.decode(model, tok, rows[:1]) + decoding.decode(model, tok, rows[7:8])
    assert [d.tokens for d in alone] == [batched[0].tokens, batched[7].tokens]
