"""Staged rollouts: planning a rollout, and the driver that moves it from stage to stage.

A rollout sends every device of its current stage a retained desired state, answers the acks
(an offer and chunks to a device that needs the bundle), and when every device of the stage has
finished, checks the gates. A passed gate opens the next stage; a failed one halts the rollout and
rolls back every device the rollout already moved. Operators (the CLI) only write requests into
the registry (pause, resume, abort, rollback); ``fleet serve`` acts on them on its next tick.

All state lives in the registry, so several ``fleet serve`` workers can drive the same rollouts:
transitions that must happen once are compare-and-set updates, and only the winner publishes.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.contracts.payloads import (
    AckPayload,
    DesiredStateCommand,
    Payload,
    RollbackCommand,
)
from edge_agent.contracts.topics import DeviceTopics
from fleet.registry import (
    DeviceRecord,
    ModelRecord,
    Registry,
    RegistryError,
    RolloutDevice,
    RolloutRecord,
)
from fleet.transfer import DEFAULT_CHUNK_SIZE, BundleChunks, parse_have_chunks

__all__ = [
    "ACTIVE_STATES",
    "FINAL_DEVICE_STATES",
    "Gates",
    "Publication",
    "RolloutDriver",
    "RolloutError",
    "Selector",
    "plan_rollout",
]

logger = logging.getLogger(__name__)

# Rollout states. "rolling_back" and "aborting" are operator requests the driver carries out.
ACTIVE_STATES = ("running", "paused", "rolling_back", "aborting")
FINISHED_STATES = ("completed", "halted", "aborted", "rolled_back")

# Device progress: pending -> sent -> transferring -> activating -> active -> done, or failed,
# timed_out, self_rolled_back, offline (waiting for the device); after a halt or an operator
# rollback: reverting -> reverted; after an abort: cancelled.
FINAL_DEVICE_STATES = frozenset(
    {"done", "failed", "timed_out", "self_rolled_back", "offline", "reverted", "cancelled"}
)
CANARY_STAGE = "canary"
MOVED_STATES = frozenset({"active", "done"})
IN_FLIGHT_STATES = frozenset({"sent", "transferring", "activating"})
# Acks that ask for the bundle, or for more of it: the fleet answers with an offer or chunks.
_TRANSFER_STEPS = frozenset({"need_bundle", "offer", "chunk"})
_ACTIVATION_STEPS = frozenset({"verified", "features", "loaded", "warmed", "golden", "shadow"})


class RolloutError(Exception):
    """A rollout cannot be started or changed (the message says what to fix)."""


@dataclass(frozen=True)
class Gates:
    """What must hold before the next stage starts.

    ``drift_margin``: the new version's mean PSI over the stage's devices may exceed the previous
    version's by at most this much (negative disables the drift gate). ``soak_s``: wait this long
    after the stage finished before judging it, so that health and drift data come in.
    ``require_online``: every device that took the version must still be online.
    """

    drift_margin: float = 0.1
    soak_s: float = 0.0
    require_online: bool = True
    grace_s: float | None = None  # the device's grace period; None: the agent's own default

    def to_dict(self) -> dict[str, float]:
        values = {
            "drift_margin": self.drift_margin,
            "soak_s": self.soak_s,
            "require_online": float(self.require_online),
        }
        if self.grace_s is not None:
            values["grace_s"] = self.grace_s
        return values

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> Gates:
        grace = values.get("grace_s")
        return cls(
            drift_margin=float(values.get("drift_margin", 0.1)),
            soak_s=float(values.get("soak_s", 0.0)),
            require_online=bool(values.get("require_online", 1.0)),
            grace_s=None if grace is None else float(grace),
        )


@dataclass(frozen=True)
class Selector:
    """Which devices a rollout targets: ``all``, or ``key=value`` terms joined by commas.

    Keys: ``site``, ``line``, ``tag`` (all must match) and ``device`` (any of those named).
    Example: ``site=plant-a,line=line-2`` or ``device=press-01,device=press-02``.
    """

    site: str | None = None
    line: str | None = None
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        if text.strip() == "all":
            return cls()
        site = line = None
        tags: list[str] = []
        devices: list[str] = []
        for term in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = term.partition("=")
            if not sep or not value:
                raise RolloutError(f"selector term {term!r} is not key=value (or use 'all')")
            if key == "site":
                site = value
            elif key == "line":
                line = value
            elif key == "tag":
                tags.append(value)
            elif key == "device":
                devices.append(value)
            else:
                raise RolloutError(
                    f"selector key {key!r} is unknown: use site, line, tag or device"
                )
        if site is None and line is None and not tags and not devices:
            raise RolloutError("the selector is empty: name site=, line=, tag=, device= or 'all'")
        return cls(site, line, tuple(tags), tuple(devices))

    def matches(self, device: DeviceRecord) -> bool:
        return (
            (self.site is None or device.site == self.site)
            and (self.line is None or device.line == self.line)
            and all(tag in device.tags for tag in self.tags)
            and (not self.devices or device.id in self.devices)
        )


def _stage_plan(
    devices: list[DeviceRecord], canary: int, waves: Sequence[float]
) -> list[tuple[str, list[DeviceRecord]]]:
    if canary < 0:
        raise RolloutError("--canary must be 0 or more")
    if not waves or any(b <= a for a, b in itertools.pairwise(waves)):
        raise RolloutError("--waves must be increasing percentages, e.g. 10,50,100")
    if waves[0] <= 0 or waves[-1] != 100:
        raise RolloutError("--waves must be above 0 and end at 100 so every device is reached")
    stages: list[tuple[str, list[DeviceRecord]]] = []
    taken = min(canary, len(devices))
    if taken:
        stages.append((CANARY_STAGE, devices[:taken]))
    for percent in waves:
        upto = max(taken, math.ceil(len(devices) * percent / 100))
        if upto > taken:
            stages.append((f"wave {percent:g}%", devices[taken:upto]))
            taken = upto
    return stages


def plan_rollout(
    registry: Registry,
    model: str,
    version: str,
    selector: str,
    *,
    canary: int = 1,
    waves: Sequence[float] = (100,),
    gates: Gates | None = None,
    timeout_s: float = 600.0,
    now: float | None = None,
) -> RolloutRecord:
    """Create a running rollout of ``model@version`` to the devices ``selector`` names.

    The model must be published; devices are staged in id order: ``canary`` first, then each wave
    up to its cumulative percentage of all targeted devices.
    """
    if registry.model(model, version) is None:
        raise RolloutError(
            f"{model}@{version} is not published: run `fleet models publish BUNDLE` first"
        )
    if timeout_s <= 0:
        raise RolloutError("--timeout must be positive")
    chosen = Selector.parse(selector)
    targets = [device for device in registry.devices() if chosen.matches(device)]
    if not targets:
        raise RolloutError(
            f"no known device matches {selector!r} (see `fleet devices list`; devices appear "
            "once `fleet serve` has heard from them)"
        )
    busy = {
        entry.device
        for rollout in registry.rollouts(ACTIVE_STATES)
        for entry in registry.rollout_devices(rollout.id)
    }
    clash = sorted(busy & {device.id for device in targets})
    if clash:
        raise RolloutError(
            f"{', '.join(clash[:5])} already take part in an unfinished rollout: "
            "abort or finish it first"
        )
    stamp = time.time() if now is None else now
    stages = _stage_plan(targets, canary, waves)
    rollout = RolloutRecord(
        id=uuid.uuid4().hex[:8],
        model=model,
        version=version,
        selector=selector,
        stages=[name for name, _ in stages],
        gates=(gates or Gates()).to_dict(),
        timeout_s=timeout_s,
        created=stamp,
        updated=stamp,
    )
    entries = [
        RolloutDevice(rollout.id, device.id, device.site, index, updated=stamp)
        for index, (_name, members) in enumerate(stages)
        for device in members
    ]
    registry.create_rollout(rollout, entries)
    logger.info(
        "Rollout %s of %s@%s to %d device(s) in %d stage(s)",
        rollout.id,
        model,
        version,
        len(entries),
        len(stages),
    )
    return rollout


@dataclass(frozen=True)
class Publication:
    """One message the driver wants sent (at QoS 1)."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class _Outbox:
    prefix: str
    items: list[Publication] = field(default_factory=list)

    def send(self, site: str, device: str, kind: str, payload: Payload | None) -> None:
        topics = DeviceTopics(self.prefix, site, device)
        topic = {"desired": topics.desired, "cmd": topics.cmd, "transfer": topics.transfer}[kind]
        # An empty retained payload clears the retained desired state at the broker.
        body = b"" if payload is None else payload.to_json()
        self.items.append(Publication(topic, body, retain=kind == "desired"))


def _cmd_id(rollout_id: str, kind: str, device: str) -> str:
    return f"{rollout_id}:{kind}:{device}"


def _is_canary(rollout: RolloutRecord) -> bool:
    return rollout.stages[rollout.stage] == CANARY_STAGE


class RolloutDriver:
    """Moves rollouts along. ``on_ack`` for each (new) ack, ``tick`` every second or so; both
    return the messages to publish. Not thread-safe: one per ``fleet serve`` worker."""

    def __init__(
        self,
        registry: Registry,
        prefix: str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        clock: Callable[[], float] = time.time,
        drift_score: Callable[[Registry, RolloutRecord, list[str], float], str | None]
        | None = None,
    ) -> None:
        self.registry = registry
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.clock = clock
        # Judges drift for a stage: returns why it fails, or None. Injected so the drift
        # arithmetic stays in one place (fleet.drift).
        self._drift_score = drift_score
        self._bundles: dict[tuple[str, str], BundleChunks] = {}

    # ------------------------------------------------------------------------------- acks

    def on_ack(self, ack: AckPayload) -> list[Publication]:
        """Record a device's ack against its rollout and answer it."""
        out = _Outbox(self.prefix)
        found = self._find(ack)
        if found is None:
            return out.items
        rollout, entry = found
        try:
            self._handle_ack(rollout, entry, ack, out)
        except RegistryError:
            logger.exception("Rollout %s: cannot record the ack of %s", rollout.id, ack.device)
        return out.items

    def _find(self, ack: AckPayload) -> tuple[RolloutRecord, RolloutDevice] | None:
        rollout_id = ack.cmd_id.split(":", 1)[0] if ":" in ack.cmd_id else None
        entries = self.registry.rollout_devices(rollout_id, device=ack.device)
        if not entries and rollout_id is not None:
            entries = self.registry.rollout_devices(device=ack.device)
        # The newest rollout this device takes part in, for this model.
        for entry in reversed(entries):
            rollout = self.registry.rollout(entry.rollout_id)
            if rollout is not None and (ack.model is None or ack.model == rollout.model):
                return rollout, entry
        return None

    def _handle_ack(
        self, rollout: RolloutRecord, entry: RolloutDevice, ack: AckPayload, out: _Outbox
    ) -> None:
        registry = self.registry
        now = self.clock()
        ours = ack.version is None or ack.version == rollout.version
        reverting = entry.state in {"reverting", "reverted"}
        previous = ack.previous_version or entry.previous_version
        if reverting:
            self._handle_revert_ack(rollout, entry, ack, out, now=now, ours=ours)
            return
        if not ours:
            return
        changes: dict[str, object] = {"step": ack.step, "updated": now}
        if previous is not None and previous != rollout.version:
            changes["previous_version"] = previous
        if not ack.ok and ack.step != "chunk":  # a damaged chunk is sent again, not a failure
            changes.update(state="failed", reason=f"{ack.step}: {ack.reason or 'refused'}")
            logger.warning(
                "Rollout %s: %s refused %s@%s at %s: %s",
                rollout.id, entry.device, rollout.model, rollout.version, ack.step, ack.reason,
            )  # fmt: skip
        elif ack.step == "rolled_back":
            changes.update(state="self_rolled_back", reason=ack.reason or "rolled itself back")
        elif ack.step in _TRANSFER_STEPS:
            changes["state"] = "transferring"
            self._transfer(rollout, entry, ack, out, now=now, version=rollout.version)
        elif ack.step == "received" or ack.step in _ACTIVATION_STEPS:
            changes["state"] = "activating"
        elif ack.step == "active":
            # Already running this version (the desired state asked for what it has): done.
            already = ack.previous_version == rollout.version or ack.details.get("already") == 1
            changes["state"] = "done" if already else "active"
        elif ack.step == "kept":
            changes["state"] = "done"
        late = {"cancelled", "timed_out"}  # a late device may still finish moving
        if entry.state == "offline" and "state" in changes:
            changes["sent_at"] = now  # it is back: its timeout starts now
        elif entry.state in FINAL_DEVICE_STATES - late or (
            entry.state in late and changes.get("state") not in MOVED_STATES
        ):
            changes.pop("state", None)  # a late ack does not undo a verdict
        registry.update_rollout_device(rollout.id, entry.device, expect=None, **changes)
        if changes.get("state") in MOVED_STATES:
            registry.set_desired(entry.device, rollout.model, rollout.version)
            if rollout.state in {"halted", "rolled_back", "rolling_back"}:
                # It finished moving after the rollout stopped: take it back as well.
                self._revert(rollout, entry.device, entry.site, previous, out)

    def _handle_revert_ack(
        self,
        rollout: RolloutRecord,
        entry: RolloutDevice,
        ack: AckPayload,
        out: _Outbox,
        *,
        now: float,
        ours: bool,
    ) -> None:
        registry = self.registry
        # Back on the previous version (or told us it rolled back): the revert is done.
        if ack.ok and (ack.step == "rolled_back" or (not ours and ack.step in {"active", "kept"})):
            registry.update_rollout_device(
                rollout.id, entry.device, state="reverted", step=ack.step, updated=now
            )
        elif not ours and ack.step in _TRANSFER_STEPS:
            # Its store no longer holds the version it goes back to (it keeps only a few):
            # send that bundle as for any rollout, or the revert would wait forever.
            device = registry.device(entry.device)
            target = device.desired_version if device is not None else None
            if target is not None and target == ack.version:  # only what the revert asked for
                registry.update_rollout_device(rollout.id, entry.device, step=ack.step, updated=now)
                self._transfer(rollout, entry, ack, out, now=now, version=target)
        elif not ack.ok:
            registry.update_rollout_device(
                rollout.id, entry.device, step=ack.step, updated=now,
                reason=f"revert: {ack.step}: {ack.reason or 'refused'}",
            )  # fmt: skip

    def _transfer(
        self,
        rollout: RolloutRecord,
        entry: RolloutDevice,
        ack: AckPayload,
        out: _Outbox,
        *,
        now: float,
        version: str,
    ) -> None:
        """Answer a transfer step of ``entry``'s device with ``version``'s offer or chunks."""
        bundle = self._bundle(rollout.model, version)
        if bundle is None:
            return
        if ack.step == "need_bundle":
            kind = "offer" if version == rollout.version else "revert-offer"
            cmd_id = _cmd_id(rollout.id, kind, entry.device)
            out.send(entry.site, entry.device, "cmd", bundle.offer(cmd_id, now))
        elif ack.step == "offer":
            held = parse_have_chunks(ack.details.get("have_chunks"))
            for index in bundle.missing(held):
                out.send(entry.site, entry.device, "transfer", bundle.chunk(index))
        elif ack.step == "chunk" and not ack.ok:
            bad = ack.details.get("index")
            if isinstance(bad, int) and not isinstance(bad, bool) and 0 <= bad < bundle.total:
                out.send(entry.site, entry.device, "transfer", bundle.chunk(bad))

    def _bundle(self, model: str, version: str) -> BundleChunks | None:
        key = (model, version)
        if key not in self._bundles:
            record = self.registry.model(model, version)
            if record is None:
                logger.error("Model %s@%s is not in the registry: cannot send it", model, version)
                return None
            try:
                self._bundles[key] = BundleChunks.from_file(
                    Path(record.path), model, version, self.chunk_size
                )
            except OSError as err:
                logger.error("Cannot read the bundle of %s@%s: %s", model, version, err)
                return None
        return self._bundles[key]

    # ------------------------------------------------------------------------------- tick

    def tick(self) -> list[Publication]:
        """Carry out operator requests, send stages, time devices out, judge finished stages."""
        out = _Outbox(self.prefix)
        for rollout in self.registry.rollouts(ACTIVE_STATES):
            try:
                self._tick_rollout(rollout, out)
            except RegistryError:
                logger.exception("Rollout %s: registry error; trying again next tick", rollout.id)
        return out.items

    def _tick_rollout(self, rollout: RolloutRecord, out: _Outbox) -> None:
        if rollout.state == "rolling_back":
            if self.registry.update_rollout(
                rollout.id, expect={"state": "rolling_back"}, state="rolled_back"
            ):
                self._revert_all(rollout, out)
            return
        if rollout.state == "aborting":
            if self.registry.update_rollout(
                rollout.id, expect={"state": "aborting"}, state="aborted"
            ):
                self._cancel_unfinished(rollout, out)
            return
        if rollout.state != "running":
            return
        now = self.clock()
        entries = self.registry.rollout_devices(rollout.id)
        stage = [entry for entry in entries if entry.stage == rollout.stage]
        devices = {device.id: device for device in self.registry.devices()}
        # The canary is the evidence the waves wait for: an offline canary device holds its
        # stage until it answers or times out, and its timeout fails the gate. A wave does not
        # wait for an offline device; the retained desired state brings it along later.
        canary = _is_canary(rollout)
        waiting = IN_FLIGHT_STATES | {"offline"} if canary else IN_FLIGHT_STATES
        for entry in stage:
            device = devices.get(entry.device)
            online = device is not None and device.state == "online"
            if entry.state == "pending":
                self._send_desired(rollout, entry, online, now, out)
            elif (
                entry.state in waiting
                and entry.sent_at is not None
                and now - entry.sent_at > rollout.timeout_s
            ):
                verdict = "timed_out" if online or canary else "offline"
                reason = f"no result within {rollout.timeout_s:g} s"
                self.registry.update_rollout_device(
                    rollout.id, entry.device, expect={"state": entry.state}, state=verdict,
                    reason=reason if online else f"offline: {reason}", updated=now,
                )  # fmt: skip
        stage = [e for e in self.registry.rollout_devices(rollout.id) if e.stage == rollout.stage]
        finished = FINAL_DEVICE_STATES - {"offline"} if canary else FINAL_DEVICE_STATES
        if not all(entry.state in finished for entry in stage):
            return
        last = max((entry.updated for entry in stage), default=now)
        gates = Gates.from_dict(rollout.gates)
        if now - last < gates.soak_s:
            return
        failure = self._judge(rollout, stage, devices, gates, now)
        if failure is not None:
            self._halt(rollout, failure, out)
        elif rollout.stage + 1 >= len(rollout.stages):
            if self.registry.update_rollout(
                rollout.id, expect={"state": "running", "stage": rollout.stage}, state="completed"
            ):
                logger.info("Rollout %s completed", rollout.id)
        elif self.registry.update_rollout(
            rollout.id, expect={"state": "running", "stage": rollout.stage}, stage=rollout.stage + 1
        ):
            logger.info(
                "Rollout %s: %s passed its gates; starting %s",
                rollout.id, rollout.stages[rollout.stage], rollout.stages[rollout.stage + 1],
            )  # fmt: skip

    def _send_desired(
        self, rollout: RolloutRecord, entry: RolloutDevice, online: bool, now: float, out: _Outbox
    ) -> None:
        model = self.registry.model(rollout.model, rollout.version)
        if model is None:
            return
        # Offline devices get the retained desired state too; they converge when they return.
        state = "sent" if online else "offline"
        if not self.registry.update_rollout_device(
            rollout.id, entry.device, expect={"state": "pending"}, state=state, sent_at=now,
            updated=now,
        ):  # fmt: skip
            return  # another worker sent it
        out.send(entry.site, entry.device, "desired", self._desired(rollout, entry, model, now))

    @staticmethod
    def _desired(
        rollout: RolloutRecord, entry: RolloutDevice, model: ModelRecord, now: float
    ) -> DesiredStateCommand:
        return DesiredStateCommand(
            cmd_id=_cmd_id(rollout.id, "desired", entry.device),
            ts=now,
            model=model.name,
            version=model.version,
            sha256=model.sha256,
            size=model.size,
            rollout_id=rollout.id,
            grace_s=Gates.from_dict(rollout.gates).grace_s,
        )

    def _judge(
        self,
        rollout: RolloutRecord,
        stage: list[RolloutDevice],
        devices: dict[str, DeviceRecord],
        gates: Gates,
        now: float,
    ) -> str | None:
        """Why the finished stage fails its gates, or None when it passes."""
        name = rollout.stages[rollout.stage]
        failed = [e for e in stage if e.state in {"failed", "timed_out"}]
        if failed:
            first = failed[0]
            return (
                f"{name}: {len(failed)} device(s) did not take the version "
                f"({first.device}: {first.reason or first.state})"
            )
        rolled = [e for e in stage if e.state == "self_rolled_back"]
        if rolled:
            return f"{name}: {rolled[0].device} rolled itself back ({rolled[0].reason})"
        done = [e for e in stage if e.state == "done"]
        if gates.require_online:
            gone = [
                e.device
                for e in done
                if e.device not in devices or devices[e.device].state != "online"
            ]
            if gone:
                return f"{name}: health: {', '.join(gone)} went offline after taking the version"
        if gates.drift_margin >= 0 and self._drift_score is not None and done:
            return self._drift_score(
                self.registry, rollout, [e.device for e in done], gates.drift_margin
            )
        return None

    # ---------------------------------------------------------------- halting, rolling back

    def _halt(self, rollout: RolloutRecord, reason: str, out: _Outbox) -> None:
        if not self.registry.update_rollout(
            rollout.id, expect={"state": "running"}, state="halted", reason=reason
        ):
            return
        logger.warning("Rollout %s halted: %s", rollout.id, reason)
        self._revert_all(rollout, out)

    def _revert_all(self, rollout: RolloutRecord, out: _Outbox) -> None:
        """Take back every device this rollout moved; stop the ones still on their way."""
        for entry in self.registry.rollout_devices(rollout.id):
            if entry.state in MOVED_STATES:
                self._revert(rollout, entry.device, entry.site, entry.previous_version, out)
            elif entry.state in IN_FLIGHT_STATES or entry.state == "offline":
                self._clear_desired(rollout, entry, out)
            elif entry.state in {"failed", "timed_out", "self_rolled_back"}:
                # Its verdict stays; the retained desired state must not ask again.
                out.send(entry.site, entry.device, "desired", None)

    def _cancel_unfinished(self, rollout: RolloutRecord, out: _Outbox) -> None:
        for entry in self.registry.rollout_devices(rollout.id):
            if entry.state not in FINAL_DEVICE_STATES or entry.state == "offline":
                self._clear_desired(rollout, entry, out)

    def _clear_desired(self, rollout: RolloutRecord, entry: RolloutDevice, out: _Outbox) -> None:
        self.registry.update_rollout_device(
            rollout.id, entry.device, state="cancelled", reason=f"rollout {rollout.state}"
        )
        out.send(entry.site, entry.device, "desired", None)

    def _revert(
        self,
        rollout: RolloutRecord,
        device: str,
        site: str,
        previous: str | None,
        out: _Outbox,
    ) -> None:
        """Put ``device`` back on ``previous``: as its desired state when the fleet has that
        bundle, else with a rollback command (and no desired state left to pull it forward)."""
        now = self.clock()
        self.registry.update_rollout_device(rollout.id, device, state="reverting", updated=now)
        known = self.registry.model(rollout.model, previous) if previous is not None else None
        entry = RolloutDevice(rollout.id, device, site, 0)
        if known is not None:
            out.send(site, device, "desired", self._desired(rollout, entry, known, now))
            self.registry.set_desired(device, known.name, known.version)
        else:
            out.send(site, device, "desired", None)
            command = RollbackCommand(
                cmd_id=_cmd_id(rollout.id, "rollback", device), ts=now, to_version=previous
            )
            out.send(site, device, "cmd", command)
            self.registry.set_desired(device, None, None)
