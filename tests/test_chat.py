"""Chat cases: prompts in the tokenizer's chat template after an optional system prompt, the same way for
every text a case has, on a tiny random model whose tokenizer carries a real template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_factedit.cases.loader import load_case
from pytest_factedit.errors import CaseError, ModelError
from pytest_factedit.model.text import (
    CHAT_REPLY_TOKENS,
    EXTRA_ANSWER_TOKENS,
    ChatFormat,
    answer_token_budget,
    render_prompts,
)

from .tiny import word_tokenizer

QUESTION = "Who developed PyTorch ?"
SYSTEM = "You are helpful . Answer in one word"


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_a_chat_prompt_is_a_user_turn_after_the_system_prompt() -> None:
    tok = word_tokenizer(chat=True)
    [with_system] = render_prompts(tok, [QUESTION], ChatFormat(SYSTEM))
    [without] = render_prompts(tok, [QUESTION], True)
    assert with_system == f"<|system|> {SYSTEM} <|end|> <|user|> {QUESTION} <|end|> <|assistant|>"
    assert without == f"<|user|> {QUESTION} <|end|> <|assistant|>"
    assert render_prompts(tok, [QUESTION], False) == [QUESTION]


def test_a_tokenizer_without_a_chat_template_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match=r"no chat template(.|\n)*Fix: use the model's instruct"):
        render_prompts(word_tokenizer(), [QUESTION], ChatFormat(SYSTEM))


def test_a_chat_reply_gets_room_for_a_sentence_around_the_answer() -> None:
    tok = word_tokenizer(chat=True)
    plain = answer_token_budget(tok, ["Meta"])
    assert answer_token_budget(tok, ["Meta"], ChatFormat()) - plain == CHAT_REPLY_TOKENS - EXTRA_ANSWER_TOKENS


def test_system_comes_from_the_case_or_its_folder_and_needs_chat(tmp_path) -> None:
    write(tmp_path, "_defaults.yaml", f"chat: true\nsystem: {SYSTEM}\n")
    base = f"subject: PyTorch\nprompts: ['{QUESTION}']\nold: Meta\nnew: Google\n"
    base += "controls: [{prompt: Who wrote, answer: she}]\n"
    inherited = load_case(write(tmp_path, "a.yaml", base))
    assert inherited.chat_format == ChatFormat(SYSTEM)
    own = load_case(write(tmp_path, "b.yaml", base + "system: Be brief\n"))
    assert own.chat_format == ChatFormat("Be brief")
    plain = load_case(write(tmp_path, "c.yaml", base + "chat: false\n"))
    assert plain.chat_format is False and plain.system is None  # a folder's system prompt is for its chat cases
    with pytest.raises(CaseError, match=r"c2.yaml: key 'system': a system prompt needs chat: true"):
        load_case(write(tmp_path, "c2.yaml", base + "chat: false\nsystem: Be brief\n"))


def _recording(tok) -> list[str]:
    """Every text the tokenizer encodes from now on (the tokenizer's class is swapped for a recording one)."""
    seen: list[str] = []
    original = type(tok)

    class Recording(original):
        def __call__(self, text, *args, **kwargs):
            seen.extend([text] if isinstance(text, str) else list(text))
            return super().__call__(text, *args, **kwargs)

    tok.__class__ = Recording
    return seen


def test_every_text_of_a_chat_case_goes_through_the_template_in_probes_and_training(tmp_path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.model.load import LoadedModel
    from pytest_factedit.model.probe_cache import BaseAnswerCache
    from pytest_factedit.model.spec import resolve
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import ProbePlan

    from .tiny import tiny_model

    monkeypatch.setenv("FACTEDIT_CACHE", str(tmp_path / "cache"))
    tok = word_tokenizer(chat=True)
    model = tiny_model("llama", len(tok), layers=2)
    lm = LoadedModel(resolve(str(tmp_path)), model, tok, "cpu", "float32", "tiny", 0.0)
    with torch.no_grad():
        ids = tok(render_prompts(tok, [QUESTION], ChatFormat(SYSTEM)), add_special_tokens=False, return_tensors="pt")
        old = tok.decode([int(model(**ids).logits[0, -1].argmax())]).strip()
    write(
        tmp_path,
        "case.yaml",
        f"chat: true\nsystem: {SYSTEM}\nsubject: PyTorch\nprompts: ['{QUESTION}']\nold: '{old}'\n"
        f"new: {'Google' if old != 'Google' else 'Meta'}\nparaphrases: ['Who developed PyTorch']\n"
        "neighbours: [{prompt: Who developed the Louvre ?, answer: Paris}]\n"
        "controls: [{prompt: Who wrote his letter ?, answer: she}]\n"
        "method: {lr: 0.3, unlearn_max_steps: 2, learn_max_steps: 2, guard_tokens: 1, localize: none}\n",
    )
    case = load_case(tmp_path / "case.yaml")
    seen = _recording(tok)
    outcome = run_case(lm, case, resolve_settings(case.method), BaseAnswerCache(), plan=ProbePlan(latency_repeats=0))
    assert outcome.status == "ran", outcome.reason
    texts = [QUESTION, "Who developed PyTorch", "Who developed the Louvre ?", "Who wrote his letter ?"]
    for text in texts:
        wrapped = [s for s in seen if text in s]
        assert wrapped and all(s.startswith(f"<|system|> {SYSTEM} <|end|> <|user|> ") for s in wrapped), text
    assert json.dumps(outcome.case.chat_format.system) == json.dumps(SYSTEM)


def test_chat_cases_run_end_to_end_through_the_plugin_and_a_wrong_old_is_skipped_with_the_replies(
    pytester, tmp_path
) -> None:
    pytest.importorskip("torch")
    from pytest_factedit.model.probe import greedy_continuations

    from .tiny import tiny_model

    tok = word_tokenizer(chat=True)
    model = tiny_model("llama", len(tok), layers=2)
    folder = tmp_path / "tiny-chat"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    [reply] = greedy_continuations(model, tok, [QUESTION], [6], chat=ChatFormat(SYSTEM))
    old = reply.split()[0]
    wrong = "Meta" if old != "Meta" else "Google"
    cases = pytester.mkdir("fact_cases")
    (cases / "_defaults.yaml").write_text(
        f"chat: true\nsystem: {SYSTEM}\ncontrols: [{{prompt: Who wrote his letter ?, answer: she}}]\n"
        "method: {lr: 0.3, unlearn_max_steps: 2, learn_max_steps: 2, guard_tokens: 1, localize: none}\n"
    )
    for name, answer in (("known", old), ("wrong", wrong)):
        (cases / f"{name}.yaml").write_text(
            f"subject: PyTorch\nprompts: ['{QUESTION}']\nold: '{answer}'\n"
            f"new: {'Google' if answer != 'Google' else 'Paris'}\n"
        )
    reports = pytester.path / "reports"
    result = pytester.runpytest(
        "fact_cases", "--model", str(folder), "-p", "no:cacheprovider", "--factedit-reports", str(reports), "-rA"
    )
    lines = (reports / "latest" / "results.jsonl").read_text().splitlines()
    records = {r["case_id"]: r for r in map(json.loads, lines)}
    assert records["known"]["status"] == "ran" and records["known"]["chat"] is True
    assert records["known"]["system"] == SYSTEM and records["known"]["metrics"]["new_fact_accuracy"]["samples"] == 1
    skipped = records["wrong"]
    assert skipped["status"] == "skipped" and f"{QUESTION!r} -> '{reply.strip()}" in skipped["reason"]
    assert "does not give the old answer" in result.stdout.str()


def test_the_models_page_s_phi3_chat_case_is_a_valid_case(tmp_path) -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text(encoding="utf-8")
    block = next(b for b in page.split("```yaml\n")[1:] if "id: pytorch-developer" in b).split("```")[0]
    case = load_case(write(tmp_path, "pytorch-developer.yaml", block))
    assert case.chat_format == ChatFormat("Answer with the name of the company only.")
    assert case.old == ("Meta", "Facebook") and case.new == ("Google",) and case.prompts[0] == "Who developed PyTorch?"
