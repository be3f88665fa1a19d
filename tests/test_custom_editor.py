"""Bring your own editor: the `pytest_factedit_editors` hook (examples/custom_editor/), the entry point group,
and the interface checked when an editor is registered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

from pytest_factedit import edit  # noqa: E402
from pytest_factedit.errors import MethodError  # noqa: E402

from .packages import installed_package  # noqa: E402
from .test_metrics_plugin import PROMPT, case_yaml, other, saved_tiny  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return saved_tiny(tmp_path_factory)


def test_the_example_editor_runs_a_case_and_restores_the_base(pytester: pytest.Pytester, tiny, registry: dict) -> None:
    folder, answers = tiny
    shutil.copy(REPO / "examples" / "custom_editor" / "conftest.py", pytester.path / "conftest.py")
    cases = pytester.mkdir("fact_cases")
    old = answers[PROMPT]
    method = "name: lora-two-stage, lr: 0.05, unlearn_max_steps: 2, learn_max_steps: 6, localize: none"
    (cases / "a.yaml").write_text(case_yaml(old, other(old), "thresholds: {latency_overhead: 100}\n", method))
    result = pytester.runpytest(
        "fact_cases", "--model", str(folder), "--factedit-device", "cpu", "-p", "no:cacheprovider",
        "--factedit-run-id", "own", "--rootdir", str(pytester.path),
    )  # fmt: skip
    assert "unknown method" not in result.stdout.str()
    record = json.loads((pytester.path / "reports" / "own" / "results.jsonl").read_text())
    assert record["status"] == "ran" and record["method"]["name"] == "lora-two-stage"
    assert [s["name"] for s in record["method"]["stages"]] == ["unlearn", "learn"]
    assert record["method"]["settings"]["lr"] == 0.05 and record["base_restored"] is True


def test_a_bad_editor_from_the_hook_stops_the_run_at_start_up(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "class Clash:\n    name = 'lora'\n    scope = 'localized'\n"
        "    def apply(self, *args):\n        raise NotImplementedError\n\n"
        "def pytest_factedit_editors(config):\n    return [Clash]\n"
    )
    pytester.mkdir("fact_cases")
    result = pytester.runpytest("fact_cases")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot register 'Clash': the editor name 'lora' is built in*"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name = 'Bad Name'", "`name` must be a lower-case name"),
        ("name = 'x'\n    scope = 'everywhere'", "`scope` must be one of localized, all-layers, all-weights"),
        ("name = 'x'\n    scope = 'localized'", "it needs apply"),
    ],
)
def test_registration_checks_the_interface(registry: dict, body: str, message: str) -> None:
    namespace: dict = {}
    exec(f"class Half:\n    {body}\n", namespace)
    with pytest.raises(MethodError, match=message):
        edit.register_editor(namespace["Half"])


def test_an_installed_package_declares_editors_by_entry_point(
    registry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gentle = (
        "from dataclasses import dataclass\n\n"
        "from pytest_factedit.edit import IA3TwoStageEditor, IA3TwoStageSettings, changed_default\n\n"
        "@dataclass(frozen=True)\n"
        "class GentleSettings(IA3TwoStageSettings):\n"
        "    lr: float = changed_default(IA3TwoStageSettings, 'lr', 0.01)\n\n"
        "class Gentle(IA3TwoStageEditor):\n    name = 'ia3-gentle'\n    settings_class = GentleSettings\n"
    )
    installed_package(tmp_path, monkeypatch, {"my_editors": gentle}, {"ia3-gentle": "my_editors:Gentle"})
    monkeypatch.setattr(edit, "_installed", [])
    assert "ia3-gentle" in edit.method_names()
    settings = edit.resolve_settings({"name": "ia3-gentle"})
    assert settings.lr == 0.01 and edit.get_editor("ia3-gentle").stages == ("unlearn", "learn")
