"""Every JSON payload that crosses MQTT, with its schema version and one way to decode it.

Payloads that must arrive (results, heartbeats, drift summaries, alerts, acks) go through the
device's outbox and carry a ``record_id`` and a per-device ``seq`` so that receivers can drop the
duplicates that at-least-once delivery produces (see :mod:`edge_agent.contracts.dedup`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "AckPayload",
    "ActivateCommand",
    "AlertPayload",
    "Command",
    "DesiredStateCommand",
    "DeviceAlertPayload",
    "DriftSummaryPayload",
    "FeatureSummary",
    "HeartbeatPayload",
    "OfferCommand",
    "OutputValue",
    "Payload",
    "PayloadError",
    "ResultPayload",
    "RollbackCommand",
    "SchemaVersionError",
    "SequencedPayload",
    "StatusPayload",
    "TransferChunkPayload",
    "decode",
    "decode_command",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

# One output value in a result: flat scalars so dashboards can chart them without unpacking.
OutputValue = float | int | str


class PayloadError(ValueError):
    """A payload could not be decoded. The message says which payload and what is wrong."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind} payload refused: {reason}")
        self.kind = kind
        self.reason = reason


class SchemaVersionError(PayloadError):
    """A payload carries a schema version this build does not understand."""

    def __init__(self, kind: str, version: object) -> None:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
        super().__init__(
            kind,
            f"schema_version {version!r} is not supported (this build reads {supported}); "
            "upgrade the receiving side or send a supported version",
        )
        self.version = version


class Payload(BaseModel):
    """Base of every payload: strict (unknown fields refused), immutable, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    KIND: ClassVar[str] = "payload"

    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class SequencedPayload(Payload):
    """A payload that goes through the outbox: at-least-once, de-duplicated by (device, seq)."""

    record_id: str
    seq: int = Field(ge=0)
    device: str
    site: str
    ts: float  # wall-clock time the record was made, seconds since the epoch
    # The wall clock jumped just before this record (a device without a real-time clock set at
    # boot, say): ``ts`` values on either side do not compare, ``seq`` still orders the records.
    clock_jump: bool = False


class ResultPayload(SequencedPayload):
    """One inference result for one window of one asset."""

    KIND: ClassVar[str] = "result"

    asset: str
    model: str
    model_version: str
    window_end: float
    outputs: dict[str, OutputValue]
    latency_ms: float = Field(ge=0)


class StatusPayload(Payload):
    """Retained liveness: ``online``, ``stopped`` on a clean exit, ``offline`` (the last will)."""

    KIND: ClassVar[str] = "status"

    state: Literal["online", "stopped", "offline"]
    device: str
    site: str
    ts: float
    agent_version: str
    model: str | None = None
    model_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)  # line, tags and other selectors


class HeartbeatPayload(SequencedPayload):
    """Periodic health: flat dotted counter and gauge names so dashboards can chart them."""

    KIND: ClassVar[str] = "heartbeat"

    uptime_s: float
    agent_version: str
    model: str | None = None
    model_version: str | None = None
    sources: dict[str, str] = Field(default_factory=dict)
    counters: dict[str, float] = Field(default_factory=dict)
    gauges: dict[str, float] = Field(default_factory=dict)


class FeatureSummary(BaseModel):
    """Mergeable statistics of one feature or output over a window, binned on the baseline's edges.

    ``bins`` has ``len(edges) + 1`` counts: an underflow bin (below the first edge), one bin per
    interval between consecutive edges, and an overflow bin (at or above the last edge).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bins: list[int]
    count: int = Field(ge=0)  # finite values seen
    missing: int = Field(0, ge=0)
    non_finite: int = Field(0, ge=0)
    out_of_range: int = Field(0, ge=0)
    min: float | None = None
    max: float | None = None
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean (Welford / Chan)

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A summary goes out per feature every window: counters that are zero and an absent
        # min/max are left out (their defaults restore them), a quarter of its size.
        data: dict[str, Any] = handler(self)
        for key in ("missing", "non_finite", "out_of_range"):
            if data.get(key) == 0:
                del data[key]
        for key in ("min", "max"):
            if key in data and data[key] is None:
                del data[key]
        return data


class DriftSummaryPayload(SequencedPayload):
    """Drift statistics of one model over one window on one device."""

    KIND: ClassVar[str] = "drift"

    model: str
    model_version: str
    window_start: float
    window_end: float
    features: dict[str, FeatureSummary]
    outputs: dict[str, FeatureSummary] = Field(default_factory=dict)
    scores: dict[str, dict[str, float]] = Field(default_factory=dict)
    levels: dict[str, Literal["ok", "warn", "alert"]] = Field(default_factory=dict)


class AlertPayload(SequencedPayload):
    """A drifting feature or output, for dashboards and operators."""

    KIND: ClassVar[str] = "alert"

    model: str
    model_version: str
    name: str
    level: Literal["warn", "alert"]
    scores: dict[str, float]
    window_end: float


class DeviceAlertPayload(SequencedPayload):
    """A problem of the device itself (for example its outbox file was damaged and replaced),
    on the alerts topic beside the drift alerts; ``alert`` names the kind."""

    KIND: ClassVar[str] = "device alert"

    alert: str
    level: Literal["warn", "alert"]
    message: str
    details: dict[str, str] = Field(default_factory=dict)


class AckPayload(SequencedPayload):
    """A device's answer to a command, one per lifecycle step, naming both model versions."""

    KIND: ClassVar[str] = "ack"

    cmd_id: str
    command: str  # the command kind acknowledged, or "unknown"
    step: str  # see docs/control-protocol.md: need_bundle, offer, chunk, received, verified ...
    ok: bool
    reason: str | None = None
    model: str | None = None
    version: str | None = None
    previous_version: str | None = None
    details: dict[str, float | int | str] = Field(default_factory=dict)


class _CommandBase(Payload):
    cmd_id: str = Field(min_length=1)
    ts: float


class OfferCommand(_CommandBase):
    """The fleet offers a bundle; chunks follow on the transfer topic, or ``url`` serves it."""

    KIND: ClassVar[str] = "command"

    kind: Literal["offer"] = "offer"
    model: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)
    chunk_size: int = Field(gt=0)
    url: str | None = None


class ActivateCommand(_CommandBase):
    KIND: ClassVar[str] = "command"

    kind: Literal["activate"] = "activate"
    model: str
    version: str
    shadow_windows: int = Field(0, ge=0)
    grace_s: float | None = Field(None, ge=0)


class RollbackCommand(_CommandBase):
    KIND: ClassVar[str] = "command"

    kind: Literal["rollback"] = "rollback"
    to_version: str | None = None  # None: the previous version


class DesiredStateCommand(_CommandBase):
    """What the device should run, retained on its ``desired`` topic; the agent reconciles it
    whenever it (re)connects. ``sha256`` and ``size`` identify the bundle to fetch if missing."""

    KIND: ClassVar[str] = "command"

    kind: Literal["desired"] = "desired"
    model: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)
    rollout_id: str | None = None
    shadow_windows: int = Field(0, ge=0)
    grace_s: float | None = Field(None, ge=0)


Command = Annotated[
    OfferCommand | ActivateCommand | RollbackCommand | DesiredStateCommand,
    Field(discriminator="kind"),
]
_COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


class TransferChunkPayload(Payload):
    """One chunk of a bundle in transit; ``sha256`` is the chunk's own hash."""

    KIND: ClassVar[str] = "transfer chunk"

    model: str
    version: str
    index: int = Field(ge=0)
    total: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    data: str  # base64


P = TypeVar("P", bound=Payload)


def _load_object(kind: str, raw: bytes | str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PayloadError(kind, f"not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise PayloadError(kind, f"expected a JSON object, got {type(obj).__name__}")
    if "schema_version" not in obj:
        raise PayloadError(kind, "schema_version is missing")
    version = obj["schema_version"]
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise SchemaVersionError(kind, version)
    return obj


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def decode(cls: type[P], raw: bytes | str) -> P:
    """Decode ``raw`` JSON as ``cls``; raise PayloadError (or SchemaVersionError) saying why not."""
    obj = _load_object(cls.KIND, raw)
    try:
        return cls.model_validate(obj)
    except ValidationError as err:
        raise PayloadError(cls.KIND, _describe(err)) from err


def decode_command(raw: bytes | str) -> Command:
    """Decode a command of any kind; unknown kinds are refused with the kinds that exist."""
    obj = _load_object("command", raw)
    try:
        return _COMMAND_ADAPTER.validate_python(obj)
    except ValidationError as err:
        raise PayloadError("command", _describe(err)) from err
