"""What a relation router would have done to logged edits: each answer of a `bench/editors.py` log replayed
with the router's verdict on its text, where a text sent away gets the base model's answer (which is what
it runs then, bit for bit: tests/test_router.py).

    python bench/router_replay.py --logs bench/results/editors26-learn-stop-0.8-same-subject-shard*.jsonl \
        --method "ia3-two-stage learn_stop_prob=0.8" --from-end 1 2 3 --margin 0 0.01 0.015 0.02

The router is the plugin's own (`edit/router.py: build_router`, `layer_states`), built from each fact's
prompts and subject as an edit builds it. Only the texts the subject gate opens on are routed (the
prompts, which always pass, paraphrases, aliases, same-subject facts); context rows are left out, since
their count needs each row's expected answer. Counts follow the plugin's rules for these groups: forget and
paraphrases count what the base model answered with `old`, same-subject facts what it got right. With no
router (`--from-end 0`) the counts are the log's own.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path
from typing import Any

import yaml

from pytest_factedit.edit.base import EditRequest
from pytest_factedit.edit.router import build_router, router_layer, texts_states
from pytest_factedit.metrics.answers import first_words, said
from pytest_factedit.model.load import load
from pytest_factedit.model.text import encode_prompt

HERE = Path(__file__).parent
ROUTED = ("paraphrases", "aliases", "same_subject")
PREFIXES = ("", "Here is a fact. ")  # the default context_prefixes


def listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def facts_info(data: Path) -> dict[str, dict[str, Any]]:
    """Subject, old, new and same-subject answers by fact id: the same-subject cases and CounterFact's."""
    info: dict[str, dict[str, Any]] = {}
    for path in sorted((HERE / "same_subject").glob("*.yaml")):
        case = yaml.safe_load(path.read_text())
        if path.name != "_defaults.yaml":
            answers = {s["prompt"]: listed(s.get("answer")) for s in case.get("same_subject") or []}
            info[case["id"]] = {"subject": case["subject"], "old": listed(case["old"]), "new": listed(case["new"])}
            info[case["id"]]["same"] = answers
    for record in json.loads(data.read_text()):
        info[f"counterfact-{record['case_id']}"] = {
            "subject": record["subject"],
            "old": [record["ground_truth"]],
            "new": [record["target_new"]],
            "same": {},
        }
    return info


def verdicts(fact: dict[str, Any], answers: list[list[str]]) -> list[dict[str, tuple[bool, bool]]]:
    """Per answer: metric -> (right as edited, right as the base model answers), for the counted ones."""
    candidates = {"new": fact["new"], "old": fact["old"]}
    out: list[dict[str, tuple[bool, bool]]] = []
    for group, prompt, base, edited in answers:
        counted: dict[str, tuple[bool, bool]] = {}
        if group in ("prompts", "paraphrases", "aliases") and said(base, candidates) == "old":
            if group != "prompts":
                name = "paraphrase" if group == "paraphrases" else "alias"
                counted[name] = (said(edited, candidates) == "new", False)
            if group != "aliases":
                counted["forget"] = (said(edited, candidates) != "old", False)
        elif group == "same_subject":
            expected = fact["same"].get(prompt) or []

            def right(text: str, expected: list[str] = expected, base: str = base) -> bool:
                if expected:
                    return said(text, {"e": expected, "new": fact["new"]}) == "e"
                return first_words(text) == first_words(base)

            if right(base):
                counted["same subject"] = (right(edited), True)
        out.append(counted)
    return out


def passed(loaded: Any, fact: dict[str, Any], answers: list[list[str]], from_end: int, margin: float) -> list[bool]:
    """The router's verdict on each answer's text (True where it is not routed)."""
    if not from_end:
        return [True] * len(answers)
    model, tok = loaded.model, loaded.tokenizer
    prompts = tuple(a[1] for a in answers if a[0] == "prompts")
    request = EditRequest(fact["subject"], prompts, tuple(fact["old"]), tuple(fact["new"]))
    router = build_router(model, tok, [request], PREFIXES, router_layer(model, from_end), margin)
    rows = [i for i, a in enumerate(answers) if a[0] in ROUTED]
    verdict = [True] * len(answers)
    if rows:
        texts = [encode_prompt(tok, answers[i][1], False) for i in rows]
        for i, ok in zip(rows, router.passes(texts_states(model, texts, router.layer, int(tok.pad_token_id)))):
            verdict[i] = ok
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", nargs="+", required=True)
    parser.add_argument("--method", required=True, help="the logs' method name, as its rows name it")
    parser.add_argument("--from-end", type=int, nargs="+", default=[2])
    parser.add_argument("--margin", type=float, nargs="+", default=[0.015])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "counterfact-train.json")
    args = parser.parse_args()
    info = facts_info(args.data)
    records = [json.loads(line) for pattern in args.logs for path in glob.glob(pattern) for line in open(path)]
    records = [r for r in records if r["method"] == args.method and r["status"] == "ran"]
    loaded = load(None, "cpu")
    print(f"{len(records)} facts of {args.method!r}")
    for from_end in args.from_end:
        for margin in args.margin if from_end else [0.0]:
            totals: dict[str, list[int]] = {}
            for record in records:
                answers = record["values"]["answers"]
                fact = info[record["fact"]]
                for counted, ok in zip(verdicts(fact, answers), passed(loaded, fact, answers, from_end, margin)):
                    for name, (edited, base) in counted.items():
                        total = totals.setdefault(name, [0, 0])
                        total[0] += edited if ok else base
                        total[1] += 1
            rates = "  ".join(f"{k} {v[0] / v[1]:.3f} ({v[0]}/{v[1]})" for k, v in sorted(totals.items()))
            print(f"from_end {from_end} margin {margin}: {rates}")


if __name__ == "__main__":
    main()
