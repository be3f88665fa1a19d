"""The plugin without a model: options, item ids, collection errors, model-load errors, cheap import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

GOOD = textwrap.dedent("""\
    subject: Eiffel Tower
    prompts: [The Eiffel Tower is located in the city of]
    old: Paris
    new: Rome
    paraphrases: [People visit the Eiffel Tower in]
    controls:
      - {prompt: Big Ben is a clock tower in the city of, answer: London}
    """)
MISSPELLED = GOOD.replace("paraphrases:", "paraphrasis:")


@pytest.fixture
def suite(pytester: pytest.Pytester):
    folder = pytester.mkdir("fact_cases")
    (folder / "eiffel.yaml").write_text(GOOD)
    (folder / "broken.yaml").write_text(MISSPELLED)
    (folder / "_defaults.yaml").write_text("controls:\n  - {prompt: The capital of Japan is, answer: Tokyo}\n")
    return folder


def test_items_are_file_case_metric(pytester: pytest.Pytester, suite) -> None:
    (suite / "broken.yaml").unlink()
    result = pytester.runpytest("fact_cases", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "fact_cases/eiffel.yaml::eiffel::new_fact_accuracy",
            "fact_cases/eiffel.yaml::eiffel::forget_rate",
            "fact_cases/eiffel.yaml::eiffel::paraphrase_accuracy",
            "fact_cases/eiffel.yaml::eiffel::neighbour_retention",
            "fact_cases/eiffel.yaml::eiffel::control_retention",
            "fact_cases/eiffel.yaml::eiffel::relation_specificity",
            "fact_cases/eiffel.yaml::eiffel::context_retention",
            "fact_cases/eiffel.yaml::eiffel::latency",
            "*8 tests collected*",
        ]
    )


def test_misspelled_key_is_a_collection_error_naming_file_key_and_suggestion(pytester, suite) -> None:
    result = pytester.runpytest("fact_cases", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*broken.yaml: key 'paraphrasis': unknown key*did you mean 'paraphrases'?*"])
    result.stdout.fnmatch_lines(["*eiffel.yaml::eiffel::latency*"])


def test_unknown_method_fails_collection(pytester, suite) -> None:
    (suite / "broken.yaml").write_text(GOOD + "method: {name: ia3-two-stag}\n")
    result = pytester.runpytest("fact_cases", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*broken.yaml: key 'method.name': unknown method 'ia3-two-stag'*did you mean*"])


def test_keyword_selects_one_metric(pytester, suite) -> None:
    (suite / "broken.yaml").unlink()
    result = pytester.runpytest("fact_cases", "--collect-only", "-q", "-k", "forget")
    result.stdout.fnmatch_lines(["fact_cases/eiffel.yaml::eiffel::forget_rate", "*1/8 tests collected*"])


def test_yaml_outside_case_folders_is_not_collected(pytester) -> None:
    pytester.makefile(".yaml", ci="steps: [a, b]\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_unloadable_model_fails_the_run_once_with_a_fix(pytester, suite, monkeypatch) -> None:
    (suite / "broken.yaml").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = pytester.runpytest_subprocess("fact_cases", "--model", "no-such-org/no-such-model")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert out.count("could not load the model") == 1
    assert "no-such-org/no-such-model" in out and "Fix:" in out
    assert "Traceback" not in out


def test_missing_local_folder_is_explained(tmp_path) -> None:
    from pytest_factedit.errors import ModelLoadError
    from pytest_factedit.model.load import load

    with pytest.raises(ModelLoadError, match="does not exist.*Fix"):
        load(str(tmp_path / "nope"), "cpu")


def test_model_aliases_and_kinds(tmp_path) -> None:
    from pytest_factedit.model.spec import resolve

    assert resolve(None).kind == "embedded"
    assert resolve("phi3").source == "microsoft/Phi-3-mini-4k-instruct"
    assert resolve("org/name").kind == "hub"
    assert resolve(str(tmp_path)).kind == "local"
    assert resolve(str(tmp_path / "m.gguf")).kind == "gguf"


def test_embedded_bytes_are_checked_against_the_pinned_sha256(tmp_path, monkeypatch) -> None:
    from pytest_factedit.model import embedded

    chunks = []
    for i in range(4):
        path = tmp_path / f"part{i}"
        path.write_bytes(b"not the model")
        chunks.append(path)
    monkeypatch.setattr(embedded, "embedded_chunk_paths", lambda: chunks)
    with pytest.raises(embedded.ModelLoadError, match="sha256"):
        embedded.assemble_embedded_gguf(tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_importing_the_plugin_does_not_import_torch() -> None:
    """pytest imports every installed plugin on every run: the faces and the run layer must stay light."""
    modules = "pytest_factedit.plugin, pytest_factedit.cli, pytest_factedit.run.case, pytest_factedit.run.many"
    heavy = "{'torch', 'transformers', 'peft', 'rich'}"
    code = f"import sys, {modules}; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_localize_option_is_checked_and_listed(pytester: pytest.Pytester, suite) -> None:
    result = pytester.runpytest("fact_cases", "--collect-only", "--factedit-localize", "trcae")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--factedit-localize*invalid choice*'trcae'*"])
    help_text = pytester.runpytest("--help").stdout.str()
    assert "--factedit-localize" in help_text and "--factedit-show-trace" in help_text


def test_localize_mode_in_yaml_is_validated_before_the_model_loads(pytester: pytest.Pytester, suite) -> None:
    (suite / "broken.yaml").unlink()
    (suite / "eiffel.yaml").write_text(GOOD + "method: {localize: attributon}\n")
    result = pytester.runpytest("fact_cases", "--model", "/nonexistent/model")
    result.stdout.fnmatch_lines(
        ["*method.localize*expected one of trace, attribution, none, random*did you mean 'attribution'?*"]
    )
