"""The outbox: stores every record that must arrive, forwards it, paces replay, bounds, recovers.

Everything that must arrive (results, heartbeats, drift summaries, alerts, acks) goes through
:meth:`Outbox.store`. A record is durable in the buffer before it is published, and leaves it
only once the sink confirmed it (PUBACK), so delivery is at-least-once; receivers drop the
duplicates by (device, seq) with :mod:`edge_agent.contracts.dedup`. See docs/durability.md.

Threads: the buffer is used only on the outbox's own worker thread; every public method is called
on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from edge_agent.buffers.base import (
    AddResult,
    Buffer,
    BufferFull,
    BufferLimits,
    OutboxRecord,
    PendingRecord,
)
from edge_agent.buffers.memory import MemoryBuffer
from edge_agent.buffers.sqlite import SqliteBuffer
from edge_agent.contracts.payloads import DeviceAlertPayload, SequencedPayload
from edge_agent.errors import NotReadyError, OutboxError
from edge_agent.mqtt import PublishRefused

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig
    from edge_agent.health import Health
    from edge_agent.sinks.base import Sink

__all__ = ["CLOCK_JUMP_S", "Outbox", "OutboxItem", "PayloadFactory", "ReplayPacer"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A wall clock that moved this much more or less than the monotonic clock between two records
# was set (NTP at boot on a device without a real-time clock, an operator): a jump.
CLOCK_JUMP_S = 2.0
# How long a result published directly (storage failing) may wait for its PUBACK.
DIRECT_TIMEOUT_S = 10.0
# After a failed read or removal, wait this long before trying the disk again.
RETRY_S = 1.0

# Builds a payload from the fields every sequenced payload shares, passed as keywords:
# record_id, seq, device, site, ts, clock_jump.
PayloadFactory = Callable[..., SequencedPayload]


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One record to store: its topic, how to build its payload, and an optional ``latest``
    topic on which the newest payload is also published at once (retained, QoS 0) for live
    consumers, ahead of any backlog."""

    topic: str
    build: PayloadFactory
    latest: str | None = None


def _uptime_clock() -> float:
    # CLOCK_BOOTTIME keeps counting through a suspend, so a suspend is not taken for a clock jump.
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


class ReplayPacer:
    """How many records the forwarder may send now: a backlog goes out at most ``rate`` records/s
    (in bursts of up to ``burst``) faster than new records are made.

    Records stored while the uplink is up are live: each is credited at once, so live results are
    never held back by pacing, however fast they come. What was stored during an outage, or
    before a restart, is drained by the time-based tokens alone.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._credit = 0
        self._at = clock()

    def credit(self, count: int) -> None:
        """``count`` live records were stored: let as many more go out."""
        if self.rate > 0:
            self._credit += count

    def available(self) -> int:
        if self.rate <= 0:
            return self.burst
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return int(self._tokens) + self._credit

    def take(self, count: int) -> None:
        if self.rate > 0:
            from_credit = min(count, self._credit)
            self._credit -= from_credit
            self._tokens -= count - from_credit

    def wait_s(self) -> float:
        return max(0.001, (1 - self._tokens) / self.rate) if self.rate > 0 else 0.0


class Outbox:
    """Store, forward, pace, bound and recover. Construct (no I/O), ``await start()``, run
    :meth:`run` as a task, :meth:`store` records, ``await drain()`` then ``await close()``.
    """

    def __init__(
        self,
        open_buffer: Callable[[], Buffer],
        sink: Sink,
        health: Health,
        *,
        device: str,
        site: str,
        alerts_topic: str,
        max_inflight: int = 200,
        replay_rate: float = 0.0,
        fallback: Callable[[], Buffer] | None = None,
        wall_clock: Callable[[], float] = time.time,
        uptime_clock: Callable[[], float] = _uptime_clock,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if replay_rate < 0:
            raise ValueError("replay_rate must not be negative")
        self._open_buffer = open_buffer
        self._fallback = fallback
        self._sink = sink
        self._health = health
        self._device = device
        self._site = site
        self._alerts_topic = alerts_topic
        self._max_inflight = max_inflight
        self._pacer = ReplayPacer(replay_rate, max_inflight)
        self._wall_clock = wall_clock
        self._uptime_clock = uptime_clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self.buffer: Buffer | None = None
        self._inflight: dict[int, asyncio.Future[None]] = {}
        self._acked: list[int] = []
        self._stored = asyncio.Event()  # new records wait
        self._room = asyncio.Event()  # a send in flight completed
        self._acked_ready = asyncio.Event()  # confirmed records wait for removal
        self._removed = asyncio.Event()  # records were removed (space freed)
        self._rewind_needed = False
        self._last_clock: tuple[float, float] | None = None
        self._clock_behind_at_start = False
        self._failing_since: float | None = None
        self._paused_since: float | None = None

    @classmethod
    def from_config(
        cls, config: AgentConfig, sink: Sink, health: Health, *, alerts_topic: str
    ) -> Outbox:
        """The agent's outbox: a SQLite buffer at the configured path, caps and pacing."""
        settings = config.outbox
        # pause_sources is the outbox waiting for space; the buffer itself refuses the batch.
        overflow = "refuse" if settings.overflow == "pause_sources" else settings.overflow
        limits = BufferLimits(settings.max_rows, settings.max_bytes, overflow)
        path: Path = config.outbox_path
        return cls(
            partial(SqliteBuffer, path, limits, synchronous=settings.synchronous),
            sink,
            health,
            device=config.device.id,
            site=config.device.site,
            alerts_topic=alerts_topic,
            max_inflight=settings.max_inflight,
            replay_rate=settings.replay_rate,
            fallback=partial(MemoryBuffer, limits),
        )

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the buffer (a damaged file is moved aside, with an alert).

        When the storage cannot be opened at all (a read-only or missing disk), records are kept
        in the fallback buffer (memory) with an alert, so the agent keeps serving instead of
        restarting in a loop; without a fallback this raises OutboxError.
        """
        health = self._health
        unavailable: OutboxError | None = None
        try:
            buffer = await self._on_db(self._open_buffer)
        except OutboxError as err:
            if self._fallback is None:
                raise
            unavailable = err
            logger.error(
                "Outbox storage cannot be opened: %s. Records are kept in memory only (lost if "
                "the agent stops) until the agent is restarted with working storage.",
                err,
            )
            health.count("outbox.open_errors")
            buffer = self._fallback()
        self.buffer = buffer
        health.gauge("outbox.rows", lambda: buffer.rows)
        health.gauge("outbox.bytes", lambda: buffer.size_bytes)
        health.gauge("outbox.inflight", lambda: len(self._inflight))
        health.gauge("outbox.paused", lambda: float(self._paused_since is not None))
        health.gauge("outbox.storage_failing", lambda: float(self._failing_since is not None))
        previous = getattr(buffer, "previous_wall_time", None)
        if previous is not None and self._wall_clock() < previous:
            self._clock_behind_at_start = True
        moved = getattr(buffer, "moved_aside", None)
        if moved is not None:
            health.count("outbox.corrupt_files")
            await self.alert(
                "outbox_corrupt",
                f"the outbox database was damaged; moved aside to {moved}, a new one started",
                {"moved_to": str(moved)},
            )
        if unavailable is not None:
            await self.alert(
                "outbox_unavailable",
                f"the outbox storage cannot be opened ({unavailable}); records kept in memory",
            )
        if buffer.rows:
            logger.info("Outbox holds %d records from before; replaying them", buffer.rows)
            self._stored.set()

    async def run(self) -> None:
        """Forward records until cancelled: a window of sends in flight, removals in batches."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._forward(), name="outbox-forward")
            group.create_task(self._remove(), name="outbox-remove")

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the outbox to empty while the sink is ready; True if empty.

        Records left are kept on disk and forwarded after the next start.
        """
        buffer = self._require_buffer()
        deadline = time.monotonic() + timeout
        while buffer.rows and self._sink.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._removed.clear()
            self._stored.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._removed.wait(), remaining)
        return buffer.rows == 0

    async def close(self) -> None:
        """Release the buffer. Called once, after :meth:`run` ended."""
        if self.buffer is not None:
            await self._on_db(self.buffer.close)
        self._executor.shutdown(wait=True)

    # -------------------------------------------------------------------------------- storing

    @property
    def paused(self) -> bool:
        """True while the outbox is full under ``pause_sources``: stores wait for space."""
        return self._paused_since is not None

    async def wait_for_space(self) -> None:
        """Return once the outbox is not paused (for a source that wants to hold its input)."""
        while self._paused_since is not None:
            self._removed.clear()
            await self._removed.wait()

    async def store(self, items: Sequence[OutboxItem]) -> None:
        """Number, encode and store ``items`` in one transaction; when it returns they are durable.

        Under ``pause_sources`` a full outbox makes this wait until the forwarder freed space.
        While the storage fails (disk full, damaged file) the records are published directly
        instead and this returns once the broker acknowledged them; it raises OutboxError when
        they could be neither stored nor delivered (the caller keeps its inputs unacknowledged).
        """
        if not items:
            return
        buffer = self._require_buffer()
        jump = self._clock_jumped()
        ts = self._wall_clock()
        # Numbered and stored in one trip to the outbox thread; a refusal comes back as a value.
        records, added = await self._on_db(partial(self._number_and_add, buffer, items, ts, jump))
        while isinstance(added, BufferFull):
            await self._pause(buffer)
            added = await self._on_db(partial(self._add, buffer, records))
        if isinstance(added, OutboxError):
            self._storage_failed(added, len(records))
            await self._publish_directly(records)
            self._publish_latest(items, records)
            return
        if self._sink.ready:
            self._pacer.credit(added.stored)
        self._stored_ok(added, buffer)
        self._publish_latest(items, records)

    async def alert(self, name: str, message: str, details: dict[str, str] | None = None) -> None:
        """Store a device alert (for example a damaged outbox) on the alerts topic."""
        build = partial(
            DeviceAlertPayload, alert=name, level="alert", message=message, details=details or {}
        )
        try:
            await self.store([OutboxItem(self._alerts_topic, build)])
        except OutboxError as err:
            self._health.problem_once(f"alert-{name}", "Alert %s not sent: %s", name, err)

    @staticmethod
    def _add(buffer: Buffer, records: list[tuple[int, PendingRecord]]) -> AddResult | OutboxError:
        """On the outbox thread: store ``records``; a refusal or failure is returned, not raised."""
        try:
            return buffer.add(records)
        except OutboxError as err:  # BufferFull included
            return err

    def _number_and_add(
        self, buffer: Buffer, items: Sequence[OutboxItem], ts: float, jump: bool
    ) -> tuple[list[tuple[int, PendingRecord]], AddResult | OutboxError]:
        records = self._number(buffer, items, ts, jump)
        return records, self._add(buffer, records)

    def _number(
        self, buffer: Buffer, items: Sequence[OutboxItem], ts: float, jump: bool
    ) -> list[tuple[int, PendingRecord]]:
        """On the outbox thread: reserve numbers and build each payload with its number."""
        records = []
        # Random 128-bit ids as uuid4().hex would make them, drawn in one call for the batch
        # (uuid4 per record was a third of the cost of storing a result).
        ids = os.urandom(16 * len(items)).hex()
        for index, (seq, item) in enumerate(zip(buffer.reserve(len(items)), items, strict=True)):
            payload = item.build(
                record_id=ids[32 * index : 32 * index + 32],
                seq=seq,
                device=self._device,
                site=self._site,
                ts=ts,
                clock_jump=jump,
            )
            records.append((seq, PendingRecord(item.topic, payload.to_json())))
        return records

    def _clock_jumped(self) -> bool:
        """Whether the wall clock jumped since the previous store (or was behind at start)."""
        wall, uptime = self._wall_clock(), self._uptime_clock()
        last, self._last_clock = self._last_clock, (wall, uptime)
        if last is None:
            jumped = self._clock_behind_at_start
        else:
            jumped = abs((wall - last[0]) - (uptime - last[1])) > CLOCK_JUMP_S
        if jumped:
            self._health.count("outbox.clock_jumps")
            logger.warning(
                "The wall clock jumped (now %.3f); records carry clock_jump and are ordered by seq",
                wall,
            )
        return jumped

    def _stored_ok(self, added: AddResult, buffer: Buffer) -> None:
        health = self._health
        health.count("outbox.stored", added.stored)
        if added.dropped_oldest:
            health.count("outbox.dropped_oldest", added.dropped_oldest)
            health.problem_once(
                "outbox-drop-oldest",
                "Outbox full (%d records, %d bytes): dropping the oldest records (counted in "
                "outbox.dropped_oldest)",
                buffer.rows,
                buffer.size_bytes,
            )
        if added.dropped_newest:
            health.count("outbox.dropped_newest", added.dropped_newest)
            health.problem_once(
                "outbox-drop-newest",
                "Outbox full (%d records, %d bytes): dropping new records (counted in "
                "outbox.dropped_newest)",
                buffer.rows,
                buffer.size_bytes,
            )
        if self._failing_since is not None:
            logger.warning(
                "Outbox %s stores again after %.1f s",
                getattr(buffer, "path", "buffer"),
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        if self._paused_since is not None:
            logger.warning(
                "Outbox has room again: sources resumed after %.1f s",
                time.monotonic() - self._paused_since,
            )
            self._paused_since = None
        self._stored.set()

    async def _pause(self, buffer: Buffer) -> None:
        if self._paused_since is None:
            self._paused_since = time.monotonic()
            self._health.count("outbox.pauses")
            logger.warning(
                "Outbox full (%d records, %d bytes): sources paused until records are delivered",
                buffer.rows,
                buffer.size_bytes,
            )
        self._removed.clear()
        self._stored.set()  # make sure the forwarder is working on it
        await self._removed.wait()

    def _storage_failed(self, err: OutboxError, count: int) -> None:
        self._health.count("outbox.store_errors", count)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            logger.error(
                "Outbox cannot store records: %s. Publishing results directly (QoS 1, not "
                "stored) while this lasts.",
                err,
            )

    async def _publish_directly(self, records: list[tuple[int, PendingRecord]]) -> None:
        sink = self._sink
        if not sink.ready:
            raise OutboxError(
                f"{len(records)} records neither stored (the outbox fails) nor delivered "
                "(the uplink is down)"
            )
        futures = [
            sink.send(record.topic, record.payload, qos=record.qos, retain=record.retain)
            for _seq, record in records
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*futures), DIRECT_TIMEOUT_S)
        except (NotReadyError, TimeoutError) as err:
            raise OutboxError(
                f"{len(records)} records neither stored nor confirmed by the broker: {err}"
            ) from err
        self._health.count("outbox.direct", len(records))

    def _publish_latest(
        self, items: Sequence[OutboxItem], records: list[tuple[int, PendingRecord]]
    ) -> None:
        """The newest payload of each ``latest`` topic, at once, retained, QoS 0."""
        if not self._sink.ready:
            return
        newest: dict[str, bytes] = {}
        for item, (_seq, record) in zip(items, records, strict=True):
            if item.latest is not None:
                newest[item.latest] = record.payload
        for topic, payload in newest.items():
            self._sink.send(topic, payload, qos=0, retain=True)
        self._health.count("outbox.latest", len(newest))

    # ----------------------------------------------------------------------------- forwarding

    async def _forward(self) -> None:
        buffer = self._require_buffer()
        sink = self._sink
        pacer = self._pacer
        while True:
            if not sink.ready:
                await sink.wait_ready()
            room = self._max_inflight - len(self._inflight)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            if self._rewind_needed:
                if self._inflight:  # rewind only once nothing is in flight, or it goes twice
                    self._room.clear()
                    await self._room.wait()
                    continue
                await asyncio.sleep(RETRY_S)
                await self._on_db(buffer.rewind)
                self._rewind_needed = False
            allowed = min(room, pacer.available())
            if allowed <= 0:
                await asyncio.sleep(pacer.wait_s())
                continue
            self._stored.clear()
            try:
                batch = await self._on_db(partial(buffer.begin, allowed))
            except OutboxError as err:
                self._health.problem_once("outbox-read", "Outbox unreadable: %s", err)
                self._health.count("outbox.read_errors")
                await asyncio.sleep(RETRY_S)
                continue
            if not batch:
                await self._stored.wait()
                continue
            pacer.take(len(batch))
            for record in batch:
                self._send(record)

    def _send(self, record: OutboxRecord) -> None:
        future = self._sink.send(record.topic, record.payload, qos=record.qos, retain=record.retain)
        self._inflight[record.seq] = future
        future.add_done_callback(partial(self._sent, record))

    def _sent(self, record: OutboxRecord, future: asyncio.Future[None]) -> None:
        self._inflight.pop(record.seq, None)
        self._room.set()
        if future.cancelled():
            self._rewind_needed = True
            return
        error = future.exception()
        if error is None:
            self._health.count("outbox.delivered")
            self._acked.append(record.seq)
            self._acked_ready.set()
        elif isinstance(error, PublishRefused):
            # Retrying a refusal (not authorized, bad topic) would block the outbox for good.
            self._health.count("outbox.refused")
            self._health.problem_once(
                f"outbox-refused-{record.topic}",
                "Broker refused record %d on %s (%s); it is removed, counted in outbox.refused",
                record.seq,
                record.topic,
                error.reason,
            )
            self._acked.append(record.seq)
            self._acked_ready.set()
        else:
            self._health.count("outbox.publish_failures")
            self._rewind_needed = True

    async def _remove(self) -> None:
        buffer = self._require_buffer()
        while True:
            await self._acked_ready.wait()
            self._acked_ready.clear()
            seqs, self._acked = self._acked, []
            try:
                await self._on_db(partial(buffer.accept, seqs))
            except OutboxError as err:
                self._acked = seqs + self._acked
                self._health.problem_once("outbox-remove", "Outbox removal failed: %s", err)
                await asyncio.sleep(RETRY_S)
                self._acked_ready.set()
                continue
            self._removed.set()

    # -------------------------------------------------------------------------------- helpers

    def _require_buffer(self) -> Buffer:
        if self.buffer is None:
            raise RuntimeError("Outbox.start() first")
        return self.buffer

    async def _on_db(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)
