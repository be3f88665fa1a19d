"""Editors from plugins, checked at start-up: what a `pytest_factedit_editors` hook returns must be a list
of editor classes (a class alone was an INTERNALERROR; an instance was registered and failed inside a case),
and one broken entry point is said once with its name and error while the others register (it was blamed
on the first case file collected, and stopped the entry points after it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_factedit import edit

from ..packages import installed_package

EDITOR = (
    "class Gentle:\n    name = 'gentle'\n    scope = 'localized'\n"
    "    def apply(self, *args):\n        raise NotImplementedError\n\n"
)
CASE = (
    "subject: Eiffel Tower\nprompts: [The Eiffel Tower is in]\nold: Paris\nnew: Rome\n"
    "controls: [{prompt: Big Ben is in, answer: London}]\n"
)


@pytest.mark.parametrize(
    ("returned", "found"),
    [
        ("Gentle", "found type <class 'conftest.Gentle'>"),
        ("Gentle()", "found Gentle <conftest.Gentle object"),
        ("[Gentle()]", "expected the editor class itself, found Gentle"),
        ("7", "found int 7"),
        ("'gentle'", "found str 'gentle'"),
    ],
)
def test_what_the_hook_returns_is_checked_at_start_up(
    pytester: pytest.Pytester, registry: dict, returned: str, found: str
) -> None:
    conftest = pytester.makeconftest(EDITOR + f"def pytest_factedit_editors(config):\n    return {returned}\n")
    pytester.mkdir("fact_cases")
    result = pytester.runpytest("fact_cases", "-p", "no:cacheprovider")
    err = result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + err
    assert "INTERNALERROR" not in err and "Traceback" not in err
    line = next(line for line in err.splitlines() if "pytest_factedit_editors hook" in line)
    assert f"{conftest}: pytest_factedit_editors hook: " in line and found in line, line
    assert "gentle" not in registry


def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two packages' entry points, in this order: `broken` (its module fails to import), then `fine`."""
    fine = (
        "from dataclasses import dataclass\n\n"
        "from pytest_factedit.edit import IA3TwoStageEditor, IA3TwoStageSettings, changed_default\n\n"
        "@dataclass(frozen=True)\n"
        "class FineSettings(IA3TwoStageSettings):\n"
        "    lr: float = changed_default(IA3TwoStageSettings, 'lr', 0.01)\n\n"
        "class Fine(IA3TwoStageEditor):\n    name = 'ia3-fine'\n    settings_class = FineSettings\n"
    )
    installed_package(
        tmp_path,
        monkeypatch,
        {"broken_editors": "import no_such_module_here\n", "fine_editors": fine},
        {"broken": "broken_editors:Broken", "ia3-fine": "fine_editors:Fine"},
    )


def test_a_broken_entry_point_keeps_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry) -> None:
    installed(tmp_path, monkeypatch)
    assert "ia3-fine" in edit.method_names()
    assert edit.resolve_settings({"name": "ia3-fine"}).lr == 0.01
    (problem,) = edit.installed_editor_problems()
    assert "entry point 'broken' (broken_editors:Broken)" in problem and "no_such_module_here" in problem
    with pytest.raises(edit.MethodError, match="unknown method 'broken'.*entry point 'broken'.*no_such_module_here"):
        edit.resolve_settings({"name": "broken"})


def test_a_broken_entry_point_is_said_once_and_blamed_on_no_case(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, registry
) -> None:
    installed(pytester.mkdir("site"), monkeypatch)
    cases = pytester.mkdir("fact_cases")
    (cases / "a.yaml").write_text(CASE)
    (cases / "b.yaml").write_text(CASE.replace("Paris", "Lyon") + "id: b\nmethod: {name: ia3-fine}\n")
    result = pytester.runpytest("fact_cases", "--collect-only", "-q", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, out
    assert "errors" not in result.parseoutcomes() and "a.yaml::a" in out and "b.yaml::b" in out
    assert out.count("the editor entry point 'broken' (broken_editors:Broken) cannot be loaded") == 1, out
    assert "No module named 'no_such_module_here'" in out
