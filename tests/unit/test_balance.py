"""AcceptBalance: who takes a pending connection among several receiver processes."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from node.balance import YIELD_LIMIT_SECONDS, AcceptBalance, shared_counts


def _pair() -> tuple[AcceptBalance, AcceptBalance]:
    counts = shared_counts(multiprocessing.get_context("spawn"), 2)
    return AcceptBalance(counts, 0), AcceptBalance(counts, 1)


def test_the_busier_process_leaves_the_connection_and_equal_ones_both_take_it() -> None:
    a, b = _pair()
    assert not a.should_yield() and not b.should_yield()
    a.accepted(1)
    assert a.should_yield() and not b.should_yield()
    b.accepted(1)
    assert not a.should_yield() and not b.should_yield()
    a.accepted(2)
    b.accepted(3)
    assert b.should_yield() and not a.should_yield()
    assert (a.serving, b.serving) == (2, 3)


def test_ended_associations_free_the_process_once_published() -> None:
    a, b = _pair()
    a.accepted(2)
    b.accepted(1)
    assert a.should_yield()
    a.publish(1)  # one of a's associations ended
    assert not a.should_yield() and not b.should_yield()


def test_a_stalled_sibling_keeps_a_connection_waiting_only_briefly() -> None:
    a, _ = _pair()
    a.accepted(1)
    started = time.monotonic()
    while a.should_yield():
        assert time.monotonic() - started < YIELD_LIMIT_SECONDS + 1.0
        time.sleep(0.001)
    assert time.monotonic() - started >= YIELD_LIMIT_SECONDS * 0.9
    a.accepted(2)  # taking it starts a fresh wait for the next connection
    assert a.should_yield()


def test_a_slot_outside_the_array_is_refused() -> None:
    counts = shared_counts(multiprocessing.get_context("spawn"), 2)
    with pytest.raises(ValueError, match="slot 2"):
        AcceptBalance(counts, 2)
