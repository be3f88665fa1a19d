"""CounterFact records as schema-v1 fact cases, keeping only the facts a model already answers."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import CaseError, SourceError, shown
from ..metrics.answers import matches
from ..model.probe import greedy_continuations
from ..model.text import answer_token_budget
from .ids import inside, name_problem
from .loader import DEFAULTS_FILE, load_case
from .schema import FactCase

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

RECORD_KEYS = (
    "case_id",
    "prompt",
    "subject",
    "ground_truth",
    "target_new",
    "rephrase_prompt",
    "locality_prompt",
    "locality_ground_truth",
)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a CounterFact JSON file (a list of objects with RECORD_KEYS, each case_id a number or a
    name: it keys the record's neighbours and names its case)."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SourceError(f"cannot read a JSON file: {exc}", path=path) from exc
    except RecursionError as exc:
        raise SourceError(
            "expected a JSON list of CounterFact records, found JSON nested deeper than Python can read. "
            "Fix: pass the CounterFact file itself (a list of flat records)",
            path=path,
        ) from exc
    if not isinstance(records, list):
        raise SourceError(f"expected a JSON list of CounterFact records, found {type(records).__name__}", path=path)
    for index, record in enumerate(records):
        missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            raise SourceError(f"record {index} lacks {missing}; expected keys {list(RECORD_KEYS)}", path=path)
        case_id = record["case_id"]
        if isinstance(case_id, bool) or not isinstance(case_id, (int, str)):
            raise SourceError(
                f"expected a number or a string, found {shown(case_id)}. Fix: give record {index} a case_id "
                "that is a number or a name",
                path=path,
                key=f"[{index}].case_id",
            )
    return records


def usable(record: dict[str, Any]) -> bool:
    """Schema v1 can hold it: text fields are strings, the subject occurs in prompt and rephrase, old and new differ."""
    if not all(isinstance(record[k], str) for k in RECORD_KEYS if k != "case_id"):
        return False
    subject = record["subject"]
    return (
        bool(subject)
        and subject in record["prompt"]
        and subject in record["rephrase_prompt"]
        and record["ground_truth"].strip().lower() != record["target_new"].strip().lower()
    )


def case_mapping(
    record: dict[str, Any], neighbours: Sequence[dict[str, Any]] = (), anchors: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The YAML mapping of one record: prompt -> prompts, rephrase -> paraphrases, and its locality prompt
    (another subject, the same relation) -> the first neighbour, before the `neighbours` found for it (a
    neighbour whose answer is the record's `target_new` is left out: it could not show the edit leaking);
    `anchors` (other records of its relation) -> anchors, the retention rows the edit holds steady."""
    locality = {"prompt": record["locality_prompt"], "answer": record["locality_ground_truth"]}
    found = [{"prompt": n["prompt"], "answer": n["ground_truth"]} for n in neighbours]
    taken = {record["prompt"].casefold(), record["rephrase_prompt"].casefold()}
    new = record["target_new"].strip().casefold()  # a neighbour answered with `new` could never show a leak
    held = [n for n in [locality, *found] if n["prompt"].casefold() not in taken and n["answer"].casefold() != new]
    mapping = {
        "id": f"counterfact-{record['case_id']}",
        "subject": record["subject"],
        "prompts": [record["prompt"]],
        "old": record["ground_truth"],
        "new": record["target_new"],
        "paraphrases": [record["rephrase_prompt"]],
        "neighbours": [n for i, n in enumerate(held) if n["prompt"] not in {m["prompt"] for m in held[:i]}],
    }
    if anchors:
        mapping["anchors"] = list(dict.fromkeys(a["prompt"] for a in anchors))
    return mapping


def template(record: dict[str, Any]) -> str:
    """A record's prompt with its subject cut out: records with one template ask one relation, one way."""
    return str(record["prompt"]).replace(record["subject"], "{}", 1)


def neighbour_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chosen: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    k: int,
    seed: int,
    tries: int = 200,
    taken: Mapping[Any, Sequence[dict[str, Any]]] | None = None,
) -> dict[Any, list[dict[str, Any]]]:
    """Per chosen record (by case_id): up to `k` of its neighbour_candidates whose answer the model gives."""
    return {
        case_id: list(known_records(model, tokenizer, pool, k, seed=None))
        for case_id, pool in neighbour_candidates(chosen, records, seed, tries, taken).items()
    }


def neighbour_candidates(
    chosen: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    seed: int,
    tries: int = 200,
    taken: Mapping[Any, Sequence[dict[str, Any]]] | None = None,
) -> dict[Any, list[dict[str, Any]]]:
    """Per chosen record (by case_id): the first `tries` other records with its prompt template, those
    sharing its `old` answer first (the hardest neighbours), then in a seeded order. No model is asked.

    `taken[case_id]` are records already used for it (its neighbours, when anchors are searched) and are
    never candidates, nor is its locality prompt. A record about the subject of any chosen record is
    never a candidate: run in one sequence, that record's own edit would change it.
    """
    by_template: dict[str, list[dict[str, Any]]] = {}
    for record in _shuffled(records, seed):
        by_template.setdefault(template(record), []).append(record)
    candidates: dict[Any, list[dict[str, Any]]] = {}
    edited = {record["subject"] for record in chosen}
    for record in chosen:
        old = record["ground_truth"].strip().casefold()
        used = {r["prompt"] for r in (taken or {}).get(record["case_id"], ())} | {record.get("locality_prompt")}
        pool = [
            r
            for r in by_template.get(template(record), [])
            if r["subject"] not in edited
            and r["prompt"] not in used
            and r["subject"] not in record["prompt"]
            and record["subject"] not in r["prompt"]
        ]
        pool.sort(key=lambda r: r["ground_truth"].strip().casefold() != old)  # stable: seeded order within
        candidates[record["case_id"]] = pool[:tries]
    return candidates


def _shuffled(records: Sequence[dict[str, Any]], seed: int | None) -> list[dict[str, Any]]:
    """The usable records, in a seeded random order (None: in the order given)."""
    order = [r for r in records if usable(r)]
    if seed is not None:
        random.Random(seed).shuffle(order)
    return order


def sampled_records(records: Sequence[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """The first `n` usable records in a seeded random order (no model needed)."""
    return _shuffled(records, seed)[:n]


def known_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict[str, Any]],
    n: int,
    seed: int | None,
    batch_size: int = 64,
) -> Iterator[dict[str, Any]]:
    """Up to `n` records, in a seeded random order (None: as given), whose prompt the model completes with
    ground_truth."""
    order = _shuffled(records, seed)
    kept = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        budgets = [answer_token_budget(tokenizer, [r["ground_truth"]]) for r in chunk]
        answers = greedy_continuations(model, tokenizer, [r["prompt"] for r in chunk], budgets)
        for record, answer in zip(chunk, answers):
            if matches(answer, (record["ground_truth"],)):
                yield record
                kept += 1
                if kept == n:
                    return


def write_cases(
    records: Sequence[dict[str, Any]],
    out: Path,
    defaults_file: Path | None = None,
    neighbours: Mapping[Any, Sequence[dict[str, Any]]] | None = None,
    anchors: Mapping[Any, Sequence[dict[str, Any]]] | None = None,
) -> tuple[list[FactCase], list[tuple[Any, str]]]:
    """Write each record as `out/<id>.yaml` and load it back (with `defaults_file` copied in as _defaults.yaml).

    Returns the loaded cases and, for each record schema v1 cannot hold, its case_id and why (its file is removed).
    """
    out.mkdir(parents=True, exist_ok=True)
    if defaults_file is not None and defaults_file.resolve() != (out / DEFAULTS_FILE).resolve():
        shutil.copy(defaults_file, out / DEFAULTS_FILE)
    cases, skipped, written = [], [], set()
    for record in records:
        found = (neighbours or {}).get(record["case_id"], ()), (anchors or {}).get(record["case_id"], ())
        mapping = case_mapping(record, *found)
        problem = name_problem(mapping["id"])
        if problem or mapping["id"] in written:
            reason = f"case id {problem}" if problem else f"duplicate case_id {record['case_id']}"
            skipped.append((shown(record["case_id"], typed=False), reason))
            continue
        written.add(mapping["id"])
        path = inside(out, f"{mapping['id']}.yaml")
        path.write_text(yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True), encoding="utf-8")
        try:
            cases.append(load_case(path, root=out))
        except CaseError as exc:  # a record schema v1 cannot hold: drop the file, say why
            path.unlink()
            skipped.append((record["case_id"], str(exc)))
    return cases, skipped
