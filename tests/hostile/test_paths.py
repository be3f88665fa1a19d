"""Names from data never become paths outside their folder: case ids, run ids, and what is built from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_factedit.cases import load_case
from pytest_factedit.cases.ids import inside
from pytest_factedit.errors import CaseError, FactEditError

GOOD = (
    "subject: Eiffel Tower\nprompts: [The Eiffel Tower is located in the city of]\nold: Paris\nnew: Rome\n"
    "controls: [{prompt: Big Ben is in the city of, answer: London}]\n"
)


@pytest.mark.parametrize(
    "case_id",
    [
        "../../x",
        "/abs/dir",
        ".hidden",
        "a b",
        "a/b",
        "x" * 200,
        "caf\u00e9",
        "evil\u202etxt.yaml",
        "zero\u200bwidth",
        "",
        "-flag",
    ],
)
def test_unsafe_case_ids_are_refused_at_load_with_the_key(tmp_path: Path, case_id: str) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(f"id: {case_id!r}\n" + GOOD, encoding="utf-8")
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert info.value.key == "id" and "letters, digits" in str(info.value)
    assert "\u202e" not in str(info.value) and "\u200b" not in str(info.value)  # escaped, never printed raw


def surrogate_named(folder: Path, text: str) -> Path:
    """A case file whose name is not UTF-8: Python sees a lone surrogate in it (and in the id it gives)."""
    name = os.path.join(os.fsencode(folder), b"bad\xffid.yaml")
    with open(name, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(os.fsdecode(name))


def test_a_lone_surrogate_in_an_id_is_refused_and_printable(tmp_path: Path) -> None:
    path = surrogate_named(tmp_path, GOOD)
    assert "\udcff" in path.stem
    with pytest.raises(CaseError, match="key 'id'") as info:
        load_case(path)
    str(info.value).encode("utf-8")  # no lone surrogate left in the message: it prints anywhere


def test_a_file_name_that_is_no_safe_id_asks_for_an_id(tmp_path: Path) -> None:
    path = tmp_path / "my fact.yaml"
    path.write_text(GOOD)
    with pytest.raises(CaseError, match=r"key 'id'.*file name.*set `id:`"):
        load_case(path)
    path.rename(tmp_path / "my-fact.yaml")
    assert load_case(tmp_path / "my-fact.yaml").id == "my-fact"


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../b", "..", ""])
def test_inside_refuses_names_that_leave_the_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(FactEditError, match="outside"):
        inside(tmp_path, name)
    assert inside(tmp_path, "case-1") == (tmp_path / "case-1").resolve()


def test_factedit_edit_refuses_an_escaping_id_before_anything_is_written(tmp_path: Path) -> None:
    case = tmp_path / "cases" / "x.yaml"
    case.parent.mkdir()
    case.write_text("id: ../../escaped\n" + GOOD)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pytest_factedit.cli", "edit", str(case), "--save", str(out), "--model", "/nonexistent"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "key 'id'" in done.stderr, done.stderr
    assert not (tmp_path / "escaped").exists() and not out.exists()


def test_validate_goes_on_after_a_file_that_cannot_be_printed(tmp_path: Path) -> None:
    surrogate_named(tmp_path, GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    done = subprocess.run(
        [sys.executable, "-m", "pytest_factedit.cli", "validate", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        "bad\\xffid.yaml: key 'id'" in done.stdout and "ok     " in done.stdout and "1 valid, 1 invalid" in done.stdout
    )


def test_the_plugin_refuses_an_escaping_id_before_saving_adapters(pytester: pytest.Pytester, tiny_model_dir) -> None:
    """`--factedit-save-adapters DIR` with a case whose id climbs out: a collection error on `id`, the other
    case still runs and saves its adapters inside DIR, and nothing lands outside."""
    from .conftest import case_text

    folder, old = tiny_model_dir
    cases = pytester.mkdir("fact_cases")
    (cases / "escape.yaml").write_text(case_text(old, "../../escaped"))
    (cases / "fine.yaml").write_text(case_text(old))
    saved = pytester.path / "adapters"
    result = pytester.runpytest_subprocess(
        "fact_cases", "--model", str(folder), "-p", "no:cacheprovider", "--factedit-device", "cpu",
        "--factedit-save-adapters", str(saved), "--factedit-reports", str(pytester.path / "reports"),
    )  # fmt: skip
    out = result.stdout.str()
    assert "escape.yaml: key 'id'" in out and result.parseoutcomes().get("errors") == 1, out
    assert (saved / "fine" / "manifest.json").is_file()
    assert sorted(p.name for p in saved.iterdir()) == ["fine"]
    assert not (pytester.path.parent / "escaped").exists() and not (pytester.path / "escaped").exists()


def test_factedit_localize_refuses_an_escaping_id_before_drawing(tmp_path: Path) -> None:
    """Its default PNG path is built from the case id: the id is refused first, and no picture is written."""
    case = tmp_path / "cases" / "x.yaml"
    case.parent.mkdir()
    case.write_text("id: ../../drawn\n" + GOOD)
    done = subprocess.run(
        [sys.executable, "-m", "pytest_factedit.cli", "localize", str(case), "--model", "/nonexistent"],
        capture_output=True,
        text=True,
        cwd=tmp_path / "cases",
    )
    assert done.returncode == 2 and "key 'id'" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not list(tmp_path.rglob("*.png"))
