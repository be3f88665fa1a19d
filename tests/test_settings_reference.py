"""Each editor reads its own settings class: the settings page is generated from those classes and kept
fresh; a `method:` key (or command-line override) the chosen editor does not declare is refused with the
editors that read it and a did-you-mean; a plugin editor declares its settings the same way. No model."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from pytest_factedit import edit
from pytest_factedit.cli import main
from pytest_factedit.edit.reference import settings_reference
from pytest_factedit.errors import MethodError

REPO = Path(__file__).resolve().parent.parent
CASE = (
    "subject: Eiffel Tower\nprompts: [The Eiffel Tower is in]\nold: Paris\nnew: Rome\n"
    "controls: [{prompt: Big Ben is in, answer: London}]\n"
)


def example_editor() -> type:
    """examples/custom_editor/conftest.py's editor class, imported as a plugin would be."""
    spec = importlib.util.spec_from_file_location("custom_editor_conftest", REPO / "examples/custom_editor/conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LoraTwoStageEditor


def test_the_settings_page_is_the_output_of_factedit_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings"]) == 0
    printed = capsys.readouterr().out
    assert printed == settings_reference()
    page = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    assert page == printed, "docs/settings.md is stale: run `factedit settings > docs/settings.md`"


def test_the_page_names_every_key_of_every_built_in_editor() -> None:
    page = settings_reference()
    for name in edit.BUILT_IN:
        assert f"### `{name}`" in page
        assert all(f"| `{key}`" in page for key in edit.settings_class_of(edit.EDITORS[name]).keys())


@pytest.mark.parametrize(
    ("method", "overrides", "expected"),
    [
        ({"value_steps": 3}, None, "value_steps is read by rome, alphaedit; ia3-two-stage does not read it"),
        ({"name": "lora", "gain_positions": "every"}, None, "gain_positions is read by ia3-two-stage, ia3, ia3-all"),
        ({"name": "ia3", "unlearn_max_steps": 2}, None, "read by ia3-two-stage, ia3-all-layers; ia3 does not"),
        ({"name": "rome", "lr": 0.1}, None, "lr is read by ia3-two-stage, ia3, ia3-all-layers, lora, full-ft, ft-m"),
        ({"name": "rome", "value_step": 3}, None, "unknown setting; rome reads: name, seed, .*'value_steps'"),
        ({"name": "rome", "value_steps": 3}, {"name": "lora"}, "value_steps is read by rome, alphaedit; lora does"),
    ],
    ids=["default", "lora-gains", "ia3-unlearn", "rome-lr", "typo", "override"],
)
def test_a_key_the_chosen_editor_does_not_read_is_refused(method: dict, overrides: dict | None, expected: str) -> None:
    with pytest.raises(MethodError, match=expected) as caught:
        edit.resolve_settings(method, overrides)
    assert caught.value.key == f"method.{next(k for k in method if k != 'name')}"


def test_each_editor_gets_its_own_class_with_its_own_defaults() -> None:
    default = edit.resolve_settings({})
    assert isinstance(default, edit.IA3TwoStageSettings) and default.gain_positions == "subject-sentence"
    assert default.subject_rows == 8 and default.tokens_after_answer == default.guard_tokens == 3
    rome = edit.resolve_settings({"name": "rome", "value_steps": 40})
    assert type(rome) is edit.KeyValueSettings and rome.value_steps == 40 and rome.mlp_layers == 1
    assert rome.trained_prefixes == rome.context_prefixes and rome.tokens_after_answer == 0
    assert "lr" not in rome.as_record() and "gain_positions" not in edit.resolve_settings({"name": "lora"}).as_record()
    assert edit.resolve_settings({"name": "ft-m"}).append_eos is True
    with pytest.raises(FrozenInstanceError):
        rome.value_steps = 1  # type: ignore[misc]
    with pytest.raises(MethodError, match="given the settings of 'rome'"):
        edit.IA3Settings.of(rome)


def test_factedit_validate_fails_on_a_key_the_editor_does_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(CASE + "id: good\nmethod: {name: rome, value_steps: 40}\n")
    bad.write_text(CASE + "id: bad\nmethod: {value_steps: 40}\n")
    assert main(["validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"ok     {good}" in out and "1 valid, 1 invalid" in out
    assert f"error  {bad}: key 'method.value_steps': value_steps is read by rome, alphaedit; ia3-two-stage" in out


def test_an_override_the_editor_cannot_take_fails_factedit_edit_before_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = tmp_path / "rome.yaml"
    case.write_text(CASE + "method: {name: rome, value_steps: 40}\n")
    assert main(["edit", str(case), "--method", "lora", "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert f"error: {case}: key 'method.value_steps': value_steps is read by rome, alphaedit; lora does" in err


def test_the_example_plugin_declares_its_own_settings(registry: dict) -> None:
    edit.register_editor(example_editor())
    own = edit.resolve_settings({"name": "lora-two-stage", "alpha_per_rank": 4.0, "unlearn_max_steps": 2})
    assert own.alpha_per_rank == 4.0 and own.unlearn_max_steps == 2 and own.lora_rank == 4 and own.lr == 2e-3
    assert own.stage_limits("unlearn") == (2, 0.05)
    with pytest.raises(MethodError, match="unknown setting; lora-two-stage reads: .*did you mean 'alpha_per_rank'"):
        edit.resolve_settings({"name": "lora-two-stage", "alpha_per_rnak": 4.0})
    with pytest.raises(MethodError, match="gain_positions is read by .*; lora-two-stage does not read it"):
        edit.resolve_settings({"name": "lora-two-stage", "gain_positions": "every"})
    with pytest.raises(MethodError, match="alpha_per_rank is read by lora-two-stage; lora does not read it"):
        edit.resolve_settings({"name": "lora", "alpha_per_rank": 4.0})


def test_a_plugin_case_with_a_key_its_editor_lacks_fails_collection(pytester: pytest.Pytester, registry: dict) -> None:
    (pytester.path / "conftest.py").write_text((REPO / "examples/custom_editor/conftest.py").read_text())
    cases = pytester.mkdir("fact_cases")
    (cases / "a.yaml").write_text(CASE + "method: {name: lora-two-stage, alpha_per_rank: 3.0}\n")
    (cases / "b.yaml").write_text(CASE + "id: b\nmethod: {name: lora-two-stage, alpha_per_rnak: 3.0}\n")
    result = pytester.runpytest("fact_cases", "--collect-only", "-q", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "a.yaml::" in out and "b.yaml::b" not in out
    assert "b.yaml: key 'method.alpha_per_rnak': unknown setting; lora-two-stage reads:" in out
    assert "(did you mean 'alpha_per_rank'?)" in out


SETTINGS = "from dataclasses import dataclass\nfrom pytest_factedit.edit import TrainingLoopSettings, setting\n"


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ("defaults = {'lr': 0.1}", "`defaults` is no longer read: declare the editor's settings as a"),
        ("settings_class = dict", "`settings_class` must be a dataclass deriving from EditSettings"),
        (
            "class S(TrainingLoopSettings):\n        extra: int = setting(1, 'count')\n    settings_class = S",
            "`settings_class` Half.S must be decorated with @dataclass(frozen=True)",
        ),
        (
            "@dataclass(frozen=True)\n    class S(TrainingLoopSettings):\n        extra: int = 1\n"
            "    settings_class = S",
            "declare extra with setting",
        ),
        (
            "@dataclass(frozen=True)\n    class S(TrainingLoopSettings):\n        extra: int = setting(-1, 'count')\n"
            "    settings_class = S",
            "its defaults break a rule: key 'method.extra': expected a non-negative integer",
        ),
    ],
    ids=["defaults", "not-a-class", "not-frozen", "no-rule", "bad-default"],
)
def test_registration_checks_the_settings_class(registry: dict, declared: str, message: str) -> None:
    namespace: dict = {}
    body = f"class Half:\n    name = 'half'\n    scope = 'localized'\n    {declared}\n    def apply(self): ...\n"
    exec(SETTINGS + body, namespace)
    with pytest.raises(MethodError, match=re.escape(message)) as caught:
        edit.register_editor(namespace["Half"])
    assert "\n" not in str(caught.value)


def test_an_editor_without_a_settings_class_reads_the_training_loop(registry: dict) -> None:
    namespace: dict = {}
    exec("class Plain:\n    name = 'plain'\n    scope = 'localized'\n    def apply(self): ...\n", namespace)
    edit.register_editor(namespace["Plain"])
    assert type(edit.resolve_settings({"name": "plain", "lr": 0.1})) is edit.TrainingLoopSettings
    with pytest.raises(MethodError, match="unlearn_max_steps is read by .*; plain does not read it"):
        edit.resolve_settings({"name": "plain", "unlearn_max_steps": 2})
