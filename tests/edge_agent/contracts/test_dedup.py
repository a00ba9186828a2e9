from __future__ import annotations

import random

from edge_agent.contracts.dedup import Deduplicator


def test_out_of_order_duplicates_are_dropped_per_device() -> None:
    dedup = Deduplicator()
    order = list(range(1000)) * 2
    random.Random(3).shuffle(order)
    new = [seq for seq in order if dedup.is_new("a", seq)]
    assert sorted(new) == list(range(1000))
    assert dedup.duplicates == 1000
    assert dedup.is_new("b", 5)


def test_gaps_that_never_close_are_given_up_past_the_bound() -> None:
    dedup = Deduplicator(max_gap=10)
    assert dedup.is_new("a", 0)
    for seq in range(2, 20):  # 1 never arrives (dropped by an overflow policy)
        assert dedup.is_new("a", seq)
    assert not dedup.is_new("a", 19)
    assert not dedup.is_new("a", 1)  # given up: memory stays bounded
