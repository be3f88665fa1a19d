"""Benchmark facts: a seeded sample of CounterFact records the embedded model knows, as fact cases."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "counterfact-train.json"


def known_cases(lm: Any, data: Path, n: int, seed: int) -> tuple[list[Any], tempfile.TemporaryDirectory]:
    """Up to `n` known facts as loaded cases (own locality control + fact_cases/_defaults.yaml controls).

    The cases' files live in the returned temporary folder; keep it alive while they are used.
    """
    from pytest_factedit.cases.counterfact import known_records, read_records, write_cases

    records = list(known_records(lm.model, lm.tokenizer, read_records(data), n, seed))
    folder = tempfile.TemporaryDirectory()
    cases, _ = write_cases(records, Path(folder.name) / "cases", REPO / "fact_cases" / "_defaults.yaml")
    return cases, folder


def fact_arguments(parser: argparse.ArgumentParser, n: int) -> None:
    """The options every fact benchmark takes: --data, -n and --seed."""
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("-n", type=int, default=n)
    parser.add_argument("--seed", type=int, default=0)


def load_known_cases(args: argparse.Namespace) -> tuple[Any, list[Any], tempfile.TemporaryDirectory]:
    """The embedded model on CPU and `args.n` known facts as cases (see known_cases)."""
    from pytest_factedit.model.load import load

    lm = load(None, "cpu")
    started = time.perf_counter()
    cases, folder = known_cases(lm, Path(args.data), args.n, args.seed)
    print(f"{len(cases)} known facts found in {time.perf_counter() - started:.0f}s", flush=True)
    return lm, cases, folder


def setting_overrides(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs as method settings; values are read as YAML (0.9 is a number, trace a string)."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, found {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides
