"""Same-subject facts kept, split by whether `relation_rows` asks their relation: a check that the questions
help the relations they ask and what they do to the others.

    python bench/relation_split.py bench/results/editors26-default-same-subject-shard*.jsonl
    python bench/relation_split.py bench/results/editors26-relation-rows-same-subject-shard*.jsonl

Reads `bench/editors.py` logs of the same-subject benchmark (one method per log) and the case files of
`bench/same_subject/`. A fact is one of the asked relations when its prompt has a word of that relation
(RELATION_WORDS: continent, language, capital, ...); it counts as kept as the plugin judges it
(`metrics/measure.py: CaseEvidence.right`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pytest_factedit.cases import load_case
from pytest_factedit.metrics.answers import ProbedAnswer, first_words
from pytest_factedit.metrics.measure import CaseEvidence

CASES = Path(__file__).parent / "same_subject"
# one or more words per relation of edit/retention.py: RELATION_TEMPLATES, as a same-subject prompt asks it
RELATION_WORDS = (
    "located",
    "continent",
    "language",
    "capital",
    "made by",
    "maker",
    "developed",
    "owns",
    "owned",
    "headquarter",
    "citizen",
    "occupation",
    "born",
    "founded",
    "plays ",
    "genre",
)


def same_subject_facts() -> dict[tuple[str, str], tuple[CaseEvidence, tuple[str, ...]]]:
    """(case id, same-subject prompt) -> (the case's edit, the fact's answers; empty: kept as the base says it)."""
    found = {}
    for path in sorted(CASES.glob("[!_]*.yaml")):
        case = load_case(path, root=CASES)
        edit = CaseEvidence(answers=(), old=case.old, new=case.new)
        found.update({(case.id, fact.prompt): (edit, fact.answer) for fact in case.same_subject})
    return found


def kept(edit: CaseEvidence, expected: tuple[str, ...], base: str, edited: str) -> bool:
    """The plugin's verdict on one same-subject fact after the edit."""
    unchanged = not expected  # an entry without `answer:` keeps the base model's first words
    answer = ProbedAnswer("same_subject", "", expected or (first_words(base),), base, edited, unchanged=unchanged)
    return edit.right(answer, edited)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path, help="bench/editors.py logs of the same-subject benchmark")
    args = parser.parse_args()
    facts = same_subject_facts()
    counts = {True: [0, 0], False: [0, 0]}
    for log in args.logs:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            for group, prompt, base, edited in record["values"]["answers"]:
                if group == "same_subject":
                    asked = any(word in prompt.lower() for word in RELATION_WORDS)
                    counts[asked][0] += kept(*facts[(record["fact"], prompt)], base, edited)
                    counts[asked][1] += 1
    for asked, label in ((True, "of the asked relations"), (False, "of the others")):
        hits, total = counts[asked]
        print(f"{label}: {hits} of {total} kept ({hits / max(total, 1):.3f})")


if __name__ == "__main__":
    main()
