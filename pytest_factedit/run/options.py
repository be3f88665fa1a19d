"""The run's options, defined once for both the pytest plugin (`--factedit-*`, `--model`) and `factedit` CLI.

Each option is one `OptionSpec`. `add_options` registers a group of them on pytest's or argparse's
`addoption`, with the plugin's `factedit-` prefix or none; `Options.from_values` reads them back.
Bad values stop at the border: argparse and pytest reject them (choices, types) before anything runs.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..cases.ids import name_problem
from ..edit.settings import LOCALIZE_MODES, EditSettings
from ..errors import did_you_mean, shown
from ..infra.markdown import table_cell
from ..metrics.spec import METRIC_BY_NAME, threshold_problem
from ..model.load import DEVICE_MAPS, DEVICE_NAME, DEVICES, DTYPES
from ..model.spec import DEFAULT_MODEL

MODES = ("isolated", "sequential", "batch")
PLUGIN_PREFIX = "factedit-"


def safe_name(value: str) -> str:
    """argparse type of an option that names a folder: a safe name, or a usage error saying which are."""
    problem = name_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _metric_and_number(text: str) -> tuple[str, float]:
    """NAME=VALUE with a known metric name and a finite number, or a usage error saying what was expected."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. forget_rate=0.9), found {text!r}")
    if name not in METRIC_BY_NAME:
        raise argparse.ArgumentTypeError(
            f"unknown metric {name!r}{did_you_mean(name, METRIC_BY_NAME)}; expected one of {', '.join(METRIC_BY_NAME)}"
        )
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected a number after '=', found {raw!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{name}: expected a finite number, found {raw!r}")
    return name, value


def threshold_setting(text: str) -> tuple[str, float]:
    """argparse type of --factedit-threshold: NAME=VALUE, the value in the metric's range."""
    name, value = _metric_and_number(text)
    problem = threshold_problem(name, value)
    if problem:
        raise argparse.ArgumentTypeError(f"{name}: {problem}")
    return name, value


def tolerance_setting(text: str) -> tuple[str, float]:
    """argparse type of --factedit-tolerance: NAME=ABS, how much worse than the baseline still passes."""
    name, value = _metric_and_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{name}: expected a tolerance >= 0, found {value:g}")
    return name, value


def device_map_setting(text: str) -> str | dict[str, Any]:
    """argparse type of --factedit-device-map: an accelerate strategy, or a flat JSON object of module ->
    device (a GPU number, or a name such as 'cpu' or 'cuda:1'); whether this machine has each device is
    checked where torch loads (`model.load.check_device_map`)."""
    if text in DEVICE_MAPS:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(DEVICE_MAPS)} or a JSON object such as "
            f'\'{{"model.layers.0": 0, "lm_head": "cpu"}}\', found {shown(text, typed=False)}'
        ) from None
    except RecursionError:
        raise argparse.ArgumentTypeError(
            "expected a flat JSON object of module name -> device, found JSON nested deeper than Python can read"
        ) from None
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError(
            f"expected a non-empty JSON object of module name -> device, found {shown(text, typed=False)}"
        )
    for module, where in value.items():
        number = isinstance(where, int) and not isinstance(where, bool) and where >= 0
        if not number and not (isinstance(where, str) and DEVICE_NAME.fullmatch(where)):
            raise argparse.ArgumentTypeError(
                f"module {shown(module, typed=False)}: expected GPU numbers or names such as 'cpu', 'cuda:1' or "
                f"'disk', found {shown(where)}"
            )
    return value


def alpha_setting(text: str) -> float:
    """argparse type of --factedit-alpha: a significance level strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, found {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, found {text!r}")
    return value


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name (without prefix), its argparse settings, and its help."""

    name: str
    help: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    unprefixed: bool = False  # `--model` is the mission's own command line: no prefix in the plugin either
    cli_aliases: tuple[str, ...] = ()  # extra spellings the CLI accepts (e.g. `--save`)

    def dest(self, prefix: str) -> str:
        return (prefix + self.name).replace("-", "_")

    def flags(self, prefix: str) -> list[str]:
        main = "--" + (self.name if self.unprefixed else prefix + self.name)
        return [main] + ([] if prefix else list(self.cli_aliases))


OPTIONS: dict[str, OptionSpec] = {
    spec.name: spec
    for spec in (
        OptionSpec(
            "model",
            f"model to edit: {DEFAULT_MODEL} (embedded, default), phi3, a Hugging Face id, a local "
            "folder or a .gguf file",
            {"default": DEFAULT_MODEL, "metavar": "NAME"},
            unprefixed=True,
        ),
        OptionSpec(
            "trust-remote-code",
            "let a model folder run Python code of its own (auto_map): only for a model you trust",
            {"action": "store_true", "default": False},
        ),
        OptionSpec(
            "device",
            "where to run: auto picks CUDA (bf16) when present, else CPU (fp32)",
            {"default": "auto", "choices": DEVICES},
        ),
        OptionSpec(
            "dtype",
            "weights dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16",
            {"default": "auto", "choices": DTYPES},
        ),
        OptionSpec(
            "device-map",
            "spread a model too big for one GPU over several and the CPU (accelerate): auto, balanced, "
            "sequential, or a JSON object of module name -> device",
            {"default": None, "metavar": "MAP", "type": device_map_setting},
        ),
        OptionSpec(
            "method",
            "editing method for every case (overrides method.name in YAML)",
            {"default": None, "metavar": "NAME"},
        ),
        OptionSpec(
            "localize",
            "where the edit goes: trace (causal tracing, default), attribution (gradient estimate "
            "confirmed by real patches), none (every layer) or random (ablation); overrides method.localize "
            "in YAML",
            {"default": None, "choices": LOCALIZE_MODES},
        ),
        OptionSpec(
            "seed",
            "seed for every case (overrides method.seed; default 0)",
            {"default": None, "type": int, "metavar": "N"},
        ),
        OptionSpec(
            "save-adapters",
            "write each case's adapters (peft format, one folder per stage) and a manifest to DIR/<case-id>/ "
            "(batch mode: DIR/batch/; sequential: DIR/sequence/, one folder per edit, in order)",
            {"default": None, "metavar": "DIR", "type": Path},
            cli_aliases=("--save",),
        ),
        OptionSpec(
            "show-trace",
            "print each case's layer x position localization heatmap in the summary",
            {"action": "store_true", "default": False},
        ),
        OptionSpec(
            "mode",
            "isolated (default): every case edits the base model and is undone; sequential: the cases "
            "are applied one after another to one model (each merged before the next), then every earlier edit "
            "and every control is checked again; batch: one adapter is trained on all cases at once, and every "
            "case and control is checked with it",
            {"default": "isolated", "choices": MODES},
        ),
        OptionSpec(
            "reports",
            "folder for run reports (default: <rootdir>/reports)",
            {"default": None, "metavar": "DIR", "type": Path},
        ),
        OptionSpec(
            "fresh-probes",
            "probe and trace the base model anew instead of reusing its answers, traces and router states from "
            "earlier runs (kept in the model cache, keyed by weights hash, prompt, dtype, device and library "
            "versions)",
            {"action": "store_true", "default": False},
        ),
        OptionSpec(
            "run-id",
            "name of this run's report folder, which must not exist yet (default: timestamp + random suffix)",
            {"default": None, "metavar": "ID", "type": safe_name},
        ),
        OptionSpec(
            "threshold",
            "NAME=VALUE: the threshold of metric NAME for every case and suite row of this run, over YAML "
            "(repeatable; a recorded-only metric becomes gated)",
            {"default": [], "action": "append", "type": threshold_setting, "metavar": "NAME=VALUE"},
        ),
        OptionSpec(
            "save-baseline",
            "write this run's metrics, every sample's outcome, the model's weights hash, device, dtype, "
            "settings and library versions to PATH (JSON), to compare later runs against",
            {"default": None, "metavar": "PATH", "type": Path},
        ),
        OptionSpec(
            "baseline",
            "compare against a baseline file: a case metric worse than its baseline by more than its "
            "tolerance fails, and so does a suite metric that a paired McNemar test finds worse",
            {"default": None, "metavar": "PATH", "type": Path},
        ),
        OptionSpec(
            "baseline-any-model",
            "compare with the baseline even when it was made with other weights, or records none (the "
            "difference is a warning in the summary)",
            {"action": "store_true", "default": False},
        ),
        OptionSpec(
            "tolerance",
            "NAME=ABS: how much worse than the baseline metric NAME may be and still pass (repeatable; "
            "default 0, timings 0.25)",
            {"default": [], "action": "append", "type": tolerance_setting, "metavar": "NAME=ABS"},
        ),
        OptionSpec(
            "alpha",
            "significance level of the suite's paired test against the baseline (default 0.05)",
            {"default": 0.05, "type": alpha_setting, "metavar": "P"},
        ),
        OptionSpec(
            "html",
            "write a self-contained HTML report of the run to PATH at the end",
            {"default": None, "metavar": "PATH", "type": Path},
        ),
    )
}

MODEL_OPTIONS = ("model", "device", "dtype", "device-map", "trust-remote-code")
EDIT_OPTIONS = ("method", "localize", "seed", "save-adapters")
RUN_OPTIONS = ("show-trace", "mode", "reports", "run-id", "fresh-probes", "html")
GATE_OPTIONS = ("threshold", "save-baseline", "baseline", "baseline-any-model", "tolerance", "alpha")


def _takes(spec: OptionSpec) -> str:
    """What an option takes, for the options page: nothing, one of its choices, or its metavar."""
    settings = spec.settings
    if settings.get("action") == "store_true":
        return "nothing (a switch)"
    shown_value = " \\| ".join(f"`{choice}`" for choice in settings.get("choices", ()))
    shown_value = shown_value or f"`{settings.get('metavar', 'VALUE')}`"
    return shown_value + (", repeatable" if settings.get("action") == "append" else "")


def _default_shown(spec: OptionSpec) -> str:
    value = spec.settings.get("default")
    if value is None or value is False or value == []:
        return "off" if value is False else "none" if value == [] else "not set"
    return f"`{value}`"


def options_markdown() -> str:
    """The options page of the documentation (docs/options.md), written from OPTIONS alone so that it
    cannot drift from what pytest and `factedit` accept; `factedit options` prints it."""
    groups = (
        ("The model", MODEL_OPTIONS),
        ("Editing", EDIT_OPTIONS),
        ("The run and its reports", RUN_OPTIONS),
        ("Gating: thresholds and baselines", GATE_OPTIONS),
    )
    lines = [
        "# Options",
        "",
        "<!-- Generated by `factedit options > docs/options.md` from pytest_factedit/run/options.py: edit the",
        "help there, not here (tests/test_docs_pages.py fails when this page is stale). -->",
        "",
        "Every option of a run: `pytest fact_cases/ --factedit-mode sequential`. The `factedit` commands take",
        "the ones they use without the `factedit-` prefix (`factedit edit CASE --method rome`). A bad value",
        "stops the run at start-up, before the model loads, saying what was expected: an unknown metric name",
        'gets a "did you mean", a share threshold outside 0..1 is refused, and an unreadable baseline is named',
        "with its key.",
    ]
    for title, names in groups:
        lines += ["", f"## {title}", "", "| option | takes | default | what it does |", "|---|---|---|---|"]
        for spec in (OPTIONS[name] for name in names):
            flag = f"`{spec.flags(PLUGIN_PREFIX)[0]}`"
            flag += "".join(f" (`factedit`: also `{alias}`)" for alias in spec.cli_aliases)
            lines.append(f"| {flag} | {_takes(spec)} | {_default_shown(spec)} | {table_cell(spec.help)} |")
    return "\n".join(lines) + "\n"


def add_options(addoption: Callable[..., Any], names: Sequence[str], prefix: str = "") -> None:
    """Register the named options on `addoption` (pytest's group.addoption or argparse's add_argument)."""
    for name in names:
        spec = OPTIONS[name]
        addoption(*spec.flags(prefix), dest=spec.dest(prefix), help=spec.help, **spec.settings)


def _from(option: str) -> Any:
    """A field of `Options` read from an option whose name is not the field's own (dashes for underscores)."""
    return field(metadata={"option": option})


@dataclass(frozen=True, kw_only=True)
class Options:
    """The --model / --factedit-* options, as given: one field per entry of OPTIONS, named after it
    (`_from` names the option where the field's name differs); `from_values` fills them by that name."""

    model: str
    device: str
    method: str | None
    seed: int | None
    reports_dir: Path = _from("reports")
    run_id: str | None
    localize: str | None
    show_trace: bool
    save_adapters: Path | None
    mode: str
    trust_remote_code: bool
    fresh_probes: bool
    thresholds: tuple[tuple[str, float], ...] = _from("threshold")  # --factedit-threshold, over YAML
    baseline: Path | None
    baseline_any_model: bool  # compare with a baseline of other weights, or of none recorded
    save_baseline: Path | None
    tolerances: tuple[tuple[str, float], ...] = _from("tolerance")
    alpha: float
    html: Path | None
    dtype: str
    device_map: str | dict[str, Any] | None

    @staticmethod
    def option_of(spec: Field[Any]) -> str:
        """The OPTIONS name a field of Options is read from."""
        return spec.metadata.get("option") or spec.name.replace("_", "-")

    @classmethod
    def from_values(cls, get: Callable[[str], Any], reports_default: Path) -> Options:
        """Options from a getter of option values by spec name (pytest config or an argparse namespace).

        An option the getter does not have (None: a CLI command without it) takes its spec's default;
        repeatable options become tuples; `reports` defaults to `reports_default`.
        """
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = cls.option_of(spec)
            value = get(name)
            value = OPTIONS[name].settings.get("default") if value is None else value
            values[spec.name] = tuple(value) if isinstance(value, list) else value
        values["reports_dir"] = values["reports_dir"] or reports_default
        return cls(**values)

    @property
    def many_key(self) -> str:
        """Where records, items and the summary keep the sequential/batch block: `sequence` or `batch`."""
        return "sequence" if self.mode == "sequential" else self.mode

    def load_settings(self) -> dict[str, Any]:
        """How the model loads, for `load(model, **options.load_settings())`."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "device_map": self.device_map,
            "trust_remote_code": self.trust_remote_code,
            "method": self.method or EditSettings().name,
        }

    def overrides(self) -> dict[str, Any]:
        """The method settings these options override for every case."""
        return {"name": self.method, "seed": self.seed, "localize": self.localize}
