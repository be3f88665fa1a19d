"""Fact case files built to exhaust memory or time: each is refused quickly with a CaseError, in a child
process bounded to 1 GiB and a few seconds (so a regression fails the test, not the session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .limits import run_limited

LOAD = """
import time
from pytest_factedit.cases import load_case
from pytest_factedit.errors import CaseError
started = time.perf_counter()
try:
    load_case(path)
    print("LOADED")
except CaseError as exc:
    print("CASEERROR", len(str(exc)), str(exc)[:300])
print("SECONDS", time.perf_counter() - started)
"""


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """`subject:` as `levels` nested levels of `width` aliases each: a few hundred bytes, width**levels leaves."""
    lines = ["prompts: [x]", "old: a", "new: b", "controls: [{prompt: p, answer: q}]", "subject:"]
    lines.append("- &l0 [" + ", ".join(["lol"] * width) + "]")
    for level in range(1, levels):
        lines.append(f"- &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def load_limited(path: Path, seconds: int = 20) -> str:
    done = run_limited(LOAD, seconds=seconds, path=str(path))
    assert done.returncode == 0, f"the loader died (exit {done.returncode}): {done.stderr[-800:]}"
    return done.stdout


def test_an_alias_bomb_is_refused_fast_with_a_short_message(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 600
    out = load_limited(path)
    assert "CASEERROR" in out, out
    length = int(out.split("CASEERROR ")[1].split()[0])
    assert length < 500  # a bounded summary of the value, never its expansion
    assert float(out.split("SECONDS ")[1]) < 2.0


@pytest.mark.parametrize(("levels", "key"), [(10, "subject"), (12, "subject"), (10, "prompts"), (12, "old")])
def test_deeper_alias_bombs_under_any_key_are_refused_too(tmp_path: Path, levels: int, key: str) -> None:
    text = alias_bomb(levels)
    if key != "subject":  # the bomb under another key, with a plain subject
        text = text.replace(f"{key}: ", "unused: ").replace("subject:", f"{key}:") + "subject: x\n"
        text = "\n".join(line for line in text.splitlines() if not line.startswith("unused:")) + "\n"
    path = tmp_path / "case.yaml"
    path.write_text(text)
    out = load_limited(path)
    assert "CASEERROR" in out and "once its aliases" in out, out


def test_a_file_over_the_size_cap_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """A valid case padded past 1 MB with a comment: without the cap it would load; with it, refused unread."""
    from pytest_factedit.cases.loader import MAX_FILE_BYTES

    valid = "subject: Big Ben\nprompts: [Big Ben is in]\nold: London\nnew: Rome\ncontrols: [{prompt: q, answer: r}]\n"
    path = tmp_path / "padded.yaml"
    path.write_text(valid + "# " + "x" * MAX_FILE_BYTES + "\n")
    out = load_limited(path)
    assert "CASEERROR" in out and f"larger than {MAX_FILE_BYTES:,} bytes" in out, out
    path.write_text(valid + "# " + "x" * (MAX_FILE_BYTES // 2) + "\n")  # under the cap: the same case loads
    assert "LOADED" in load_limited(path)


def test_the_loader_is_libyamls_where_it_is_installed() -> None:
    import yaml

    from pytest_factedit.cases.loader import _CaseLoader

    if not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML without libyaml here: the pure-Python safe loader is the fallback")
    assert issubclass(_CaseLoader, yaml.CSafeLoader)
