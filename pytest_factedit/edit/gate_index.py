"""Where many subject gates' token patterns occur in a pass, found in one walk whatever their number.

A trie of every kept edit's patterns (token id -> child), each node listing the edits that own the
pattern ending there. Walking it from each start of a row reads at most the longest pattern's length of
tokens, so matching costs O(tokens x longest pattern) dictionary lookups plus the hits, however many
edits are kept; a name that is a prefix of another ("New York", "New York City") is found on the way.
The sentence reach (`rest_of_sentence`) is the same rule as edit/gate.py's, on the host, for one edit
and row.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet


class _Node:
    __slots__ = ("children", "owners")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.owners: set[int] = set()  # serials of the edits whose pattern ends here


class PatternTrie:
    """Token patterns of many owners (edit serials): `hits` yields every occurrence in a row with its owners."""

    def __init__(self) -> None:
        self.root = _Node()
        self.lengths: Counter[int] = Counter()  # pattern length -> how many (owner, pattern) pairs have it
        self.lookups = 0  # dictionary lookups made by `hits` so far (the cost that must not grow with owners)

    @property
    def longest(self) -> int:
        return max(self.lengths, default=0)

    def add(self, owner: int, patterns: Iterable[Sequence[int]]) -> None:
        for pattern in dict.fromkeys(tuple(p) for p in patterns if p):
            node = self.root
            for token in pattern:
                node = node.children.setdefault(token, _Node())
            if owner not in node.owners:
                node.owners.add(owner)
                self.lengths[len(pattern)] += 1

    def discard(self, owner: int, patterns: Iterable[Sequence[int]]) -> None:
        """`owner` off its patterns; nodes left with no owner and no child are pruned."""
        for pattern in dict.fromkeys(tuple(p) for p in patterns if p):
            path = [self.root]
            for token in pattern:
                child = path[-1].children.get(token)
                if child is None:
                    break
                path.append(child)
            else:
                if owner in path[-1].owners:
                    path[-1].owners.discard(owner)
                    self.lengths[len(pattern)] -= 1
                    self.lengths += Counter()  # drops lengths no pattern has any more
                for depth in range(len(pattern), 0, -1):
                    if path[depth].owners or path[depth].children:
                        break
                    del path[depth - 1].children[pattern[depth - 1]]

    def occurs_in(self, row: Sequence[int], ignoring: AbstractSet[int] = frozenset()) -> bool:
        """Does a pattern of an owner not in `ignoring` occur in `row`? `hits` up to the first one; its
        lookups are not counted, as no pass asks this (`lookups` is what the passes cost)."""
        counted = self.lookups
        try:
            return any(owners - ignoring for _, _, owners in self.hits(row))
        finally:
            self.lookups = counted

    def hits(self, row: Sequence[int], first: int = 0) -> Iterator[tuple[int, int, set[int]]]:
        """(start, end, owners) for every pattern occurring in `row` at a start >= `first`."""
        size = len(row)
        for start in range(max(first, 0), size):
            node: _Node | None = self.root
            for end in range(start, size):
                self.lookups += 1
                node = node.children.get(row[end]) if node is not None else None
                if node is None:
                    break
                if node.owners:
                    yield start, end + 1, node.owners


def rest_of_sentence(found: Sequence[int], ends: Sequence[int], still_open: bool, size: int) -> tuple[list[int], bool]:
    """(the positions from each of `found` (sorted) to the end of its sentence, whether the last
    sentence is still open after the row): `ends` (sorted) are the tokens that end a sentence, the
    subject's own tokens left out ("U.S."); a sentence's end token belongs to it. `still_open`: the text
    before the row is inside a sentence that names the subject, so the row's first sentence counts."""
    marked: list[int] = []
    following = 0  # the first position no interval covers yet
    for start in ([0] if still_open else []) + list(found):
        if start < following:
            continue
        index = bisect_left(ends, start)
        stop = ends[index] if index < len(ends) else size - 1
        marked.extend(range(start, stop + 1))
        following = stop + 1
    if size == 0:
        return marked, still_open
    last = size - 1
    ends_last = bool(ends) and ends[-1] == last
    return marked, bool(marked) and marked[-1] == last and not ends_last
