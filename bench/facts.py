"""Benchmark facts: a seeded sample of CounterFact records the embedded model knows, as fact cases."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "counterfact-train.json"


def known_cases(lm: Any, data: Path, n: int, seed: int) -> tuple[list[Any], tempfile.TemporaryDirectory]:
    """Up to `n` known facts as loaded cases (own locality control + fact_cases/_defaults.yaml controls).

    The cases' files live in the returned temporary folder; keep it alive while they are used.
    """
    from pytest_factedit.cases import load_case
    from pytest_factedit.counterfact import case_mapping, known_records, read_records

    records = list(known_records(lm.model, lm.tokenizer, read_records(data), n, seed))
    folder = tempfile.TemporaryDirectory()
    cases_dir = Path(folder.name) / "cases"
    cases_dir.mkdir()
    shutil.copy(REPO / "fact_cases" / "_defaults.yaml", cases_dir / "_defaults.yaml")
    cases = []
    for record in records:
        mapping = case_mapping(record)
        path = cases_dir / f"{mapping['id']}.yaml"
        path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
        cases.append(load_case(path, root=Path(folder.name)))
    return cases, folder
