from __future__ import annotations

import random

from edge_agent.contracts.dedup import Deduplicator
from edge_agent.contracts.payloads import ResultPayload


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


def test_payloads_are_told_apart_by_site_and_device() -> None:
    def result(site: str, seq: int) -> ResultPayload:
        return ResultPayload(
            record_id=f"{site}-{seq}",
            seq=seq,
            device="press-01",
            site=site,
            ts=0.0,
            asset="a",
            model="m",
            model_version="1",
            window_end=0.0,
            outputs={},
            latency_ms=0.0,
        )

    dedup = Deduplicator()
    assert dedup.is_new_payload(result("plant-a", 0))
    assert dedup.is_new_payload(result("plant-b", 0))
    assert not dedup.is_new_payload(result("plant-a", 0))


def test_a_device_that_numbers_again_from_zero_is_not_silenced() -> None:
    dedup = Deduplicator(max_gap=10, restart_gap=50)
    for seq in range(100):
        assert dedup.is_new("a", seq)
    assert not dedup.is_new("a", 95)  # a late duplicate
    assert dedup.is_new("a", 0)  # its state was wiped: numbering started again
    assert dedup.restarts == 1
    assert not dedup.is_new("a", 0)
