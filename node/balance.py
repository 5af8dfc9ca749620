"""Spreading associations evenly over the node's receiver processes.

With ``node.receivers > 1`` several receiver processes serve one listening socket,
which ``serve`` binds and hands to each. One Python process is bound by its GIL, so
how the associations fall on the processes decides the throughput. The kernel does not
balance them: with SO_REUSEPORT (what the node used before) it hashes each connection
to a process, and 4 associations from a PACS landed 4/0 or 3/1 on two processes in 10
of 16 benchmark runs, one process doing most of the work while the other idled (median
217 images/s before, 255 with this module, every run 2/2; README, "Benchmarks").

So each process publishes how many associations it is serving in a small shared array,
and a process that serves more than the least loaded one leaves a waiting connection to
it. Never for long: after :data:`YIELD_LIMIT_SECONDS` of leaving connections to its
siblings it takes the next one itself, so a stalled sibling cannot keep a caller waiting.
"""

from __future__ import annotations

import ctypes
import time
from multiprocessing.context import BaseContext

#: longest a process leaves pending connections to less loaded siblings
YIELD_LIMIT_SECONDS = 0.2
#: a pause shorter than this between two yields belongs to the same wait
_SAME_WAIT_SECONDS = 0.01

Counts = ctypes.Array[ctypes.c_int]


def shared_counts(context: BaseContext, processes: int) -> Counts:
    """The array the receiver processes publish their association counts in."""
    return context.RawArray(ctypes.c_int, processes)


class AcceptBalance:
    """One receiver process's view of the shared association counts (its own at ``slot``).

    The process publishes its count of live associations: at each accept (the new one
    included) and on every turn of its accept loop, so a sibling sees an ended association
    within that loop's poll interval. The count is read from the live association threads
    each time, never kept as a running tally, so it cannot drift.
    """

    def __init__(self, counts: Counts, slot: int) -> None:
        if not 0 <= slot < len(counts):
            raise ValueError(f"slot {slot} outside the {len(counts)} receiver processes")
        self._counts = counts
        self._slot = slot
        self._yielding_since: float | None = None
        self._last_yield = 0.0

    @property
    def serving(self) -> int:
        """Associations this process last published."""
        return int(self._counts[self._slot])

    def publish(self, serving: int) -> None:
        """Tell the siblings how many associations this process serves now."""
        self._counts[self._slot] = serving

    def accepted(self, serving: int) -> None:
        """This process took a connection; ``serving`` counts it."""
        self.publish(serving)
        self._yielding_since = None

    def should_yield(self) -> bool:
        """Whether to leave the pending connection to a less loaded process.

        Only when another process serves fewer associations, and only until this
        process has been leaving connections to others for YIELD_LIMIT_SECONDS.
        """
        if self._counts[self._slot] <= min(self._counts):
            return False
        now = time.monotonic()
        if self._yielding_since is None or now - self._last_yield > _SAME_WAIT_SECONDS:
            self._yielding_since = now
        self._last_yield = now
        return now - self._yielding_since < YIELD_LIMIT_SECONDS
