"""Case files are regular files inside their case folder, read whole and bounded, and a file that is no
case is never echoed: a pull request can add symlinks, FIFOs and devices as easily as YAML, and the
CI log of `factedit validate` or of pytest's collection is public."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_factedit.cases import load_case
from pytest_factedit.cli import main
from pytest_factedit.errors import CaseError

from .limits import run_limited

SECRET = "SECRET_TOKEN=ghp_0123456789abcdefSECRET"
CASE = (
    "subject: Eiffel Tower\nprompts: [The Eiffel Tower is located in the city of]\nold: Paris\nnew: Rome\n"
    "controls: [{prompt: Big Ben is in the city of, answer: London}]\n"
)
COLLECT = ("--collect-only", "-q", "-p", "no:cacheprovider")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A one-line secret of the runner, outside every case folder (a .env, a .netrc line)."""
    path = tmp_path / "outside" / "token.env"
    path.parent.mkdir()
    path.write_text(SECRET + "\n")
    return path


def validate(capsys: pytest.CaptureFixture[str], *paths: Path) -> tuple[int, str]:
    code = main(["validate", *map(str, paths)])
    return code, capsys.readouterr().out


def test_validate_refuses_a_symlink_out_of_the_folder_without_printing_it(tmp_path, secret, capsys) -> None:
    folder = tmp_path / "fact_cases"
    folder.mkdir()
    (folder / "token.yaml").symlink_to(secret)
    for named in (folder, folder / "token.yaml"):  # the folder, or the link named alone
        code, out = validate(capsys, named)
        assert code == 1 and "SECRET" not in out and "ghp_" not in out, out
        assert "token.yaml: expected a file inside the case folder" in out and "leads out of it" in out, out


def test_collection_refuses_symlinks_out_of_the_folder_without_printing_them(pytester, secret) -> None:
    folder = pytester.mkdir("fact_cases")
    (folder / "token.yaml").symlink_to(secret)
    (folder / "home").symlink_to(secret.parent, target_is_directory=True)  # a linked folder of the runner
    (secret.parent / "hosts.yml").write_text(SECRET + "\n")
    for args in (("fact_cases",), ("fact_cases/token.yaml",)):
        out = pytester.runpytest(*args, *COLLECT).stdout.str()
        assert "SECRET" not in out and "ghp_" not in out, out
        assert "token.yaml: expected a file inside the case folder" in out, out
    out = pytester.runpytest("fact_cases", *COLLECT).stdout.str()
    assert "home/hosts.yml: expected a file inside the case folder" in out, out


def test_a_symlink_inside_the_folder_is_followed(tmp_path, capsys) -> None:
    folder = tmp_path / "fact_cases"
    (folder / "shared").mkdir(parents=True)
    (folder / "shared" / "eiffel.txt").write_text(CASE)
    (folder / "eiffel.yaml").symlink_to(folder / "shared" / "eiffel.txt")
    assert validate(capsys, folder) == (
        0,
        f"ok     {folder / 'eiffel.yaml'}  (eiffel: 1 prompts, 0 paraphrases, "
        "0 neighbours, 1 controls)\n1 valid, 0 invalid\n",
    )


DEVICE_AND_FIFO = """
import os, time
from pytest_factedit.cli import main
os.mkfifo(folder + "/fifo.yaml")
os.symlink("/dev/zero", folder + "/zero.yaml")
started = time.perf_counter()
main(["validate", folder])
print("SECONDS", time.perf_counter() - started)
"""


def test_validate_refuses_a_fifo_and_a_device_without_opening_them(tmp_path: Path) -> None:
    """Opening a FIFO blocks for ever and /dev/zero never ends: a child bounded to 1 GiB and 15 s. (pytest
    offers collection regular files only; the plugin's collection reads through the same checks.)"""
    folder = tmp_path / "fact_cases"
    folder.mkdir()
    done = run_limited(DEVICE_AND_FIFO, seconds=5, folder=str(folder))
    out = done.stdout
    assert "fifo.yaml: expected a regular file, found a FIFO" in out, (out, done.stderr[-500:])
    assert "zero.yaml: expected a file inside the case folder" in out, out  # /dev is outside, and a device
    assert float(out.split("SECONDS ")[1]) < 2.0


def test_a_device_inside_its_folder_is_refused_as_one() -> None:
    """A device named as a case in its own folder (/dev/null: empty, so it once read as an empty case)."""
    with pytest.raises(CaseError, match="/dev/null: expected a regular file, found a device"):
        load_case("/dev/null")


def test_the_size_cap_counts_the_bytes_read_not_the_size_on_disk(tmp_path, monkeypatch) -> None:
    """A file whose size on disk says little (procfs, a file growing between stat and read) is cut at 1 MB."""
    from pytest_factedit.cases.loader import MAX_FILE_BYTES

    path = tmp_path / "grown.yaml"
    path.write_text(CASE + "# " + "x" * MAX_FILE_BYTES + "\n")
    real_stat = Path.stat

    def stat_saying_small(self: Path, **kwargs: object) -> os.stat_result:
        found = real_stat(self, **kwargs)
        return os.stat_result((stat.S_IFREG | 0o644, *found[1:6], 100, *found[7:10]))

    monkeypatch.setattr(Path, "stat", stat_saying_small)
    with pytest.raises(CaseError, match=f"larger than {MAX_FILE_BYTES:,} bytes"):
        load_case(path)


def test_a_symlinked_copy_of_a_case_is_a_duplicate_in_validate(tmp_path, capsys) -> None:
    folder = tmp_path / "fact_cases"
    folder.mkdir()
    (folder / "a.yaml").write_text("id: same\n" + CASE)
    (folder / "b.yaml").symlink_to(folder / "a.yaml")
    code, out = validate(capsys, folder)
    assert code == 1 and "b.yaml: key 'id': duplicate case id 'same'" in out, out
    assert "(one is a symlink to the other)" in out and "1 valid, 1 invalid" in out, out
    (folder / "a.yaml").write_text(CASE)  # no id: the link's name would give it another one
    code, out = validate(capsys, folder)
    assert code == 1 and "b.yaml: expected one file per case" in out and "1 valid, 1 invalid" in out, out
    assert validate(capsys, folder, folder / "a.yaml")[0] == 1  # the same path named twice is not a duplicate
    (folder / "b.yaml").unlink()
    assert validate(capsys, folder, folder / "a.yaml")[0] == 0


def test_a_symlinked_copy_of_a_case_fails_collection(pytester: pytest.Pytester) -> None:
    folder = pytester.mkdir("fact_cases")
    (folder / "a.yaml").write_text("id: same\n" + CASE)
    (folder / "b.yaml").symlink_to(folder / "a.yaml")
    result = pytester.runpytest("fact_cases", *COLLECT)
    result.stdout.fnmatch_lines(["*b.yaml: key 'id': duplicate case id 'same'*(one is a symlink to the other)*"])
    assert "fact_cases/b.yaml::same" not in result.stdout.str()


@pytest.mark.parametrize(
    ("text", "found"),
    [(SECRET, "str"), (f"[{SECRET}, x]", "list"), ("12345678", "int"), ("!!binary aGVsbG8=", "bytes")],
)
def test_a_file_that_is_no_mapping_is_shown_by_its_type_only(tmp_path, capsys, text, found) -> None:
    folder = tmp_path / "fact_cases"
    folder.mkdir()
    (folder / "x.yaml").write_text(text + "\n")
    code, out = validate(capsys, folder)
    assert code == 1 and f"x.yaml: expected a mapping of case keys, found {found}\n" in out, out
    assert "SECRET" not in out and "12345678" not in out and "hello" not in out, out


def test_invalid_yaml_is_placed_by_line_and_column_never_quoted(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(f"subject: [{SECRET}\n")
    with pytest.raises(CaseError, match=r"invalid YAML: .*\(line \d+, column \d+\)") as info:
        load_case(path)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    "change",
    [
        ("old: Paris", "old: .nan"),
        ("new: Rome", "new: .inf"),
        ("new: Rome", "new: [Rome, -.inf]"),
        ("new: Rome", "new: 1.0e+400"),
        ("answer: London", "answer: .nan"),
        ("answer: London}]", "answer: London}]\nneighbours: [{prompt: The Louvre is in the city of, answer: .nan}]"),
        ("answer: London}]", "answer: London}]\nsame_subject: [{prompt: The Eiffel Tower was built in, answer: .inf}]"),
        ("answer: London}]", "answer: London}]\nimplications: [{prompt: Rome is in, answer: .NaN}]"),
    ],
)
def test_a_non_finite_answer_is_refused_not_turned_into_text(tmp_path: Path, change: tuple[str, str]) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(CASE.replace(*change))
    with pytest.raises(CaseError, match="expected a finite number, found float"):
        load_case(path)


def test_a_non_finite_number_anywhere_in_defaults_is_refused(tmp_path: Path) -> None:
    (tmp_path / "_defaults.yaml").write_text("controls: [{prompt: Rome is the capital of, answer: [Italy, .nan]}]\n")
    (tmp_path / "case.yaml").write_text(CASE)
    with pytest.raises(CaseError, match=r"_defaults.yaml: key 'controls\[0\].answer\[1\]': expected a finite"):
        load_case(tmp_path / "case.yaml")


def test_a_defaults_file_linked_out_of_the_folder_is_refused(tmp_path: Path, secret: Path) -> None:
    folder = tmp_path / "fact_cases"
    folder.mkdir()
    (folder / "_defaults.yaml").symlink_to(secret)
    (folder / "case.yaml").write_text(CASE)
    with pytest.raises(CaseError, match="_defaults.yaml: expected a file inside the case folder") as info:
        load_case(folder / "case.yaml", root=folder)
    assert "SECRET" not in str(info.value)
