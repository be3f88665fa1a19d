"""Bring your own editor: a class with the Editor interface, returned from the `pytest_factedit_editors` hook.

Cases choose it with `method: {name: lora-two-stage}` (or `--factedit-method lora-two-stage`); it gets the
same training rows, goals, stopping rules, localization, probes, metrics and bit-identical restore check as
the built-in editors. An installed package can declare it instead, in its pyproject.toml:

    [project.entry-points."pytest_factedit.editors"]
    lora-two-stage = "my_package.editors:LoraTwoStageEditor"
"""

from dataclasses import dataclass

from pytest_factedit.edit import LoraSettings, PeftStagedEditor, UnlearnStageSettings, changed_default, setting


@dataclass(frozen=True)
class LoraTwoStageSettings(LoraSettings, UnlearnStageSettings):
    """Its `method:` keys: lora's (lora_rank), the unlearn stage's (unlearn_max_steps, unlearn_stop_prob),
    those of the shared training loop, and one of its own; its defaults are the fields' defaults."""

    # an editor's own default is its field's default (this one is lora's); YAML and the command line still win
    lr: float = changed_default(LoraSettings, "lr", 2e-3)
    alpha_per_rank: float = setting(2.0, "positive", "LoRA alpha as a multiple of lora_rank")  # its own key


class LoraTwoStageEditor(PeftStagedEditor):
    """LoRA in the two stages of the default method: an `unlearn` adapter, then a `learn` adapter on top."""

    name = "lora-two-stage"
    scope = "localized"  # given the localized modules (or "all-layers", "all-weights")
    stages = ("unlearn", "learn")
    settings_class = LoraTwoStageSettings  # a key it does not declare is refused, with a did-you-mean

    def config(self, targets, settings):
        from peft import LoraConfig

        rank = settings.lora_rank
        alpha = settings.alpha_per_rank * rank
        return LoraConfig(target_modules=list(targets.modules), r=rank, lora_alpha=alpha, lora_dropout=0.0)


def pytest_factedit_editors(config):
    return [LoraTwoStageEditor]
