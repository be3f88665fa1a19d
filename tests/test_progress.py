"""Progress events and their display: events reach the listener of their block only, a broken listener never
breaks the run, and each style writes what it promises (rich: transient; plain: one line; silent: nothing)."""

from __future__ import annotations

import hashlib
import io
import re
import threading
from pathlib import Path

import pytest

from pytest_factedit.infra import events
from pytest_factedit.infra.events import (
    CASE_END,
    CONVERT,
    CONVERT_END,
    CONVERT_START,
    LOCALIZE_END,
    LOCALIZE_START,
    PROBE_BASE,
    PROBE_EDITED,
    PROBE_END,
    PROBE_PASS,
    PROBE_START,
    PROBED,
    STAGE_END,
    STEP,
    Event,
    emit,
    listening,
)
from pytest_factedit.report.progress import CaseTally, case_line, case_progress, loaded_line, style_for

from .tiny import REQUEST, saved_tiny_llama, tiny_model, word_tokenizer

PROMPT = "The Eiffel Tower is located in the city of"


class Clock:
    """A clock that moves only when told: exact seconds in the lines."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def synthetic_case(clock: Clock) -> None:
    """The events of one case: base probe, localization, two stages stopping before their caps, edited probe."""
    emit(PROBE_START, PROBE_BASE)
    clock.now += 0.5
    emit(PROBE_END, PROBE_BASE)
    emit(LOCALIZE_START, "trace")
    clock.now += 2.7
    emit(LOCALIZE_END, "trace")
    for stage, steps in (("unlearn", 8), ("learn", 12)):
        for step in range(1, steps + 1):
            clock.now += 0.25
            emit(STEP, stage, step, 30)
        emit(STAGE_END, stage, steps, 30)
    emit(PROBE_START, PROBE_EDITED)
    clock.now += 0.8
    emit(PROBE_END, PROBE_EDITED)
    emit(CASE_END, "ran")


def screen(text: str) -> list[str]:
    """The visible lines after a terminal wrote `text` (enough of VT100 for what rich's Live writes)."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[?0-9;]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", text):
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
            col = 0
            lines += [""] * (row + 1 - len(lines))
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = ""
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [line for line in lines if line.strip()]


# --- events ---------------------------------------------------------------------------------------------


def test_events_reach_the_listener_in_order_and_stop_after_the_block() -> None:
    heard: list[Event] = []
    emit(STEP, "learn", 1, 5)  # nobody listens yet
    with listening(heard.append) as handle:
        emit(LOCALIZE_START, "trace")
        emit(STEP, "unlearn", 1, 8)
        emit(CASE_END, "ran")
    emit(STEP, "learn", 2, 5)
    assert heard == [Event(LOCALIZE_START, "trace"), Event(STEP, "unlearn", 1, 8), Event(CASE_END, "ran")]
    assert handle.error is None and not events.is_listening()


def test_the_innermost_block_hears_and_the_outer_one_hears_again_after() -> None:
    outer: list[str] = []
    inner: list[str] = []
    with listening(lambda e: outer.append(e.label)):
        emit(STEP, "a")
        with listening(lambda e: inner.append(e.label)):
            emit(STEP, "b")
        emit(STEP, "c")
    assert outer == ["a", "c"] and inner == ["b"]


def test_another_thread_does_not_hear_this_threads_block() -> None:
    heard: list[Event] = []
    with listening(heard.append):
        thread = threading.Thread(target=emit, args=(STEP, "elsewhere"))
        thread.start()
        thread.join()
    assert heard == []


def test_emit_without_a_listener_does_nothing() -> None:
    assert not events.is_listening()
    emit(CONVERT, events.SAVING)  # no error, no effect


def test_a_listener_that_raises_does_not_break_emit_and_is_muted() -> None:
    calls: list[Event] = []

    def broken(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("display bug")

    with listening(broken) as handle:
        emit(STEP, "learn", 1, 4)
        emit(STEP, "learn", 2, 4)
        assert not events.is_listening()
    assert len(calls) == 1 and isinstance(handle.error, RuntimeError)


def test_the_block_resets_the_listener_when_it_raises() -> None:
    with pytest.raises(KeyError), listening(lambda e: None):
        raise KeyError("x")
    assert not events.is_listening()


# --- the line ---------------------------------------------------------------------------------------------


def test_the_case_line_names_phases_steps_taken_and_time() -> None:
    tally = CaseTally(localize_seconds=2.74, steps={"unlearn": 8, "learn": 1}, probe_seconds=1.3, status="ran")
    assert case_line("norway-capital", tally, 15.02) == (
        "factedit: norway-capital: localize 2.7 s · unlearn 8 steps · learn 1 step · probe 1.3 s · 15.0 s"
    )
    skipped = CaseTally(probe_seconds=0.4, status="skipped")
    assert case_line("x", skipped, 0.5) == "factedit: x: probe 0.4 s · skipped · 0.5 s"
    assert case_line("x", CaseTally(), 0.1, "RestoreError") == "factedit: x: stopped by RestoreError · 0.1 s"


def test_style_for_a_stream() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert style_for(Tty(), quiet=False) == "rich"
    assert style_for(io.StringIO(), quiet=False) == "plain"
    assert style_for(Tty(), quiet=True) == "silent"


# --- plain ------------------------------------------------------------------------------------------------


def base_probe(clock: Clock, seconds: float) -> None:
    """A case's own base probe of `seconds`, as its events tell it."""
    emit(PROBE_START, PROBE_BASE)
    clock.now += seconds
    emit(PROBE_END, PROBE_BASE)


def test_plain_writes_one_line_per_case_with_its_phases() -> None:
    clock, out = Clock(), io.StringIO()
    progress = case_progress(out, "plain", clock=clock)
    with progress.case("norway-capital"):
        synthetic_case(clock)
        assert out.getvalue() == ""  # nothing while it runs
    with progress.case("second"):
        base_probe(clock, 0.25)
        emit(CASE_END, "skipped")
    assert out.getvalue() == (
        "factedit: norway-capital: localize 2.7 s · unlearn 8 steps · learn 12 steps · probe 1.3 s · 9.0 s\n"
        "factedit: second: probe 0.2 s · skipped · 0.2 s\n"
    )


def test_plain_tells_a_long_base_pass_as_it_goes_and_keeps_it_out_of_the_first_cases_probe() -> None:
    clock, out = Clock(), io.StringIO()
    with case_progress(out, "plain", clock=clock).case("first"):
        emit(PROBE_START, PROBE_PASS)
        for done in (32, 64, 70):
            clock.now += 30.0
            emit(PROBED, PROBE_PASS, done, 70)
        emit(PROBE_END, PROBE_PASS)
        base_probe(clock, 0.5)
        emit(CASE_END, "ran")
    assert out.getvalue() == (
        "factedit: base pass: 32/70 cases probed in 30 s\n"
        "factedit: base pass: 64/70 cases probed in 60 s\n"  # none once it is done: the case's line says it
        "factedit: first: base pass 90.0 s · probe 0.5 s · 90.5 s\n"
    )


def test_plain_writes_its_line_when_the_case_raises_and_lets_the_error_through() -> None:
    out = io.StringIO()
    with pytest.raises(ValueError), case_progress(out, "plain").case("boom"):
        emit(STEP, "unlearn", 1, 8)
        raise ValueError("bad")
    assert out.getvalue().startswith("factedit: boom: unlearn 1 step · stopped by ValueError · ")
    assert out.getvalue().count("\n") == 1


def test_plain_falls_back_to_ascii_on_a_stream_that_cannot_encode_the_dots() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    clock = Clock()
    with case_progress(out, "plain", clock=clock).case("ascii"):
        synthetic_case(clock)
    assert raw.getvalue().decode("ascii").startswith("factedit: ascii: localize 2.7 s - unlearn 8 steps - ")


def test_plain_loading_tells_a_conversion_and_the_load() -> None:
    clock, out = Clock(), io.StringIO()
    progress = case_progress(out, "plain", clock=clock)
    with progress.loading("gemma3-270m"):
        emit(CONVERT_START, "gemma3-270m")
        converting = "factedit: converting gemma3-270m to safetensors (first run only, about half a minute)…\n"
        assert out.getvalue() == converting
        emit(CONVERT, events.DEQUANTIZING, 10, 236)
        clock.now += 71.25
        emit(CONVERT_END, "gemma3-270m")
    with progress.loading("gemma3-270m"):
        clock.now += 3.3
    assert out.getvalue().splitlines()[1:] == [
        "factedit: gemma3-270m converted and loaded in 71.2 s",
        "factedit: gemma3-270m loaded in 3.3 s",
    ]
    assert loaded_line("m", 1.0, False) == "factedit: m loaded in 1.0 s"


def test_plain_loading_shows_the_lines_the_load_tells_about_itself() -> None:
    """The memory estimate and a load note (the oneDNN products on an AMD CPU) each get a line of their own."""
    clock, out = Clock(), io.StringIO()
    with case_progress(out, "plain", clock=clock).loading("gemma3-270m"):
        emit(events.MEMORY, "estimated memory (float32, ia3-two-stage): about 1.3 GiB")
        emit(events.LOAD_NOTE, "fp32 linear layers multiply with oneDNN (faster than MKL on this AMD CPU)")
        clock.now += 2.5
    assert out.getvalue().splitlines() == [
        "factedit: estimated memory (float32, ia3-two-stage): about 1.3 GiB",
        "factedit: fp32 linear layers multiply with oneDNN (faster than MKL on this AMD CPU)",
        "factedit: gemma3-270m loaded in 2.5 s",
    ]


def test_plain_counts_the_steps_the_real_training_loop_took() -> None:
    """The IA³ editor on a tiny random model: the line's step counts are the stages' own, not their caps."""
    pytest.importorskip("torch")
    from pytest_factedit.edit import get_editor, resolve_settings
    from pytest_factedit.model.targets import layer_targets

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=4)
    settings = resolve_settings({"lr": 0.3, "unlearn_max_steps": 5, "learn_max_steps": 7, "guard_tokens": 1})
    out = io.StringIO()
    with case_progress(out, "plain").case("tiny"):
        applied = get_editor("ia3-two-stage").apply(
            model, tok, REQUEST, layer_targets(model, [1, 2], [3], "test"), settings
        )
        applied.remove()
    unlearn, learn = applied.stages
    assert 0 <= unlearn.steps <= 5 and 0 < learn.steps <= 7  # unlearn may find its goal reached at once
    line = out.getvalue()
    assert line.count("\n") == 1
    assert f"unlearn {unlearn.steps} step" in line and f"learn {learn.steps} step" in line, line


def test_training_steps_are_emitted_in_order_up_to_the_stage_end() -> None:
    pytest.importorskip("torch")
    from pytest_factedit.edit import get_editor, resolve_settings
    from pytest_factedit.model.targets import layer_targets

    tok = word_tokenizer()
    model = tiny_model("llama", len(tok), layers=4)
    settings = resolve_settings({"lr": 0.3, "unlearn_max_steps": 3, "learn_max_steps": 4, "guard_tokens": 1})
    heard: list[Event] = []
    with listening(heard.append):
        applied = get_editor("ia3-two-stage").apply(
            model, tok, REQUEST, layer_targets(model, [1, 2], [3], "test"), settings
        )
        applied.remove()
    for stage, report in zip(("unlearn", "learn"), applied.stages):
        mine = [e for e in heard if e.label == stage]
        steps = [e.done for e in mine if e.kind == STEP]
        assert steps == list(range(1, report.steps + 1))
        assert mine[-1] == Event(STAGE_END, stage, report.steps, 3 if stage == "unlearn" else 4)
    assert [e.label for e in heard if e.kind == STAGE_END] == ["unlearn", "learn"]


# --- rich and silent ----------------------------------------------------------------------------------------


def test_rich_draws_while_running_and_leaves_nothing_after() -> None:
    clock, out = Clock(), io.StringIO()
    progress = case_progress(out, "rich", width=100, clock=clock)
    out.write("earlier output\n")
    with progress.case("norway-capital"):
        emit(LOCALIZE_START, "trace")
        emit(STEP, "unlearn", 3, 8)
        during = screen(out.getvalue())
    assert during[0] == "earlier output"
    assert len(during) == 2 and "norway-capital" in during[1]
    assert screen(out.getvalue()) == ["earlier output"]  # transient: gone
    assert "\x1b[" in out.getvalue()


def test_rich_shows_the_current_phase_and_leaves_nothing_after_loading() -> None:
    out = io.StringIO()
    progress = case_progress(out, "rich", width=100)
    with progress.case("c"):
        emit(STEP, "learn", 4, 12)
    assert "c learn step 4/12" in re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", out.getvalue())  # its last frame
    with progress.loading("gemma3-270m"):
        emit(CONVERT_START, "gemma3-270m")
        emit(CONVERT, events.DEQUANTIZING, 100, 236)
    assert "gemma3-270m converting: de-quantizing" in re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", out.getvalue())
    assert screen(out.getvalue()) == []


def test_rich_phase_texts() -> None:
    from pytest_factedit.report.progress import phase_text

    assert phase_text(Event(STEP, "learn", 4, 12)) == "learn step 4/12"
    assert phase_text(Event(LOCALIZE_START, "trace")) == "localize"
    assert phase_text(Event(PROBE_START, PROBE_BASE)) == "probe base"
    assert phase_text(Event(PROBE_START, PROBE_PASS)) == "base pass"
    assert phase_text(Event(PROBED, PROBE_PASS, 32, 70)) == "base pass 32/70 cases"
    assert phase_text(Event(CONVERT, events.DEQUANTIZING, 1, 2)) == "converting: de-quantizing"
    assert phase_text(Event(CASE_END, "ran")) is None


def test_silent_writes_nothing() -> None:
    clock, out = Clock(), io.StringIO()
    progress = case_progress(out, "silent", clock=clock)
    with progress.loading("gemma3-270m"):
        emit(CONVERT_START, "gemma3-270m")
    with progress.case("norway-capital"):
        synthetic_case(clock)
    assert out.getvalue() == ""


def test_an_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="progress style"):
        case_progress(io.StringIO(), "fancy")  # type: ignore[arg-type]


# --- conversion ---------------------------------------------------------------------------------------------


def test_the_gguf_tensor_bar_becomes_events_and_comes_back_after(capsys) -> None:
    pytest.importorskip("transformers")
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from pytest_factedit.model.cache import _bars_as_events

    bar, bars_on = gguf_utils.tqdm, hf_logging.is_progress_bar_enabled()
    heard: list[Event] = []
    with listening(heard.append), _bars_as_events():
        assert not hf_logging.is_progress_bar_enabled()
        items = list(gguf_utils.tqdm(["a", "b", "c"], desc="Converting and de-quantizing GGUF tensors..."))
    assert items == ["a", "b", "c"]
    assert [(e.kind, e.label, e.done, e.total) for e in heard] == [
        (CONVERT, events.DEQUANTIZING, n, 3) for n in range(4)
    ]
    assert gguf_utils.tqdm is bar and hf_logging.is_progress_bar_enabled() == bars_on
    assert capsys.readouterr() == ("", "")


def test_a_conversion_is_told_from_start_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real cache code with a stand-in de-quantization (the real one takes a minute)."""
    pytest.importorskip("filelock")
    from pytest_factedit.model import cache, embedded
    from pytest_factedit.model.spec import CACHE_ENV, resolve

    chunk = tmp_path / "part0"
    chunk.write_bytes(b"gguf bytes")
    monkeypatch.setattr(embedded, "EMBEDDED_SHA256", hashlib.sha256(b"gguf bytes").hexdigest())
    monkeypatch.setattr(embedded, "EMBEDDED_SIZE", len(b"gguf bytes"))
    monkeypatch.setattr(embedded, "embedded_chunk_paths", lambda: [chunk])
    monkeypatch.setattr(cache, "dequantize", lambda gguf, out: (out / "model.safetensors").write_bytes(b"w"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    spec = resolve(None)
    heard: list[Event] = []
    with listening(heard.append):
        cache.converted_dir(spec)
        cache.converted_dir(spec)  # cached: nothing to tell
    assert [(e.kind, e.label) for e in heard] == [
        (CONVERT_START, spec.name),
        (CONVERT, events.ASSEMBLING),
        (CONVERT_END, spec.name),
    ]


# --- a whole case -------------------------------------------------------------------------------------------


def test_a_whole_case_tells_its_phases_in_order(tmp_path: Path) -> None:
    """run_case on a tiny local model, with a case it holds: probe, localize, both stages, probe, end."""
    pytest.importorskip("torch")
    from pytest_factedit.cases.loader import load_case
    from pytest_factedit.edit import resolve_settings
    from pytest_factedit.model.load import load
    from pytest_factedit.run.case import run_case
    from pytest_factedit.run.probing import BaseAnswerCache, ProbePlan

    old = saved_tiny_llama(tmp_path / "tiny", PROMPT)
    (tmp_path / "case.yaml").write_text(
        f"id: tiny-case\nsubject: Eiffel Tower\nprompts: ['{PROMPT}']\nold: '{old}'\n"
        f"new: {'Rome' if old != 'Rome' else 'London'}\n"
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n"
        "method: {lr: 0.3, unlearn_max_steps: 2, learn_max_steps: 3, guard_tokens: 1, noise_samples: 2}\n",
        encoding="utf-8",
    )
    case = load_case(tmp_path / "case.yaml")
    lm = load(str(tmp_path / "tiny"), device="cpu")
    heard: list[Event] = []
    out = io.StringIO()
    with case_progress(out, "plain").case(case.id), listening(heard.append):  # the inner block hears
        outcome = run_case(lm, case, resolve_settings(case.method), BaseAnswerCache(), plan=ProbePlan(1, 4))
    assert outcome.status == "ran", outcome.reason
    assert [(e.kind, e.label) for e in heard if e.kind != STEP] == [
        (PROBE_START, PROBE_BASE),
        (PROBE_END, PROBE_BASE),
        (LOCALIZE_START, "trace"),
        (LOCALIZE_END, "trace"),
        (STAGE_END, "unlearn"),
        (STAGE_END, "learn"),
        (PROBE_START, PROBE_EDITED),
        (PROBE_END, PROBE_EDITED),
        (CASE_END, "ran"),
    ]
    assert [e.done for e in heard if e.kind == STAGE_END] == [s["steps"] for s in outcome.stages]
    assert re.fullmatch(r"factedit: tiny-case: [\d.]+ s\n", out.getvalue())  # the outer display heard nothing
    out = io.StringIO()
    with case_progress(out, "plain").case(case.id):
        run_case(lm, case, resolve_settings(case.method), BaseAnswerCache(), plan=ProbePlan(1, 4))
    steps = " · ".join(f"{s['name']} {s['steps']} step{'' if s['steps'] == 1 else 's'}" for s in outcome.stages)
    assert re.fullmatch(
        rf"factedit: tiny-case: localize [\d.]+ s · {steps} · probe [\d.]+ s · [\d.]+ s\n", out.getvalue()
    )
