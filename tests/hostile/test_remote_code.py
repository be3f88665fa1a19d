"""A model folder that asks to run its own Python code (`auto_map`) never gets to, unless the user says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def evil_model(tmp_path: Path, tiny_model_dir) -> tuple[Path, Path]:
    """The tiny model, plus a tokenizer and config that point at custom code which leaves a marker file."""
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(tiny_model_dir[0], folder)
    marker = tmp_path / "REMOTE-CODE-RAN"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast, LlamaForCausalLM\n"
        "class EvilTok(PreTrainedTokenizerFast):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    pass\n"
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="EvilTok", auto_map={"AutoTokenizer": [None, "evil.EvilTok"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def prepare(folder: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`factedit prepare` with someone answering "y" to any question on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_factedit.cli", "prepare", "--model", str(folder), "--device", "cpu", *flags],
        input="y\ny\ny\n",
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_custom_code_does_not_run_even_when_someone_answers_yes(evil_model) -> None:
    folder, marker = evil_model
    done = prepare(folder)
    assert not marker.exists(), "the model folder's own code ran"
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--factedit-trust-remote-code" in done.stderr and "Traceback" not in done.stderr


def test_trust_remote_code_is_an_explicit_choice(evil_model) -> None:
    folder, marker = evil_model
    done = prepare(folder, "--trust-remote-code")
    assert done.returncode == 0, done.stderr
    assert marker.exists()


@pytest.mark.parametrize("only_config", [False, True], ids=["tokenizer-and-config", "config-only"])
def test_the_plugin_runs_a_folders_code_only_with_its_flag(pytester: pytest.Pytester, evil_model, only_config) -> None:
    """Through pytest as through the CLI: the folder's code never imported, and with
    `--factedit-trust-remote-code` it runs. A tokenizer that needs its code is refused with the flag named;
    when only config.json asks (`config-only`) and transformers has the architecture, its own class loads."""
    from .conftest import case_text

    folder, marker = evil_model
    if only_config:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer_config.pop("auto_map")
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (pytester.mkdir("fact_cases") / "tower.yaml").write_text(case_text("Paris"))
    args = ["fact_cases", "--model", str(folder), "-p", "no:cacheprovider", "--factedit-device", "cpu"]
    refused = pytester.runpytest_subprocess(*args, "--factedit-reports", str(pytester.path / "r1"))
    out = refused.stdout.str() + refused.stderr.str()
    assert not marker.exists(), "the model folder's own code ran"
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    assert ("--factedit-trust-remote-code" in out) != only_config, out
    trust = ("--factedit-reports", str(pytester.path / "r2"), "--factedit-trust-remote-code")
    trusted = pytester.runpytest_subprocess(*args, *trust)
    assert marker.exists(), trusted.stdout.str() + trusted.stderr.str()
