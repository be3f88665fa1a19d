"""Held rows of a many-edit run that name the subject of another edited case, set aside at the end.

Once every edit is in place, a neighbour of one case that names a subject a second case rewrote may rightly
answer the second case's new fact: it says nothing about the first edit's locality, so the end-of-run
retention rows do not count it (they count what is left, and the record says how many were set aside).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..edit.subject import spellings
from ..metrics.measure import EditCheck

if TYPE_CHECKING:
    from ..cases.schema import FactCase

# the held groups judged against the base model's answer: another case's edit may change them
SET_ASIDE_GROUPS = ("neighbours", "same_subject")


@dataclasses.dataclass(frozen=True)
class _Names:
    """One case's subject and aliases: plain lower-case texts (a fast first check) and one word-bounded regex."""

    texts: tuple[str, ...]
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, case: FactCase) -> _Names:
        texts = tuple(dict.fromkeys(spellings(name)[0].casefold() for name in (case.subject, *case.aliases)))
        words = "|".join(re.escape(text) for text in sorted(texts, key=len, reverse=True))
        return cls(texts, re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE))

    def named_in(self, text: str) -> bool:
        folded = text.casefold()
        return any(t in folded for t in self.texts) and self.pattern.search(text) is not None


def without_other_subjects(
    checks: Sequence[EditCheck], cases: Sequence[FactCase]
) -> tuple[tuple[EditCheck, ...], dict[str, int]]:
    """Each check without its SET_ASIDE_GROUPS rows that name the subject (or an alias) of another case in
    `cases` (the edited ones), and how many rows of each group were set aside."""
    names = {case.id: _Names.of(case) for case in cases}
    counts = dict.fromkeys(SET_ASIDE_GROUPS, 0)
    kept_checks = []
    for check in checks:
        others = [n for case_id, n in names.items() if case_id != check.case_id]
        kept = []
        for answer in check.held:
            if answer.group in SET_ASIDE_GROUPS and any(n.named_in(answer.prompt) for n in others):
                counts[answer.group] += 1
            else:
                kept.append(answer)
        kept_checks.append(dataclasses.replace(check, held=tuple(kept)))
    return tuple(kept_checks), counts
