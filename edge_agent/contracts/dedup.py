"""Receiver-side de-duplication of at-least-once records by (device, sequence number)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Deduplicator"]


@dataclass
class _DeviceWindow:
    floor: int = -1  # every sequence number <= floor has been seen (or given up on)
    above: set[int] = field(default_factory=set)  # seen numbers above the floor


class Deduplicator:
    """Says whether a (device, seq) pair is new. Exact while gaps stay under ``max_gap``.

    Records of different topics interleave during replay, so numbers arrive out of order; the
    set of numbers seen above the contiguous floor holds those until the gaps close. Records that
    never come (dropped by an overflow policy) would hold it open forever, so past ``max_gap``
    pending numbers the floor jumps to the oldest one seen and older gaps are given up.
    Not thread-safe: use one per consumer.
    """

    def __init__(self, max_gap: int = 100_000) -> None:
        if max_gap < 1:
            raise ValueError("max_gap must be at least 1")
        self._max_gap = max_gap
        self._devices: dict[str, _DeviceWindow] = {}
        self.duplicates = 0

    def is_new(self, device: str, seq: int) -> bool:
        """Record the pair and return True the first time it is seen, False for a duplicate."""
        window = self._devices.setdefault(device, _DeviceWindow())
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

    def forget(self, device: str) -> None:
        """Drop what is known of a device (for example when it reports a new outbox epoch)."""
        self._devices.pop(device, None)
