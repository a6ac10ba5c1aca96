"""Which candidate a new one races against (evomerge/evaluate/racing.py): the k-th best of the
candidates told to the strategy so far that were scored on every item (exact, not copies).

The reference of candidate i is fixed when i is asked, from the told prefix at that moment, so it
is a function of committed results in candidate order: a resumed run re-derives it exactly
(docs/reliability.md promise 3), and the archive keeps it with the candidate (``race_ref``).
"""

from __future__ import annotations

import bisect

from evomerge.result import Fidelity, Status
from evomerge.store import CandidateRow


class TopExact:
    """The told, exactly scored candidates ordered by fitness (best first, ties by index)."""

    def __init__(self) -> None:
        self._keys: list[tuple[float, int]] = []  # (-fitness, index), sorted
        self.in_order: list[int] = []  # the same candidates in the order they were told (subset fits)

    def add(self, row: CandidateRow) -> None:
        if (row.status == Status.COMPLETE and row.fitness is not None and row.cached_from is None
                and row.fidelity == Fidelity.EXACT):
            bisect.insort(self._keys, (-row.fitness, row.index))
            self.in_order.append(row.index)

    def kth(self, k: int) -> int | None:
        """The index of the k-th best (1 = best), None while fewer than k are known."""
        return self._keys[k - 1][1] if len(self._keys) >= k else None
