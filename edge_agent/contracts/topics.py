"""Every MQTT topic the project uses is built here, and nowhere else.

Layout: ``<prefix>/<site>/<device>/<kind>[/<asset>]``. Devices publish ``status`` (retained),
``heartbeat``, ``results/<asset>``, ``latest/<asset>`` (retained, optional), ``drift``,
``alerts`` and ``ack``; the fleet publishes ``desired`` (retained), ``cmd`` and ``transfer``
(bundle chunks) to a device. See docs/control-protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_PREFIX",
    "DEVICE_KINDS",
    "FLEET_SHARE_GROUP",
    "DeviceTopics",
    "TopicKind",
    "TopicParts",
    "fleet_filter",
    "parse_topic",
    "validate_level",
]

DEFAULT_PREFIX = "edge"
FLEET_SHARE_GROUP = "fleet"

TopicKind = Literal[
    "status",
    "heartbeat",
    "results",
    "latest",
    "drift",
    "alerts",
    "desired",
    "cmd",
    "transfer",
    "ack",
]
DEVICE_KINDS: tuple[TopicKind, ...] = (
    "status",
    "heartbeat",
    "results",
    "latest",
    "drift",
    "alerts",
    "desired",
    "cmd",
    "transfer",
    "ack",
)
_KIND_BY_NAME: dict[str, TopicKind] = {kind: kind for kind in DEVICE_KINDS}
# Kinds whose topic carries one more level naming the asset.
_ASSET_KINDS = frozenset({"results", "latest"})


def validate_level(value: str, what: str) -> str:
    """Return ``value`` if it can stand as one topic level or raise ValueError naming ``what``."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    bad = sorted({c for c in value if c in "/+#\0"})
    if bad:
        raise ValueError(
            f"{what} {value!r} must not contain {' '.join(bad)} (it is one topic level)"
        )
    if value.startswith("$"):
        raise ValueError(f"{what} {value!r} must not start with '$' (reserved by MQTT)")
    return value


def _validate_prefix(prefix: str) -> str:
    if not prefix:
        raise ValueError("topic prefix must not be empty")
    for level in prefix.split("/"):
        validate_level(level, "topic prefix level")
    return prefix


@dataclass(frozen=True, slots=True)
class DeviceTopics:
    """The topics of one device. Construct once per device; every method is pure."""

    prefix: str
    site: str
    device: str

    def __post_init__(self) -> None:
        _validate_prefix(self.prefix)
        validate_level(self.site, "site")
        validate_level(self.device, "device id")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def heartbeat(self) -> str:
        return f"{self.base}/heartbeat"

    @property
    def drift(self) -> str:
        return f"{self.base}/drift"

    @property
    def alerts(self) -> str:
        return f"{self.base}/alerts"

    @property
    def desired(self) -> str:
        return f"{self.base}/desired"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    @property
    def transfer(self) -> str:
        return f"{self.base}/transfer"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"

    def results(self, asset: str) -> str:
        return f"{self.base}/results/{validate_level(asset, 'asset')}"

    def latest(self, asset: str) -> str:
        return f"{self.base}/latest/{validate_level(asset, 'asset')}"

    def own_filter(self) -> str:
        """A filter matching every topic of this device (used by the broker ACL)."""
        return f"{self.base}/#"

    def device_publishes(self) -> list[str]:
        """Filters of every topic the device itself publishes (its broker ACL's write rules)."""
        base = self.base
        return [
            f"{base}/status",
            f"{base}/heartbeat",
            f"{base}/results/+",
            f"{base}/latest/+",
            f"{base}/drift",
            f"{base}/alerts",
            f"{base}/ack",
        ]

    def device_reads(self) -> list[str]:
        """Filters of every topic the fleet publishes to the device (its ACL's read rules)."""
        return [self.desired, self.cmd, self.transfer]


def fleet_filter(
    prefix: str,
    kind: TopicKind,
    *,
    site: str = "+",
    device: str = "+",
    share_group: str | None = None,
) -> str:
    """A subscription filter for one kind of topic across devices.

    With ``share_group`` the filter is an MQTT 5 shared subscription
    (``$share/<group>/...``) so that several fleet workers split the messages between them.
    """
    _validate_prefix(prefix)
    if site != "+":
        validate_level(site, "site")
    if device != "+":
        validate_level(device, "device id")
    topic = f"{prefix}/{site}/{device}/{kind}"
    if kind in _ASSET_KINDS:
        topic += "/+"
    if share_group is not None:
        topic = f"$share/{validate_level(share_group, 'share group')}/{topic}"
    return topic


@dataclass(frozen=True, slots=True)
class TopicParts:
    """What a device topic names."""

    site: str
    device: str
    kind: TopicKind
    asset: str | None = None


def parse_topic(prefix: str, topic: str) -> TopicParts | None:
    """Split a device topic into its parts; None when it is not one of this prefix's topics."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head) :].split("/")
    if len(levels) < 3:
        return None
    site, device, kind_name, *rest = levels
    kind = _KIND_BY_NAME.get(kind_name)
    if kind is None:
        return None
    if kind in _ASSET_KINDS:
        if len(rest) != 1 or not rest[0]:
            return None
        return TopicParts(site, device, kind, rest[0])
    if rest:
        return None
    return TopicParts(site, device, kind)
