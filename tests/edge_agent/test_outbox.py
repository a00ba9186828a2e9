"""The outbox against a real mosquitto and real SQLite files: outages, caps, full disks, clocks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from edge_agent.buffers import Buffer, BufferLimits, MemoryBuffer, PendingRecord, SqliteBuffer
from edge_agent.contracts.dedup import Deduplicator
from edge_agent.contracts.payloads import DeviceAlertPayload, ResultPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from edge_agent.health import Health
from edge_agent.mqtt import MqttClient, MqttSettings
from edge_agent.outbox import Outbox, OutboxItem, ReplayPacer
from edge_agent.sinks.mqtt import MqttSink
from tests.support.collector import Collector
from tests.support.mosquitto import Mosquitto, free_port, persistent_broker, require_mosquitto
from tests.support.mqtt import Received

TOPICS = DeviceTopics("outbox-test", "plant-a", "press-01")


def result_item(asset: str, value: float) -> OutboxItem:
    return OutboxItem(
        TOPICS.results(asset),
        partial(
            ResultPayload,
            asset=asset,
            model="m",
            model_version="1",
            window_end=value,
            outputs={"score": value},
            latency_ms=0.1,
        ),
        latest=TOPICS.latest(asset),
    )


@dataclass
class Running:
    outbox: Outbox
    uplink: MqttClient
    health: Health

    async def wait(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll ``condition`` on the loop until it holds (fails after ``timeout``)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                counters, gauges = self.health.snapshot()
                raise AssertionError(f"condition not met in {timeout} s: {counters} {gauges}")
            await asyncio.sleep(0.02)

    def counter(self, name: str) -> float:
        return self.health.snapshot()[0].get(name, 0)

    def gauge(self, name: str) -> float:
        return self.health.snapshot()[1][name]


@asynccontextmanager
async def running_outbox(
    port: int,
    open_buffer: Callable[[], Buffer],
    *,
    max_inflight: int = 100,
    replay_rate: float = 0.0,
    wall_clock: Callable[[], float] | None = None,
    fallback: Callable[[], Buffer] | None = None,
) -> AsyncIterator[Running]:
    uplink = MqttClient(
        MqttSettings("127.0.0.1", port, client_id="outbox-test", keepalive_s=5, reconnect_max_s=1),
        name="uplink",
        max_inflight=max_inflight,
    )
    health = Health()
    extra = {} if wall_clock is None else {"wall_clock": wall_clock}
    outbox = Outbox(
        open_buffer,
        MqttSink(uplink),
        health,
        device=TOPICS.device,
        site=TOPICS.site,
        alerts_topic=TOPICS.alerts,
        max_inflight=max_inflight,
        replay_rate=replay_rate,
        fallback=fallback,
        **extra,
    )
    await uplink.start()
    await outbox.start()
    task = asyncio.create_task(outbox.run(), name="outbox")
    try:
        yield Running(outbox, uplink, health)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await uplink.stop()
        await outbox.close()


def results(messages: list[Received]) -> list[ResultPayload]:
    return [decode(ResultPayload, m.payload) for m in messages if "/results/" in m.topic]


def deduplicated(messages: list[Received]) -> list[ResultPayload]:
    dedup = Deduplicator()
    return [r for r in results(messages) if dedup.is_new_payload(r)]


@pytest.mark.slow
def test_results_made_while_the_broker_is_down_all_arrive_once_in_order(tmp_path: Path) -> None:
    broker = persistent_broker(tmp_path / "broker")
    collector = Collector(broker.port, f"{TOPICS.base}/results/#")
    assets = [f"a{i}" for i in range(4)]
    live, offline = 400, 10_000

    async def body() -> None:
        path = tmp_path / "outbox.db"
        async with running_outbox(broker.port, partial(SqliteBuffer, path)) as run:
            await run.wait(lambda: run.uplink.connected)
            for i in range(0, live, 20):
                await run.outbox.store([result_item(assets[j % 4], i + j) for j in range(20)])
            broker.stop()
            await run.wait(lambda: not run.uplink.connected)
            for i in range(live, live + offline, 50):
                await run.outbox.store([result_item(assets[j % 4], i + j) for j in range(50)])
            assert run.gauge("outbox.rows") >= offline - 200  # at most a window was in flight
            broker.start()
            await run.wait(lambda: run.gauge("outbox.rows") == 0, timeout=120)
            assert run.counter("outbox.delivered") >= live + offline

    try:
        asyncio.run(body())
        # A resent record is the same bytes: counting distinct payloads is cheap while waiting.
        try:
            messages = collector.wait_for(
                lambda m: len({x.payload for x in m}) >= live + offline, timeout=120
            )
        except AssertionError:
            got = {r.outputs["score"] for r in deduplicated(collector.messages)}
            missing = sorted(set(range(live + offline)) - got)
            raise AssertionError(f"{len(missing)} results missing: {missing[:40]}") from None
    finally:
        collector.close()
        broker.stop()
    unique = deduplicated(messages)
    assert sorted(r.outputs["score"] for r in unique) == list(range(live + offline))
    assert len({r.seq for r in unique}) == live + offline
    for asset in assets:
        seqs = [r.seq for r in unique if r.asset == asset]
        assert seqs == sorted(seqs), f"results of {asset} out of order"
        values = [r.window_end for r in unique if r.asset == asset]
        assert values == sorted(values)


def test_with_a_small_cap_the_oldest_go_counted_and_the_newest_arrive(tmp_path: Path) -> None:
    require_mosquitto()
    port = free_port()  # nobody listens yet: the uplink is down
    limits = BufferLimits(max_rows=100, overflow="drop_oldest")

    async def body() -> list[Received]:
        buffer = partial(SqliteBuffer, tmp_path / "outbox.db", limits)
        async with running_outbox(port, buffer) as run:
            for i in range(0, 150, 10):
                await run.outbox.store([result_item("a", i + j) for j in range(10)])
            assert run.counter("outbox.dropped_oldest") == 50
            assert run.gauge("outbox.rows") == 100
            broker = Mosquitto(tmp_path / "broker", port=port)
            broker.start()
            try:
                collector = Collector(port, f"{TOPICS.base}/results/#")
                try:
                    await run.wait(lambda: run.gauge("outbox.rows") == 0)
                    return collector.wait_for(lambda m: len(m) >= 100)
                finally:
                    collector.close()
            finally:
                broker.stop()

    messages = asyncio.run(body())
    assert [r.outputs["score"] for r in results(messages)] == list(range(50, 150))


def test_drop_newest_keeps_the_backlog_and_counts(tmp_path: Path) -> None:
    require_mosquitto()
    limits = BufferLimits(max_rows=20, overflow="drop_newest")

    async def body() -> None:
        buffer = partial(SqliteBuffer, tmp_path / "outbox.db", limits)
        async with running_outbox(free_port(), buffer) as run:
            await run.outbox.store([result_item("a", i) for i in range(30)])  # empty: all taken
            await run.outbox.store([result_item("a", i) for i in range(5)])
            assert run.counter("outbox.dropped_newest") == 5
            assert run.gauge("outbox.rows") == 30

    asyncio.run(body())


def test_pause_sources_makes_store_wait_until_records_are_delivered(tmp_path: Path) -> None:
    require_mosquitto()
    port = free_port()
    limits = BufferLimits(max_rows=10, overflow="refuse")

    async def body() -> None:
        buffer = partial(SqliteBuffer, tmp_path / "outbox.db", limits)
        async with running_outbox(port, buffer) as run:
            await run.outbox.store([result_item("a", i) for i in range(10)])
            waiting = asyncio.create_task(run.outbox.store([result_item("a", 10)]))
            await run.wait(lambda: run.outbox.paused)
            assert not waiting.done()
            assert run.gauge("outbox.paused") == 1
            broker = Mosquitto(tmp_path / "broker", port=port)
            broker.start()
            try:
                await asyncio.wait_for(waiting, 60)
                await run.outbox.wait_for_space()
                assert not run.outbox.paused
                await run.wait(lambda: run.gauge("outbox.rows") == 0)
            finally:
                broker.stop()
            assert run.counter("outbox.pauses") == 1
            assert run.counter("outbox.stored") == 11

    asyncio.run(body())


def test_a_full_disk_publishes_directly_and_storing_recovers(
    tmp_path: Path, broker: Mosquitto
) -> None:
    collector = Collector(broker.port, f"{TOPICS.base}/#")
    big = "x" * 200_000  # more than the file may hold: SQLite reports it full

    def alert(message: str) -> OutboxItem:
        return OutboxItem(
            TOPICS.alerts, partial(DeviceAlertPayload, alert="test", level="warn", message=message)
        )

    async def body() -> None:
        buffer = partial(SqliteBuffer, tmp_path / "outbox.db", max_page_count=30)
        async with running_outbox(broker.port, buffer) as run:
            await run.wait(lambda: run.uplink.connected)
            await run.outbox.store([alert(big)])
            assert run.counter("outbox.store_errors") == 1
            assert run.counter("outbox.direct") == 1
            assert run.gauge("outbox.storage_failing") == 1
            await run.outbox.store([alert("small")])
            assert run.gauge("outbox.storage_failing") == 0
            assert run.counter("outbox.stored") == 1
            await run.wait(lambda: run.gauge("outbox.rows") == 0)

    try:
        asyncio.run(body())
        messages = collector.wait_for(lambda m: len(m) >= 2)
    finally:
        collector.close()
    alerts = [decode(DeviceAlertPayload, m.payload) for m in messages if m.topic == TOPICS.alerts]
    assert [a.message for a in alerts] == [big, "small"]
    assert alerts[0].seq < alerts[1].seq


def test_nothing_stored_and_no_uplink_is_an_error_the_caller_sees(tmp_path: Path) -> None:
    require_mosquitto()
    big = "x" * 200_000

    async def body() -> None:
        buffer = partial(SqliteBuffer, tmp_path / "outbox.db", max_page_count=30)
        async with running_outbox(free_port(), buffer) as run:
            item = OutboxItem(
                TOPICS.alerts, partial(DeviceAlertPayload, alert="t", level="warn", message=big)
            )
            with pytest.raises(Exception, match="neither stored"):
                await run.outbox.store([item])
            assert run.counter("outbox.store_errors") == 1

    asyncio.run(body())


def test_a_garbage_file_is_replaced_with_an_alert(tmp_path: Path, broker: Mosquitto) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"\x00garbage" * 1000)
    collector = Collector(broker.port, f"{TOPICS.base}/#")

    async def body() -> None:
        async with running_outbox(broker.port, partial(SqliteBuffer, path)) as run:
            assert run.counter("outbox.corrupt_files") == 1
            await run.outbox.store([result_item("a", 1.0)])
            await run.wait(lambda: run.gauge("outbox.rows") == 0)

    try:
        asyncio.run(body())
        messages = collector.wait_for(lambda m: any("/results/" in x.topic for x in m))
    finally:
        collector.close()
    alert = decode(
        DeviceAlertPayload, next(m for m in messages if m.topic == TOPICS.alerts).payload
    )
    assert alert.alert == "outbox_corrupt" and "corrupt-" in alert.details["moved_to"]
    assert [p.name for p in tmp_path.glob("outbox.db.corrupt-*")]


def test_storage_that_cannot_be_opened_falls_back_to_memory_with_an_alert(
    tmp_path: Path, broker: Mosquitto
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the outbox directory should be")
    collector = Collector(broker.port, f"{TOPICS.base}/#")

    async def body() -> None:
        buffer = partial(SqliteBuffer, blocker / "outbox.db")
        async with running_outbox(broker.port, buffer, fallback=MemoryBuffer) as run:
            assert run.counter("outbox.open_errors") == 1
            await run.outbox.store([result_item("a", 1.0)])
            await run.wait(lambda: run.gauge("outbox.rows") == 0)

    try:
        asyncio.run(body())
        messages = collector.wait_for(lambda m: any("/results/" in x.topic for x in m))
    finally:
        collector.close()
    alert = decode(
        DeviceAlertPayload, next(m for m in messages if m.topic == TOPICS.alerts).payload
    )
    assert alert.alert == "outbox_unavailable"


def test_a_wall_clock_jump_is_marked_and_seq_keeps_the_order(
    tmp_path: Path, broker: Mosquitto
) -> None:
    collector = Collector(broker.port, f"{TOPICS.base}/results/#")
    wall = [1_000.0]  # a device without a real-time clock boots near the epoch

    async def body() -> None:
        buffer = partial(SqliteBuffer, tmp_path / "outbox.db")
        async with running_outbox(broker.port, buffer, wall_clock=lambda: wall[0]) as run:
            await run.outbox.store([result_item("a", 0)])
            await run.outbox.store([result_item("a", 1)])
            wall[0] = 1_764_000_000.0  # NTP sets the clock
            await run.outbox.store([result_item("a", 2)])
            await run.outbox.store([result_item("a", 3)])
            assert run.counter("outbox.clock_jumps") == 1
            await run.wait(lambda: run.gauge("outbox.rows") == 0)

    try:
        asyncio.run(body())
        messages = collector.wait_for(lambda m: len(m) >= 4)
    finally:
        collector.close()
    got = results(messages)
    assert [r.clock_jump for r in got] == [False, False, True, False]
    assert [r.seq for r in got] == sorted(r.seq for r in got)


def test_the_newest_result_is_retained_on_the_latest_topic(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async def body() -> None:
        buffer = partial(SqliteBuffer, tmp_path / "outbox.db")
        async with running_outbox(broker.port, buffer) as run:
            await run.wait(lambda: run.uplink.connected)
            await run.outbox.store([result_item("a", i) for i in range(5)])
            await run.outbox.store([result_item("b", 7)])
            await run.wait(lambda: run.gauge("outbox.rows") == 0)

    asyncio.run(body())
    late = Collector(broker.port, f"{TOPICS.base}/latest/#")  # subscribes afterwards
    try:
        messages = late.wait_for(lambda m: len(m) >= 2)
    finally:
        late.close()
    newest = {m.topic: json.loads(m.payload)["outputs"]["score"] for m in messages if m.retain}
    assert newest == {TOPICS.latest("a"): 4, TOPICS.latest("b"): 7}


@pytest.mark.slow
def test_a_backlog_from_before_a_restart_is_replayed_paced(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Records left by the previous run are a backlog: they drain at ``replay_rate``."""
    path = tmp_path / "outbox.db"
    before = SqliteBuffer(path)
    before.add([(seq, PendingRecord(TOPICS.results("a"), b"{}")) for seq in before.reserve(210)])
    before.close()

    async def body() -> float:
        buffer = partial(SqliteBuffer, path)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with running_outbox(broker.port, buffer, max_inflight=10, replay_rate=100) as run:
            await run.wait(lambda: run.counter("outbox.delivered") == 210)
            return loop.time() - started

    # A lower bound only: 200 records beyond the first burst of 10 at 100/s take at least 2 s.
    assert asyncio.run(body()) >= 1.9


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_lets_live_records_through_and_paces_only_the_backlog() -> None:
    clock = FakeClock()
    pacer = ReplayPacer(100.0, 10, clock)
    assert pacer.available() == 10  # a first burst
    pacer.take(10)
    assert pacer.available() == 0
    clock.now += 0.05
    assert pacer.available() == 5  # the backlog: 100 records/s
    pacer.credit(300)  # live records stored while the uplink is up go out at once
    assert pacer.available() == 305
    pacer.take(302)
    assert pacer.available() == 3  # credit first, then the backlog's tokens
    clock.now += 10
    assert pacer.available() == 10  # tokens never pile up beyond a burst
    unpaced = ReplayPacer(0.0, 10, clock)
    unpaced.credit(5)
    assert unpaced.available() == 10
