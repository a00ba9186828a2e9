"""Receiver-side de-duplication of at-least-once records by (device, sequence number)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.contracts.payloads import SequencedPayload

__all__ = ["Deduplicator"]


@dataclass
class _DeviceWindow:
    floor: int = -1  # every sequence number <= floor has been seen (or given up on)
    above: set[int] = field(default_factory=set)  # seen numbers above the floor


class Deduplicator:
    """Says whether a (device, seq) pair is new. Exact while gaps stay under ``max_gap``.

    Devices number every outbox record once, across restarts, so a number seen again is a
    duplicate of at-least-once delivery (a resend after a lost PUBACK, a replay after a crash).
    Records of different topics interleave during replay and numbers dropped by an overflow policy
    never come, so the numbers seen above the contiguous floor are held until the gaps close; past
    ``max_gap`` pending numbers the floor jumps to the oldest one seen and older gaps are given up.
    A number more than ``restart_gap`` below the floor means the device started numbering again
    (its state was wiped): the device is forgotten and the record taken as new, since dropping
    real records is worse than passing a duplicate. Memory: O(max_gap) per device.
    Not thread-safe: use one per consumer.
    """

    def __init__(self, max_gap: int = 100_000, restart_gap: int = 10_000_000) -> None:
        if max_gap < 1:
            raise ValueError("max_gap must be at least 1")
        if restart_gap <= max_gap:
            raise ValueError("restart_gap must be larger than max_gap")
        self._max_gap = max_gap
        self._restart_gap = restart_gap
        self._devices: dict[str, _DeviceWindow] = {}
        self.duplicates = 0
        self.restarts = 0

    def is_new(self, device: str, seq: int) -> bool:
        """Record the pair and return True the first time it is seen, False for a duplicate."""
        window = self._devices.setdefault(device, _DeviceWindow())
        if seq < window.floor - self._restart_gap:
            self.restarts += 1
            window = self._devices[device] = _DeviceWindow()
        if seq <= window.floor or seq in window.above:
            self.duplicates += 1
            return False
        window.above.add(seq)
        while window.floor + 1 in window.above:
            window.floor += 1
            window.above.remove(window.floor)
        if len(window.above) > self._max_gap:
            window.floor = min(window.above)
            window.above.remove(window.floor)
            while window.floor + 1 in window.above:
                window.floor += 1
                window.above.remove(window.floor)
        return True

    def is_new_payload(self, payload: SequencedPayload) -> bool:
        """``is_new`` for a decoded outbox payload; devices are told apart by site and id."""
        return self.is_new(f"{payload.site}/{payload.device}", payload.seq)

    def forget(self, device: str) -> None:
        """Drop what is known of a device (``site/device`` for payloads)."""
        self._devices.pop(device, None)
