"""Shared pieces of the hostile suite: a tiny local model folder and a case it can run in a second."""

from __future__ import annotations

from pathlib import Path

import pytest

PROMPT = "The Eiffel Tower is located in the city of"
FAST = "method: {lr: 0.3, unlearn_max_steps: 2, learn_max_steps: 3, guard_tokens: 1, localize: none}\n"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny random llama saved as a local model folder, and the word it answers PROMPT with."""
    pytest.importorskip("torch")
    from ..tiny import saved_tiny_llama

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    return folder, saved_tiny_llama(folder, PROMPT)


def case_text(old: str, case_id: str | None = None) -> str:
    """A case the tiny model holds (its own answer as `old`), edited in a few steps."""
    new = "Rome" if old != "Rome" else "London"
    head = f"id: {case_id!r}\n" if case_id is not None else ""
    return (
        head + f"subject: Eiffel Tower\nprompts: ['{PROMPT}']\nold: '{old}'\nnew: {new}\n"
        "controls: [{prompt: Big Ben is a clock tower in the city of, answer: London}]\n" + FAST
    )
