from __future__ import annotations

import pytest

from edge_agent.contracts.topics import DeviceTopics, TopicParts, fleet_filter, parse_topic


def test_device_topics_follow_the_layout() -> None:
    topics = DeviceTopics("edge", "plant-a", "press-01")
    assert topics.status == "edge/plant-a/press-01/status"
    assert topics.results("pump-3") == "edge/plant-a/press-01/results/pump-3"
    assert topics.cmd == "edge/plant-a/press-01/cmd"
    assert topics.desired == "edge/plant-a/press-01/desired"
    assert topics.own_filter() == "edge/plant-a/press-01/#"


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "$sys"])
def test_levels_with_wildcards_or_separators_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="device id"):
        DeviceTopics("edge", "plant-a", bad)


def test_fleet_filters_and_shared_subscriptions() -> None:
    assert fleet_filter("edge", "heartbeat") == "edge/+/+/heartbeat"
    assert fleet_filter("edge", "results", site="plant-a") == "edge/plant-a/+/results/+"
    assert fleet_filter("edge", "drift", share_group="fleet") == "$share/fleet/edge/+/+/drift"


def test_parse_topic_round_trips_and_ignores_strangers() -> None:
    topics = DeviceTopics("a/b", "s", "d")
    assert parse_topic("a/b", topics.results("x")) == TopicParts("s", "d", "results", "x")
    assert parse_topic("a/b", topics.ack) == TopicParts("s", "d", "ack")
    assert parse_topic("a/b", "a/b/s/d/unknown") is None
    assert parse_topic("a/b", "a/b/s/d/status/extra") is None
    assert parse_topic("a/b", "other/s/d/status") is None


def test_acl_filters_cover_what_a_device_publishes_and_reads() -> None:
    from edge_agent.contracts.topics import DeviceTopics

    topics = DeviceTopics("edge", "plant-a", "press-01")
    writes = topics.device_publishes()
    assert topics.status in writes and topics.ack in writes and topics.drift in writes
    assert "edge/plant-a/press-01/results/+" in writes
    assert topics.desired not in writes and topics.cmd not in writes
    assert topics.device_reads() == [topics.desired, topics.cmd, topics.transfer]
