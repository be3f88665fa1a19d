"""Benchmark facts: a seeded sample of CounterFact records the embedded model knows, as fact cases."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "counterfact-train.json"


NEIGHBOURS = 3  # found per fact, besides its locality prompt (as `factedit import counterfact --neighbours 3`)
AT_LEAST = 3  # neighbours a benchmark fact must have, its locality prompt included


def known_cases(
    lm: Any, data: Path, n: int, seed: int, anchors: int = 0
) -> tuple[list[Any], tempfile.TemporaryDirectory]:
    """The first `n` known facts (in the seeded order) with at least AT_LEAST neighbours, as loaded cases:
    their locality prompt and up to NEIGHBOURS more neighbours, and the shared controls of
    fact_cases/_defaults.yaml.

    With `anchors`, each case also gets up to that many anchors: more records of its template the model
    knows, none of them a neighbour (as `factedit import counterfact --anchors K` writes them).

    The cases' files live in the returned temporary folder; keep it alive while they are used.
    """
    from pytest_factedit.cases.counterfact import neighbour_records, read_records, write_cases

    records, neighbours = chosen_facts(lm, data, n, seed)
    found = None
    if anchors:
        every = read_records(data)
        found = neighbour_records(lm.model, lm.tokenizer, records, every, anchors, seed + 1, taken=neighbours)
    folder = tempfile.TemporaryDirectory()
    defaults = REPO / "fact_cases" / "_defaults.yaml"
    cases, _ = write_cases(records, Path(folder.name) / "cases", defaults, neighbours, found)
    return cases, folder


def chosen_facts(lm: Any, data: Path, n: int, seed: int) -> tuple[list[dict], dict[Any, list[dict]]]:
    """The facts and their neighbours: read from bench/results/facts-seed<seed>-n<n>.json when it was made
    with this model's weights and this data file, else chosen from the known records (known_ids) and
    written there."""
    import json

    from pytest_factedit.cases.counterfact import neighbour_candidates, read_records, sampled_records

    key = {**_data_key(lm, data), "n": n, "seed": seed, "neighbours": NEIGHBOURS, "at_least": AT_LEAST}
    saved = REPO / "bench" / "results" / f"facts-seed{seed}-n{n}.json"
    if saved.is_file() and json.loads(saved.read_text())["key"] == key:
        found = json.loads(saved.read_text())
        return found["records"], {r["case_id"]: found["neighbours"][str(r["case_id"])] for r in found["records"]}
    every = read_records(data)
    known = known_ids(lm, data, every)
    records, neighbours = [], {}
    for record in (r for r in sampled_records(every, len(every), seed) if r["case_id"] in known):
        candidates = neighbour_candidates([record], every, seed)[record["case_id"]]
        nearby = [r for r in candidates if r["case_id"] in known][:NEIGHBOURS]  # as neighbour_records picks
        if 1 + len({r["prompt"] for r in nearby} - {record["locality_prompt"]}) >= AT_LEAST:
            records.append(record)
            neighbours[record["case_id"]] = nearby
        if len(records) == n:
            break
    saved.write_text(
        json.dumps({"key": key, "records": records, "neighbours": {str(k): v for k, v in neighbours.items()}}, indent=1)
        + "\n"
    )
    return records, neighbours


def _data_key(lm: Any, data: Path) -> dict[str, str]:
    """What a saved search depends on: the model's weights and the data file."""
    import hashlib

    return {"weights_hash": lm.weights_hash, "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest()}


def known_ids(lm: Any, data: Path, every: list[dict]) -> set[Any]:
    """The case_ids of every record of `data` whose prompt the model completes with its ground truth: asked
    once (about 11 minutes for CounterFact's 10,000 on 2 cores), then read from
    bench/results/known-<data file>.json while the weights and the data are the same."""
    import json

    from pytest_factedit.cases.counterfact import known_records

    key = _data_key(lm, data)
    saved = REPO / "bench" / "results" / f"known-{data.stem}.json"
    if saved.is_file() and json.loads(saved.read_text())["key"] == key:
        return set(json.loads(saved.read_text())["case_ids"])
    started = time.perf_counter()
    found = [r["case_id"] for r in known_records(lm.model, lm.tokenizer, every, len(every), seed=None)]
    print(f"{len(found)} of {len(every)} records known, asked in {time.perf_counter() - started:.0f}s", flush=True)
    saved.write_text(json.dumps({"key": key, "asked": len(every), "case_ids": found}) + "\n")
    return set(found)


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
    cases, folder = known_cases(lm, Path(args.data), args.n, args.seed, getattr(args, "anchors", 0))
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
