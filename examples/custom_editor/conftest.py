"""Bring your own editor: a class with the Editor interface, returned from the `pytest_factedit_editors` hook.

Cases choose it with `method: {name: lora-two-stage}` (or `--factedit-method lora-two-stage`); it gets the
same training rows, goals, stopping rules, localization, probes, metrics and bit-identical restore check as
the built-in editors. An installed package can declare it instead, in its pyproject.toml:

    [project.entry-points."pytest_factedit.editors"]
    lora-two-stage = "my_package.editors:LoraTwoStageEditor"
"""

from pytest_factedit.edit import PeftStagedEditor


class LoraTwoStageEditor(PeftStagedEditor):
    """LoRA in the two stages of the default method: an `unlearn` adapter, then a `learn` adapter on top."""

    name = "lora-two-stage"
    scope = "localized"  # given the localized modules (or "all-layers", "all-weights")
    stages = ("unlearn", "learn")
    defaults = {"lr": 2e-3}  # its own defaults: YAML and the command line still win

    def config(self, targets, settings):
        from peft import LoraConfig

        rank = settings.lora_rank
        return LoraConfig(target_modules=list(targets.modules), r=rank, lora_alpha=2 * rank, lora_dropout=0.0)


def pytest_factedit_editors(config):
    return [LoraTwoStageEditor]
