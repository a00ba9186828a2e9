"""The outbox: how fast results go in, and how fast a backlog goes out after a reconnect.

Inserts: ``Outbox.store`` of batches of results as the agent makes them (each numbered, built,
encoded to JSON and stored in one transaction, WAL journal, ``synchronous=FULL``, the agent's
default), against plain SQLite ``executemany`` of the same encoded rows, in batches of the same
size, into a WAL database with the same synchronous setting. The baseline's payloads are already
encoded, so a second figure times the outbox's storage alone (sequence lease, caps, the insert)
on the same encoded rows: that is the insert rate the target speaks of, what the outbox costs
over plain SQLite. The first figure is what an agent gets in all; most of the difference is
building and encoding each result's JSON payload (pydantic), which the baseline does not do.

Replay: the results stored above wait while the uplink is down; then it connects and the figure is
the rate at which the broker acknowledges them (PUBACK) and the outbox removes them, unpaced
(``replay_rate = 0``; by default the agent drains a backlog at 1,000 records/s on top of live
results, so that it does not flood the broker, see docs/durability.md). The baseline is a bare paho
QoS 1 publisher sending the same payloads with the same window of messages in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

from bench.common import Figure
from edge_agent.buffers import BufferLimits, PendingRecord, SqliteBuffer
from edge_agent.contracts.payloads import ResultPayload
from edge_agent.contracts.topics import DeviceTopics
from edge_agent.health import Health
from edge_agent.mqtt import MqttClient, MqttSettings
from edge_agent.outbox import Outbox, OutboxItem
from edge_agent.sinks.mqtt import MqttSink
from fleet.broker import MosquittoProcess, find_mosquitto

BATCH = 100
MAX_INFLIGHT = 200
INSERT_TARGET = 0.5  # of plain SQLite's batch rate
REPLAY_TARGET = 5000.0  # messages/s


def _result_item(topics: DeviceTopics, asset: str, value: float) -> OutboxItem:
    return OutboxItem(
        topics.results(asset),
        partial(
            ResultPayload,
            asset=asset,
            model="bench-model",
            model_version="1",
            window_end=value,
            outputs={"score": value, "label": 1.0},
            latency_ms=0.4,
        ),
    )


async def _outbox_run(work: Path, port: int, records: int) -> tuple[float, float, list[bytes]]:
    """Store ``records`` results with the uplink down, then replay them; both rates, payloads."""
    topics = DeviceTopics("bench", "plant-a", "press-01")
    uplink = MqttClient(
        MqttSettings("127.0.0.1", port, client_id="bench-outbox", reconnect_max_s=1),
        name="uplink",
        max_inflight=MAX_INFLIGHT,
    )
    path = work / "outbox.db"
    health = Health()
    outbox = Outbox(
        partial(SqliteBuffer, path, BufferLimits(), synchronous="full"),
        MqttSink(uplink),
        health,
        device=topics.device,
        site=topics.site,
        alerts_topic=topics.alerts,
        max_inflight=MAX_INFLIGHT,
        replay_rate=0.0,
    )
    await outbox.start()
    batches = [
        [_result_item(topics, f"a{i % 4}", float(i)) for i in range(at, at + BATCH)]
        for at in range(0, records, BATCH)
    ]
    started = time.perf_counter()
    for batch in batches:
        await outbox.store(batch)
    insert_rate = records / (time.perf_counter() - started)

    payloads = [row[0] for row in sqlite3.connect(path).execute("SELECT payload FROM outbox")]
    forwarding = asyncio.create_task(outbox.run())
    started = time.perf_counter()
    await uplink.start()
    if not await uplink.wait_connected(30) or not await outbox.drain(300):
        raise RuntimeError(f"the outbox did not empty: {health.snapshot()}")
    replay_rate = records / (time.perf_counter() - started)
    forwarding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await forwarding
    await uplink.stop()
    await outbox.close()
    if health.counters.get("outbox.delivered", 0) < records:
        raise RuntimeError(f"the outbox delivered fewer than {records} records: {health.counters}")
    return insert_rate, replay_rate, payloads


def _plain_sqlite_rate(path: Path, payloads: list[bytes]) -> float:
    """The same rows (columns as the outbox's table) through ``executemany`` in batches: the
    ceiling a SQLite outbox can reach, with the payloads already encoded."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE rows (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, "
        "qos INTEGER NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL)"
    )
    topic = "bench/plant-a/press-01/results/a0"
    started = time.perf_counter()
    for at in range(0, len(payloads), BATCH):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO rows (seq, topic, payload, qos, retain, size) VALUES (?, ?, ?, 1, 0, ?)",
            [(at + i, topic, p, len(p)) for i, p in enumerate(payloads[at : at + BATCH])],
        )
        db.execute("COMMIT")
    rate = len(payloads) / (time.perf_counter() - started)
    db.close()
    return rate


def _buffer_insert_rate(path: Path, payloads: list[bytes]) -> float:
    """The outbox's SQLite buffer alone, storing records whose payloads are already encoded."""
    buffer = SqliteBuffer(path, BufferLimits(), synchronous="full")
    topic = "bench/plant-a/press-01/results/a0"
    batches = [
        [PendingRecord(topic, payload) for payload in payloads[at : at + BATCH]]
        for at in range(0, len(payloads), BATCH)
    ]
    started = time.perf_counter()
    for batch in batches:
        buffer.add(list(zip(buffer.reserve(len(batch)), batch, strict=True)))
    rate = len(payloads) / (time.perf_counter() - started)
    buffer.close()
    return rate


def _bare_paho_rate(port: int, payloads: list[bytes]) -> float:
    """A bare paho QoS 1 publisher: all sent, the same window in flight, until every PUBACK."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    done = threading.Event()
    acked = 0

    def on_publish(*_args: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(payloads):
            done.set()

    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-bare")
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        started = time.perf_counter()
        for payload in payloads:
            client.publish("bench/plant-a/press-01/results/a0", payload, qos=1)
        if not done.wait(300):
            raise RuntimeError(f"bare publisher: {acked} of {len(payloads)} acknowledged")
        return len(payloads) / (time.perf_counter() - started)
    finally:
        client.disconnect()
        client.loop_stop()


def run(quick: bool) -> list[Figure]:
    if find_mosquitto() is None:
        raise RuntimeError("the outbox benchmark needs mosquitto (apt-get install mosquitto)")
    records = 10_000 if quick else 50_000
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        work = Path(tmp)
        broker = MosquittoProcess(work / "mosquitto")
        broker.start()
        try:
            inserts, replay, payloads = asyncio.run(_outbox_run(work, broker.port, records))
            plain = _plain_sqlite_rate(work / "plain.db", payloads)
            stored_only = _buffer_insert_rate(work / "buffer.db", payloads)
            bare = _bare_paho_rate(broker.port, payloads)
        finally:
            broker.stop()
    return [
        Figure(
            "outbox",
            f"store, batches of {BATCH} (number, build, encode, insert)",
            inserts,
            "rec/s",
            "plain SQLite executemany",
            plain,
            better="higher",
        ),
        Figure(
            "outbox",
            "inserts: the outbox's storage, records encoded",
            stored_only,
            "rec/s",
            "plain SQLite executemany",
            plain,
            better="higher",
            target=f">= {INSERT_TARGET:.0%} of plain",
            met=stored_only >= INSERT_TARGET * plain,
        ),
        Figure(
            "outbox",
            f"replay of {records:,} after reconnect (unpaced)",
            replay,
            "msg/s",
            "bare paho QoS 1 publisher",
            bare,
            better="higher",
            target=f">= {REPLAY_TARGET:,.0f} msg/s",
            met=replay >= REPLAY_TARGET,
        ),
    ]
