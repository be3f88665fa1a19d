"""Check fact cases against the base model before any edit: does the embedded model know what they assume?

    OMP_NUM_THREADS=1 python bench/check_cases.py bench/same_subject/
    OMP_NUM_THREADS=1 python bench/check_cases.py fact_cases/germany-capital.yaml examples/hard_cases/

Each case file is read with yaml.safe_load; `_*.yaml` files are folder defaults, whose `controls:` join
every case of their folder (they are printed and judged once per folder, against no `new`). Every prompt is
answered greedily by the unedited model (as plain text: a case's `chat:` is not applied), on the token
budget the plugin judges it on, and judged as the plugin judges it
(pytest_factedit.metrics.answers): prompts, paraphrases and alias prompts (the subject replaced by each
alias) answer "old", "new" or "other"; neighbours, controls and same-subject facts with an answer are
"right" or "wrong" (p: the probability of their first alias, teacher-forced); a same-subject fact without
an answer shows the first words the edit must keep; an implication shows whether the base model already
says it. A summary line per case and the totals follow.

A case passes when every prompt answers old, at least MIN_SAME_SUBJECT same-subject facts with an answer
are right, at least one neighbour is right (a case without neighbours: one of its own controls, which in
examples/hard_cases are facts of the same relation), and its file is well formed (id = file name, the
subject in every prompt and paraphrase, a same-subject fact naming the subject or an alias, no held-out
prompt repeating a prompt). Exit status 1 when any case fails.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pytest_factedit.cases.derived import alias_prompts
from pytest_factedit.metrics.answers import cut_answer, first_words, said
from pytest_factedit.model.decoding import DecodeRow, decode
from pytest_factedit.model.text import answer_text, answer_token_budget, answer_token_ids, decoding_sets, encode_prompt

MIN_SAME_SUBJECT = 2  # same-subject facts (with an answer) the base model must get right
MIN_NEIGHBOURS = 1  # neighbours the base model must get right
UNCHANGED_BUDGET = 8  # tokens decoded for a same-subject fact without `answer:` (as the plugin does)
FACT_GROUPS = ("prompts", "paraphrases", "aliases")
HELD_GROUPS = ("neighbours", "controls", "same_subject", "implications")


@dataclass(frozen=True)
class Probe:
    """One prompt to answer: its group, its expected answers (held facts; empty for a same-subject fact kept
    as the base model says it, and for the edited fact's own prompts) and its token budget."""

    group: str
    prompt: str
    answer: tuple[str, ...]
    budget: int


@dataclass
class Case:
    """A case file, what it edits, and its probes (`verdicts` filled in by `judge`)."""

    path: Path
    data: dict[str, Any]
    old: tuple[str, ...]
    new: tuple[str, ...]
    probes: list[Probe]
    verdicts: list[tuple[Probe, str, str]] = field(default_factory=list)  # (probe, answer text, verdict)


def names(value: Any) -> tuple[str, ...]:
    """An answer as a tuple of aliases (a string or a list of them; None or absent: none)."""
    if value is None:
        return ()
    return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)


def case_files(arguments: list[str]) -> list[Path]:
    """The case files named or held by the folders named (defaults `_*.yaml` left out), in order."""
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        found += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return [p for p in dict.fromkeys(found) if not p.name.startswith("_")]


def folder_controls(folder: Path) -> list[dict[str, Any]]:
    """The `controls:` of every `_*.yaml` defaults file in `folder`."""
    controls: list[dict[str, Any]] = []
    for path in sorted(folder.glob("_*.yaml")):
        controls += (yaml.safe_load(path.read_text()) or {}).get("controls") or []
    return controls


def read_case(path: Path, tokenizer: Any) -> Case:
    """The case in `path` with a probe for each of its prompts and held-out facts (not the folder's controls)."""
    data = yaml.safe_load(path.read_text())
    old, new = names(data.get("old")), names(data.get("new"))
    texts = list(data.get("prompts") or []) + list(data.get("paraphrases") or [])
    budget = answer_token_budget(tokenizer, old + new)
    probes = [Probe("prompts", p, (), budget) for p in data.get("prompts") or []]
    probes += [Probe("paraphrases", p, (), budget) for p in data.get("paraphrases") or []]
    aliases = names(data.get("aliases"))
    probes += [Probe("aliases", p, (), budget) for p in alias_prompts(texts, data.get("subject", ""), aliases)]
    for group in HELD_GROUPS:
        probes += [held_probe(group, fact, new, tokenizer) for fact in data.get(group) or []]
    return Case(path, data, old, new, probes)


def held_probe(group: str, fact: dict[str, Any], new: tuple[str, ...], tokenizer: Any) -> Probe:
    """A held-out fact as a probe, on the plugin's budget: its answer or `new`, and a few tokens more."""
    answer = names(fact.get("answer"))
    budget = answer_token_budget(tokenizer, answer + new) if answer else UNCHANGED_BUDGET
    return Probe(group, str(fact["prompt"]), answer, budget)


def answers(lm: Any, probes: list[Probe]) -> dict[Probe, tuple[str, float | None]]:
    """(greedy answer, probability of the first expected alias) of every distinct probe, in one batched pass."""
    stops, hidden = decoding_sets(lm.model, lm.tokenizer)
    unique = list(dict.fromkeys(probes))
    wanted = [tuple(answer_token_ids(lm.tokenizer, p.answer[0])) if p.answer else None for p in unique]
    rows = [
        DecodeRow(encode_prompt(lm.tokenizer, p.prompt, False), p.budget, True, (w,) if w else ())
        for p, w in zip(unique, wanted)
    ]
    out = {}
    for probe, want, decoded in zip(unique, wanted, decode(lm.model, lm.tokenizer, rows)):
        text = cut_answer(answer_text(lm.tokenizer, decoded.tokens, stops, hidden))
        out[probe] = (text, math.exp(decoded.scores[want].logprob) if want else None)
    return out


def verdict(probe: Probe, text: str, old: tuple[str, ...], new: tuple[str, ...]) -> str:
    """How the answer stands: old/new/other for the edited fact, right/wrong for a held fact, else its words."""
    if probe.group in FACT_GROUPS:
        return said(text, {"old": old, "new": new}) or "other"
    if not probe.answer:
        return "keeps: " + first_words(text)
    named = said(text, {"expected": probe.answer, "new": new}) == "expected"
    if probe.group == "implications":
        return "says it already" if named else "not yet"
    return "right" if named else "wrong"


def structure_problems(case: Case) -> list[str]:
    """What makes the file itself wrong: the id, the subject missing from a prompt or a same-subject fact, a
    held-out prompt that repeats a prompt or paraphrase (or an alias prompt)."""
    data, problems = case.data, []
    if data.get("id") != case.path.stem:
        problems.append(f"id {data.get('id')!r} is not the file name {case.path.stem!r}")
    subject = str(data.get("subject", ""))
    edited = list(data.get("prompts") or []) + list(data.get("paraphrases") or [])
    problems += [f"subject {subject!r} not in {text!r}" for text in edited if subject not in text]
    named = (subject, *names(data.get("aliases")))
    for fact in data.get("same_subject") or []:
        if not any(name.casefold() in str(fact["prompt"]).casefold() for name in named):
            problems.append(f"same_subject {fact['prompt']!r} does not name the subject")
    taken = {p.prompt.strip().casefold() for p in case.probes if p.group in FACT_GROUPS}
    problems += [
        f"held-out {p.prompt!r} repeats a prompt"
        for p in case.probes
        if p.group in HELD_GROUPS and p.prompt.strip().casefold() in taken
    ]
    return problems


def judge(case: Case, found: dict[Probe, tuple[str, float | None]]) -> None:
    """Fill in the case's verdicts from the answers found."""
    case.verdicts = [(p, found[p][0], verdict(p, found[p][0], case.old, case.new)) for p in case.probes]


def good(group: str, mark: str) -> bool:
    """Does this verdict count as a success of its group (old for the edited fact, right for a held one)?"""
    return mark == "old" if group in FACT_GROUPS else mark in ("right", "says it already")


def tally(case: Case, group: str) -> tuple[int, int]:
    """(successes, probes) of one group of a case; same-subject facts without an answer are not counted."""
    marks = [m for p, _, m in case.verdicts if p.group == group and not m.startswith("keeps:")]
    return sum(good(group, m) for m in marks), len(marks)


def shortfalls(case: Case, control_prompts: set[str]) -> tuple[list[str], list[str]]:
    """(what fails the case, what is only worth a look) for its summary line."""
    failing = structure_problems(case)
    edited = {p.prompt for p in case.probes if p.group in FACT_GROUPS}
    failing += [f"control {c!r} repeats a prompt" for c in sorted(control_prompts & edited)]
    right, total = tally(case, "prompts")
    if right < total or not total:
        failing.append(f"prompts answering old {right}/{total}")
    right, total = tally(case, "same_subject")
    if right < MIN_SAME_SUBJECT:
        failing.append(f"same_subject right {right}/{total} (at least {MIN_SAME_SUBJECT} needed)")
    group = "neighbours" if case.data.get("neighbours") else "controls"  # a case without neighbours: its own controls
    right, total = tally(case, group)
    if right < MIN_NEIGHBOURS:
        failing.append(f"{group} right {right}/{total} (at least {MIN_NEIGHBOURS} needed)")
    notes = []
    for group in ("paraphrases", "aliases", "neighbours", "same_subject"):
        right, total = tally(case, group)
        if right < total:
            notes.append(f"{group} {right}/{total}")
    return failing, notes


def show(probe: Probe, text: str, mark: str, probability: float | None) -> str:
    """One printed line: verdict, prompt, answer, and the expected answer's probability where scored."""
    score = f"  p={probability:.2f}" if probability is not None else ""
    return f"    {mark:<16} {probe.prompt!r} -> {text!r}{score}"


def print_case(case: Case, found: dict[Probe, tuple[str, float | None]]) -> None:
    """The case's prompts, group by group, each with the base model's answer and its verdict."""
    data = case.data
    print(f"\n== {data.get('id')}: {data.get('subject')!r} {' / '.join(case.old)} -> {' / '.join(case.new)}")
    for group in FACT_GROUPS + HELD_GROUPS:
        lines = [show(p, text, mark, found[p][1]) for p, text, mark in case.verdicts if p.group == group]
        if lines:
            print(f"  {group}")
            print("\n".join(lines))


def print_controls(folder: Path, probes: list[Probe], found: dict[Probe, tuple[str, float | None]]) -> Counter:
    """The folder's shared controls, once; returns their tally."""
    counts: Counter = Counter()
    if probes:
        print(f"\n== {folder}: controls of _defaults (added to every case of the folder)")
    for probe in probes:
        text, probability = found[probe]
        mark = verdict(probe, text, (), ())
        counts["controls", good("controls", mark)] += 1
        print(show(probe, text, mark, probability))
    return counts


def relation(path: Path) -> str:
    """The `# Relation: ...` comment at the top of a case file, or '?'."""
    for line in path.read_text().splitlines():
        if line.startswith("# Relation:"):
            return line.split(":", 1)[1].strip()
    return "?"


def summarize(cases: list[Case], counts: Counter, controls: dict[Path, list[Probe]]) -> int:
    """Print a line per case and the totals; returns how many cases fail."""
    print("\n== summary")
    failed = 0
    relations: Counter = Counter()
    for case in cases:
        failing, notes = shortfalls(case, {p.prompt for p in controls[case.path.parent]})
        failed += bool(failing)
        relations[relation(case.path), not failing] += 1
        for group in FACT_GROUPS + HELD_GROUPS:
            right, total = tally(case, group)
            counts[group, True] += right
            counts[group, False] += total - right
        counts["kept as said", True] += sum(m.startswith("keeps:") for _, _, m in case.verdicts)
        state = "FAIL " + "; ".join(failing) if failing else "ok"
        print(f"  {case.data.get('id')}: {state}" + (f"  (note: {', '.join(notes)})" if notes else ""))
    print(f"\ncases: {len(cases)}, ok {len(cases) - failed}, failing {failed}")
    words = {"prompts": "answering old", "paraphrases": "answering old", "aliases": "prompts answering old"}
    words["implications"] = "said already by the base model"
    for group in FACT_GROUPS + HELD_GROUPS:
        total = counts[group, True] + counts[group, False]
        print(f"  {group.replace('aliases', 'alias')} {words.get(group, 'right')}: {counts[group, True]}/{total}")
    print(f"  same_subject facts without an answer (kept as the base says them): {counts['kept as said', True]}")
    for name in sorted({r for r, _ in relations}):
        print(f"  relation {name}: {relations[name, True]} ok of {relations[name, True] + relations[name, False]}")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="case files, or folders of them")
    parser.add_argument("--model", default=None, help="a model folder or name (default: the embedded model)")
    args = parser.parse_args()
    from pytest_factedit.model.load import load

    lm = load(args.model, "cpu")
    cases = [read_case(path, lm.tokenizer) for path in case_files(args.paths)]
    folders = list(dict.fromkeys(case.path.parent for case in cases))
    controls = {f: [held_probe("controls", c, (), lm.tokenizer) for c in folder_controls(f)] for f in folders}
    found = answers(lm, [p for case in cases for p in case.probes] + [p for f in folders for p in controls[f]])
    counts: Counter = Counter()
    for folder in folders:
        counts += print_controls(folder, controls[folder], found)
        for case in cases:
            if case.path.parent == folder:
                judge(case, found)
                print_case(case, found)
    return 1 if summarize(cases, counts, controls) else 0


if __name__ == "__main__":
    sys.exit(main())
