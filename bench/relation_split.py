"""Same-subject facts kept, split by whether `relation_rows` asks their relation: a check that the questions
help the relations they ask and what they do to the others.

    python bench/relation_split.py bench/results/editors26-default-same-subject-shard*.jsonl
    python bench/relation_split.py bench/results/editors26-relation-rows-same-subject-shard*.jsonl

Reads `bench/editors.py` logs of the same-subject benchmark (one method per log) and the case files of
`bench/same_subject/`. A fact is one of the asked relations when its prompt has a word of that relation
(RELATION_WORDS: continent, language, capital, ...); it counts as kept as the plugin judges it: an
answer alias in the edited answer, or, for an entry without `answer:`, the base answer's first words.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from pytest_factedit.metrics.answers import first_words, matches

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


def expected_answers() -> dict[tuple[str, str], list[str] | None]:
    """(case id, same-subject prompt) -> its answers, None where the entry gives none."""
    found: dict[tuple[str, str], list[str] | None] = {}
    for path in sorted(CASES.glob("[!_]*.yaml")):
        data = yaml.safe_load(path.read_text())
        for entry in data.get("same_subject") or []:
            answer = entry.get("answer")
            found[(data["id"], entry["prompt"])] = [answer] if isinstance(answer, str) else answer
    return found


def kept(base: str, edited: str, answers: list[str] | None) -> bool:
    return first_words(edited) == first_words(base) if answers is None else matches(edited, answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path, help="bench/editors.py logs of the same-subject benchmark")
    args = parser.parse_args()
    answers = expected_answers()
    counts = {True: [0, 0], False: [0, 0]}
    for log in args.logs:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            for group, prompt, base, edited in record["values"]["answers"]:
                if group == "same_subject":
                    asked = any(word in prompt.lower() for word in RELATION_WORDS)
                    counts[asked][0] += kept(base, edited, answers[(record["fact"], prompt)])
                    counts[asked][1] += 1
    for asked, label in ((True, "of the asked relations"), (False, "of the others")):
        hits, total = counts[asked]
        print(f"{label}: {hits} of {total} kept ({hits / max(total, 1):.3f})")


if __name__ == "__main__":
    main()
