"""What a relation router would have done to logged edits: each answer of a `bench/editors.py` log replayed
with the router's verdict on its text, where a text sent away gets the base model's answer (which is what
it runs then, bit for bit: tests/test_router.py).

    python bench/router_replay.py --logs bench/results/editors26-learn-stop-0.8-same-subject-shard*.jsonl \
        --method "ia3-two-stage learn_stop_prob=0.8" --from-end 1 2 3 --margin 0 0.01 0.015 0.02
    # a rule the plugin does not have, replayed beside: the subject's other relations as a second test
    python bench/router_replay.py --logs ... --method ... --from-end 2 --margin 0.015 --other-relations 0 -0.02
    # a margin chosen on half of the facts and counted on the other half, over 20 random halvings
    python bench/router_replay.py --logs SAME_SUBJECT_LOGS COUNTERFACT_LOGS --method ... --from-end 2 \
        --margin 0.015 0.014 0.013 0.012 0.01 --held-out 20

The router is the plugin's own (`edit/router.py: build_router`, `layer_states`), built from each fact's
prompts and subject as an edit builds it. Only the texts the subject gate opens on are routed (the
prompts, which always pass, paraphrases, aliases, same-subject facts); context rows are left out, since
their count needs each row's expected answer. Counts are the plugin's own (`metrics/measure.py`): forget and
paraphrases count what the base model answered with `old`, same-subject facts what it got right. With no
router (`--from-end 0`) the counts are the log's own.

`--other-relations D` replays a stricter rule beside each margin: a text that passes must also be as similar
to the edit's prompts as to the nearest of the subject's other relations, plus D (D < 0: a slack). Those
are the editor's `relation_rows` questions (`edit/retention.py: RELATION_TEMPLATES`) that the base model
does not answer with `old` (`edit/objectives.py: subject_rows` drops the edited relation's so), and only
those below the subject's general texts' similarity to the prompts (one as near as that asks the edited
relation).

`--held-out K` asks whether a margin picked on these facts would hold on facts it was not picked on. Each
benchmark's facts (CounterFact's by their `counterfact-` ids, the same-subject facts the rest) are halved at
random, K times (seeds 0..K-1). On one half, the first `--margin` is the reference and the pick is the
margin with the most same-subject facts among those where every count of each benchmark (its `COUNTED`
names) meets its target of `bench/editors.py: QUALITY_TARGETS` or loses no sample against the reference
(ties go to the margin listed first). The pick is then counted on the other half, against the reference
there; each halving is read both ways.

`--sequence DIR` replays a margin on the paraphrases of a `bench/sequential.py` run (its `--checkpoint`
folder: `run.json` names the facts, `outcomes.jsonl` holds each edit's counts right after it, which the
run's end repeats). The router is built from the base model's states alone, so its verdict on a text needs
no edit; a counted paraphrase the router sends away gets the base model's answer, which is `old`: a hit
lost. A fact with more paraphrases than hits counts the smaller of its hits and its paraphrases sent away
(an upper bound; CounterFact's cases have one paraphrase each, where it is exact).

    python bench/router_replay.py --sequence bench/results/sequential26-n1000-c12088e-epyc --margin 0.015 0.014
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from editors import QUALITY_TARGETS  # noqa: E402

from pytest_factedit.cases import load_case
from pytest_factedit.edit.base import EditRequest
from pytest_factedit.edit.objectives import subject_decode_rows
from pytest_factedit.edit.retention import RELATION_TEMPLATES, subject_texts
from pytest_factedit.edit.router import RelationRouter, build_router, router_layer, texts_states
from pytest_factedit.edit.settings import TrainingLoopSettings
from pytest_factedit.metrics.answers import ProbedAnswer, first_words, matches
from pytest_factedit.metrics.measure import (
    CaseEvidence,
    alias_samples,
    forget_samples,
    paraphrase_samples,
    same_subject_samples,
)
from pytest_factedit.model.load import load
from pytest_factedit.model.probe_cache import base_decode
from pytest_factedit.model.text import encode_prompt, one_text

HERE = Path(__file__).parent
ROUTED = ("paraphrases", "aliases", "same_subject")
PREFIXES = ("", "Here is a fact. ")  # the default context_prefixes
COUNTED = {  # the plugin's own rules for each count (metrics/measure.py)
    "alias": alias_samples,
    "forget": forget_samples,
    "paraphrase": paraphrase_samples,
    "same subject": same_subject_samples,
}
TARGET_OF = {  # each count's target in bench/editors.py: QUALITY_TARGETS
    "alias": "alias_accuracy",
    "forget": "forget_rate",
    "paraphrase": "paraphrase_accuracy",
    "same subject": "relation_specificity",
}
Counts = dict[str, tuple[int, int]]  # (hits, samples) by count name, one fact
Totals = dict[tuple[str, str], tuple[int, int]]  # (hits, samples) by (benchmark, count name)


def facts_info(data: Path) -> dict[str, dict[str, Any]]:
    """Subject, old, new and same-subject answers by fact id: the same-subject cases (as the plugin loads
    them) and CounterFact's records."""
    info: dict[str, dict[str, Any]] = {}
    cases = HERE / "same_subject"
    for path in sorted(cases.glob("[!_]*.yaml")):
        case = load_case(path, root=cases)
        same = {fact.prompt: tuple(fact.answer) for fact in case.same_subject}
        info[case.id] = {"subject": case.subject, "old": tuple(case.old), "new": tuple(case.new), "same": same}
    for record in json.loads(data.read_text()):
        old, new = (record["ground_truth"],), (record["target_new"],)
        info[f"counterfact-{record['case_id']}"] = {"subject": record["subject"], "old": old, "new": new, "same": {}}
    return info


def evidence(fact: dict[str, Any], answers: list[list[str]], verdict: list[bool]) -> CaseEvidence:
    """The fact's probed answers as the plugin measures them, a text the router sends away answered as the
    base model answers it."""
    probed = []
    for (group, prompt, base, edited), passes in zip(answers, verdict):
        if group not in ("prompts", *ROUTED):
            continue
        expected, unchanged = fact["new"], False
        if group == "same_subject":  # an entry without `answer:` keeps the base model's first words
            unchanged = not fact["same"].get(prompt)
            expected = fact["same"].get(prompt) or (first_words(base),)
        probed.append(ProbedAnswer(group, prompt, expected, base, edited if passes else base, unchanged=unchanged))
    return CaseEvidence(tuple(probed), fact["old"], fact["new"])


def passed(
    loaded: Any, fact: dict[str, Any], answers: list[list[str]], from_end: int, margin: float, other: float | None
) -> list[bool]:
    """The router's verdict on each answer's text (True where it is not routed); with `other`, the stricter
    rule of `--other-relations` on top."""
    if not from_end:
        return [True] * len(answers)
    model, tok = loaded.model, loaded.tokenizer
    prompts = tuple(a[1] for a in answers if a[0] == "prompts")
    request = EditRequest(fact["subject"], prompts, fact["old"], fact["new"])
    router = build_router(model, tok, [request], PREFIXES, router_layer(model, from_end), margin)
    rows = [i for i, a in enumerate(answers) if a[0] in ROUTED]
    verdict = [True] * len(answers)
    if rows:
        texts = [encode_prompt(tok, answers[i][1], False) for i in rows]
        states = texts_states(model, texts, router.layer, int(tok.pad_token_id))
        nearer = other_relations_test(loaded, request, router, margin, states, other)
        for i, ok, near in zip(rows, router.passes(states), nearer):
            verdict[i] = ok and near
    return verdict


def other_relations_test(
    loaded: Any, request: EditRequest, router: RelationRouter, margin: float, states: Any, other: float | None
) -> list[bool]:
    """For each row of `states`: is the text's similarity to the edit's prompts at least its similarity to the
    nearest of the subject's other relations plus `other`? (All True with `other` None, or no such relation.)"""
    import torch

    if other is None:
        return [True] * states.shape[0]
    model, tok = loaded.model, loaded.tokenizer
    asked = subject_texts(request.subject, request.prompts, len(RELATION_TEMPLATES), RELATION_TEMPLATES)
    rows = subject_decode_rows(tok, request, TrainingLoopSettings(subject_rows=0, relation_rows=len(asked)))
    kept = [
        row.ids
        for row, found in zip(rows, base_decode(model, tok, rows))
        if not matches(one_text(tok.decode(list(found.tokens))), request.old)
    ]
    if not kept:
        return [True] * states.shape[0]
    unit = torch.nn.functional.normalize(texts_states(model, kept, router.layer, int(tok.pad_token_id)).float(), dim=-1)
    far = unit[(unit @ router.references.T).amax(-1) < router.threshold + margin]
    if not far.shape[0]:
        return [True] * states.shape[0]
    texts = torch.nn.functional.normalize(states.float(), dim=-1)
    to_prompts, to_far = (texts @ router.references.T).amax(-1), (texts @ far.T).amax(-1)
    return [bool(b) for b in (to_prompts >= to_far + other).tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", nargs="+", default=[])
    parser.add_argument("--method", help="the logs' method name, as its rows name it")
    parser.add_argument("--sequence", type=Path, metavar="DIR", help="a sequential run's folder (see above)")
    parser.add_argument("--from-end", type=int, nargs="+", default=[2])
    parser.add_argument("--margin", type=float, nargs="+", default=[0.015])
    parser.add_argument("--other-relations", type=float, nargs="*", default=[], metavar="D")
    parser.add_argument("--held-out", type=int, default=0, metavar="K", help="K random halvings (see above)")
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "counterfact-train.json")
    args = parser.parse_args()
    if args.sequence:
        return sequence_paraphrases(args.sequence, args.data, args.from_end[0], args.margin)
    if not args.logs or not args.method:
        parser.error("--logs and --method are needed without --sequence")
    info = facts_info(args.data)
    records = [json.loads(line) for pattern in args.logs for path in sorted(glob.glob(pattern)) for line in open(path)]
    records = [r for r in records if r["method"] == args.method and r["status"] == "ran"]
    records.sort(key=lambda r: r["fact"])
    loaded = load(None, "cpu")
    print(f"{len(records)} facts of {args.method!r}")
    by_margin: dict[float, list[Counts]] = {}
    for from_end in args.from_end:
        for margin in args.margin if from_end else [0.0]:
            for other in [None, *args.other_relations] if from_end else [None]:
                rule = f"from_end {from_end} margin {margin}" + ("" if other is None else f" other relations {other}")
                counts = [fact_counts(loaded, info, record, (from_end, margin, other)) for record in records]
                if from_end == args.from_end[0] and other is None:
                    by_margin[margin] = counts
                print(f"{rule}: {rates(counts)}", flush=True)
    if args.held_out:
        held_out([benchmark_of(r["fact"]) for r in records], by_margin, args.held_out)


def fact_counts(loaded: Any, info: dict[str, dict[str, Any]], record: dict[str, Any], rule: tuple) -> Counts:
    """Each count's (hits, samples) on one logged fact, replayed under `rule` (from_end, margin, other)."""
    answers = record["values"]["answers"]
    fact = info[record["fact"]]
    measured = evidence(fact, answers, passed(loaded, fact, answers, *rule))
    counts = {}
    for name, samples in COUNTED.items():
        hits = [sample.hit for sample in samples(measured)]
        counts[name] = (sum(hits), len(hits))
    return counts


def rates(counts: list[Counts]) -> str:
    """Each count's rate and hits summed over the facts."""
    totals = {name: [sum(c[name][0] for c in counts), sum(c[name][1] for c in counts)] for name in COUNTED}
    return "  ".join(f"{k} {v[0] / v[1]:.3f} ({v[0]}/{v[1]})" for k, v in sorted(totals.items()) if v[1])


def benchmark_of(fact: str) -> str:
    return "counterfact" if fact.startswith("counterfact-") else "same-subject"


def half_totals(benchmarks: list[str], counts: list[Counts], rows: list[int]) -> Totals:
    """(hits, samples) by (benchmark, count) over the facts `rows`."""
    totals: Totals = {}
    for i in rows:
        for name, (hits, n) in counts[i].items():
            held = totals.get((benchmarks[i], name), (0, 0))
            totals[(benchmarks[i], name)] = (held[0] + hits, held[1] + n)
    return totals


def shortfalls(totals: Totals, reference: Totals) -> list[str]:
    """The counts under their target that lose samples against the reference's."""
    lowest = dict(QUALITY_TARGETS)
    return [
        f"{bench} {name} {hits}/{n} (reference {reference[(bench, name)][0]})"
        for (bench, name), (hits, n) in sorted(totals.items())
        if n and hits / n < lowest[TARGET_OF[name]] and hits < reference[(bench, name)][0]
    ]


def same_subject(totals: Totals) -> int:
    return sum(hits for (_, name), (hits, _) in totals.items() if name == "same subject")


def held_out(benchmarks: list[str], by_margin: dict[float, list[Counts]], splits: int) -> None:
    """Pick a margin on one half of each benchmark's facts and count it on the other (module docstring)."""
    margins = list(by_margin)
    gains, losses, picks = [], 0, {m: 0 for m in margins}
    for seed in range(splits):
        rng, first = random.Random(seed), set()
        for bench in sorted(set(benchmarks)):
            rows = [i for i, b in enumerate(benchmarks) if b == bench]
            rng.shuffle(rows)
            first.update(rows[: len(rows) // 2])
        halves = (sorted(first), sorted(set(range(len(benchmarks))) - first))
        for name, (pick_on, count_on) in (("A", halves), ("B", halves[::-1])):
            on = {m: half_totals(benchmarks, by_margin[m], pick_on) for m in margins}
            fit = [m for m in margins if not shortfalls(on[m], on[margins[0]])]
            pick = max(fit, key=lambda m: (same_subject(on[m]), -margins.index(m)))
            picks[pick] += 1
            there = {m: half_totals(benchmarks, by_margin[m], count_on) for m in (margins[0], pick)}
            lost = shortfalls(there[pick], there[margins[0]])
            losses += bool(lost)
            gains.append(same_subject(there[pick]) - same_subject(there[margins[0]]))
            print(
                f"seed {seed} picked on half {name}: margin {pick} (same subject {same_subject(on[pick])} against "
                f"{same_subject(on[margins[0]])}); on the other half: same subject {same_subject(there[pick])} against "
                f"{same_subject(there[margins[0]])}" + (f"; short: {', '.join(lost)}" if lost else ""),
                flush=True,
            )
    print(f"picks: {', '.join(f'{m}: {k}' for m, k in picks.items())}")
    print(
        f"held-out same-subject gain over the reference: total {sum(gains)} over {len(gains)} halves, "
        f"{sum(g > 0 for g in gains)} gain, {sum(g < 0 for g in gains)} lose; halves short of a target: {losses}"
    )


def sequence_paraphrases(folder: Path, data: Path, from_end: int, margins: list[float]) -> None:
    """Each margin's paraphrase hits over a sequential run's edits (module docstring, `--sequence`)."""
    from facts import known_cases

    run = json.loads((folder / "run.json").read_text())
    outcomes = [json.loads(line) for line in open(folder / "outcomes.jsonl")]
    loaded = load(None, "cpu")
    cases, scratch = known_cases(loaded, data, len(run["cases"]), run["seed"])
    by_id = {case.id: case for case in cases}
    hits = {o["case_id"]: (o["metrics"].get("paraphrase_accuracy") or {}).get("hits") or 0 for o in outcomes}
    samples = sum((o["metrics"].get("paraphrase_accuracy") or {}).get("samples") or 0 for o in outcomes)
    print(f"{len(outcomes)} edits, paraphrases {sum(hits.values())} of {samples} in the run ({folder.name})")
    lost = {margin: 0 for margin in margins}
    with scratch:
        for case_id, hit in hits.items():
            if not hit:
                continue
            case = by_id[case_id]
            fact = {"subject": case.subject, "old": case.old, "new": case.new}
            answers = [["prompts", p, "", ""] for p in case.prompts]
            answers += [["paraphrases", q, "", ""] for q in case.paraphrases]
            for margin in margins:
                away = passed(loaded, fact, answers, from_end, margin, None).count(False)
                lost[margin] += min(hit, away)
    for margin in margins:
        kept = sum(hits.values()) - lost[margin]
        rate = f"{kept / samples:.3f} ({kept}/{samples})"
        print(f"from_end {from_end} margin {margin}: paraphrases {rate}, {lost[margin]} hits sent away")


if __name__ == "__main__":
    main()
