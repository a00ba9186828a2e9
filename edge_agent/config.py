"""The agent's configuration: one TOML file, validated strictly (unknown keys are refused)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent.configfile import check_toml, load_toml
from edge_agent.contracts.manifest import WindowFeature
from edge_agent.contracts.topics import DEFAULT_PREFIX, validate_level
from edge_agent.errors import ConfigError
from edge_agent.mqtt import MqttSettings

__all__ = [
    "AgentConfig",
    "BrokerConfig",
    "CodecConfig",
    "DeviceConfig",
    "DriftConfig",
    "HeartbeatConfig",
    "JsonBatchCodec",
    "JsonObjectCodec",
    "JsonRecordCodec",
    "LifecycleConfig",
    "MetricsConfig",
    "ModelConfig",
    "MqttSourceConfig",
    "NumberCodec",
    "OpcUaEndpoint",
    "OpcUaSecurity",
    "OpcUaSinkConfig",
    "OpcUaSourceConfig",
    "OpcUaTagConfig",
    "OpcUaWrite",
    "OutboxConfig",
    "SimulatedSourceConfig",
    "SinkConfig",
    "SourceConfig",
    "TlsConfig",
    "WindowsConfig",
    "check_config",
    "load_config",
    "read_secret",
    "sample_config_text",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def read_secret(*, env: str | None, credential: str | None, what: str) -> str | None:
    """Read a secret from an environment variable or a systemd credential; never log it."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"environment variable {env} is not set", key=what)
        return value
    if credential is not None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if directory is None:
            raise ConfigError(
                f"credential {credential!r} asked for but $CREDENTIALS_DIRECTORY is not set "
                "(systemd sets it with LoadCredential=)",
                key=what,
            )
        try:
            return (Path(directory) / credential).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"cannot read credential {credential!r}: {err}", key=what) from err
    return None


class DeviceConfig(_Section):
    id: str
    site: str
    labels: dict[str, str] = Field(default_factory=dict)
    state_dir: Path = Path("/var/lib/edge-agent")

    @field_validator("id", "site")
    @classmethod
    def _one_level(cls, value: str) -> str:
        return validate_level(value, "value")


class TlsConfig(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password_env: str | None = None
    password_credential: str | None = None
    tls: TlsConfig | None = None
    reconnect_min_s: int = Field(1, ge=1, le=60)
    reconnect_max_s: int = Field(30, ge=1, le=600)

    @model_validator(mode="after")
    def _one_password_source(self) -> BrokerConfig:
        if self.password_env and self.password_credential:
            raise ValueError("give password_env or password_credential, not both")
        return self

    def password(self) -> str | None:
        return read_secret(
            env=self.password_env, credential=self.password_credential, what="broker.password"
        )

    def settings(
        self, *, device_id: str, role: str, persistent_session: bool = False
    ) -> MqttSettings:
        """Connection settings with secrets read now (raises ConfigError if one is missing).

        Each connection of one device needs its own client id: ``role`` tells them apart, and a
        stable id is what lets a persistent session find its queued messages again.
        """
        tls = self.tls
        base = self.client_id or f"edge-agent-{device_id}"
        return MqttSettings(
            host=self.host,
            port=self.port,
            client_id=base if role == "uplink" else f"{base}-{role}",
            protocol=self.protocol,
            keepalive_s=self.keepalive_s,
            username=self.username,
            password=self.password(),
            tls=tls is not None,
            ca_file=str(tls.ca_file) if tls and tls.ca_file else None,
            cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
            key_file=str(tls.key_file) if tls and tls.key_file else None,
            persistent_session=persistent_session,
            reconnect_min_s=self.reconnect_min_s,
            reconnect_max_s=self.reconnect_max_s,
        )


class ModelConfig(_Section):
    bundle: Path
    public_key: Path | None = None
    runner: Literal["auto", "onnx", "tflite"] = "auto"
    threads: int = Field(1, ge=1, le=64)
    # The features the plant feeds; a bundle whose inputs differ is refused. Default: the bundle's.
    features: list[str] | None = None
    # Windows ready at once run as one batch of at most this many rows.
    max_batch: int = Field(64, ge=1, le=4096)


class WindowsConfig(_Section):
    """How readings become model input rows (see docs/agent.md). Unset keys come from the
    bundle's window spec where it has one."""

    # "row": each reading is one complete row. Default: the bundle's window mode, else "row".
    mode: Literal["row", "tumbling", "sliding", "count", "snapshot"] | None = None
    length_s: float | None = Field(None, gt=0)
    hop_s: float | None = Field(None, gt=0)
    count: int | None = Field(None, gt=0)
    trigger_tag: str | None = None
    # Default: the bundle's window features, else read from the input names (vibration_rms).
    features: list[WindowFeature] | None = None
    allowed_lateness_s: float = Field(1.0, ge=0)
    late: Literal["drop", "current"] = "drop"
    missing: Literal["skip", "last", "baseline"] = "skip"
    max_age_s: float = Field(60.0, gt=0)
    use_uncertain: bool = True
    max_samples_per_tag: int = Field(100_000, ge=10)


class JsonRecordCodec(_Section):
    """One message is one row: a JSON object whose keys are tag names."""

    type: Literal["json_record"] = "json_record"
    timestamp_field: str | None = "ts"


class _JsonPaths(_Section):
    """Where a reading's fields are in a JSON object: dotted paths such as ``data.value``."""

    value_path: str = "value"
    tag_path: str | None = None  # the tag name from the payload ...
    tag_level: int | None = Field(None, ge=0)  # ... or from this topic level (0-based)
    timestamp_path: str | None = "ts"  # absent in a message: the time of receipt
    timestamp_unit: Literal["s", "ms", "iso"] = "s"
    quality_path: str | None = None  # "good", "uncertain", "bad" or a boolean

    @model_validator(mode="after")
    def _tag_named(self) -> _JsonPaths:
        if (self.tag_path is None) == (self.tag_level is None):
            raise ValueError("give exactly one of tag_path or tag_level")
        return self


class JsonObjectCodec(_JsonPaths):
    """One reading per message: a JSON object."""

    type: Literal["json_object"]


class JsonBatchCodec(_JsonPaths):
    """Many readings per message: a JSON array of objects, or an array at ``items_path``."""

    type: Literal["json_batch"]
    items_path: str | None = None


class NumberCodec(_Section):
    """The payload is one number as text; the tag name is a topic level."""

    type: Literal["number"]
    tag_level: int = Field(ge=0)


CodecConfig = Annotated[
    JsonRecordCodec | JsonObjectCodec | JsonBatchCodec | NumberCodec,
    Field(discriminator="type"),
]


class MqttSourceConfig(_Section):
    type: Literal["mqtt"]
    name: str = "mqtt"
    topics: list[str] = Field(min_length=1)
    qos: Literal[0, 1] = 1
    codec: CodecConfig = Field(default_factory=JsonRecordCodec)
    asset: str | None = None  # a fixed asset name for every reading
    asset_level: int | None = Field(None, ge=0)  # or the topic level (0-based) naming it
    broker: BrokerConfig | None = None  # default: the agent's own broker
    max_payload_bytes: int = Field(65536, ge=16)

    @model_validator(mode="after")
    def _asset_named(self) -> MqttSourceConfig:
        if (self.asset is None) == (self.asset_level is None):
            raise ValueError("give exactly one of asset or asset_level")
        return self


class OpcUaSecurity(_Section):
    """How to reach a secured server. Secrets come from the environment or systemd credentials.

    The user is anonymous, a ``username`` with a password, or an X.509 user certificate
    (``user_certificate`` and ``user_private_key``): an identity of its own, apart from the
    application ``certificate`` that secures the channel.
    """

    policy: Literal["None", "Basic256Sha256"] = "Basic256Sha256"
    mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: Path | None = None  # this client's certificate (DER or PEM)
    private_key: Path | None = None
    server_certificate: Path | None = None  # pin the server's certificate
    username: str | None = None
    password_env: str | None = None
    password_credential: str | None = None
    user_certificate: Path | None = None  # the user's certificate (DER or PEM)
    user_private_key: Path | None = None  # its key (PEM or DER, not encrypted)

    @model_validator(mode="after")
    def _complete(self) -> OpcUaSecurity:
        if self.policy == "Basic256Sha256" and (
            self.certificate is None or self.private_key is None
        ):
            raise ValueError("Basic256Sha256 needs certificate and private_key")
        if self.password_env and self.password_credential:
            raise ValueError("give password_env or password_credential, not both")
        if (self.password_env or self.password_credential) and self.username is None:
            raise ValueError("a password needs a username")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("user_certificate and user_private_key go together")
        if self.user_certificate is not None:
            if self.username is not None:
                raise ValueError("give a username or a user_certificate, not both")
            if self.policy != "Basic256Sha256":
                # The user's key signs the server's nonce under the channel's policy.
                raise ValueError("a user_certificate needs policy Basic256Sha256")
        return self


class OpcUaTagConfig(_Section):
    """One PLC tag: a node id (``ns=2;s=Machine.Speed``) or a browse path from Objects
    (``2:Machine/2:Speed``), read into the tag ``name``."""

    name: str = Field(min_length=1)
    node_id: str | None = None
    browse_path: str | None = None
    sampling_interval_ms: float | None = Field(None, ge=0)  # default: the source's
    deadband: float | None = Field(None, ge=0)  # default: the source's
    deadband_type: Literal["absolute", "percent"] = "absolute"

    @model_validator(mode="after")
    def _addressed(self) -> OpcUaTagConfig:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node_id or browse_path")
        return self


class OpcUaEndpoint(_Section):
    """How to reach one OPC-UA server. Sources and sinks naming one url share one session."""

    name: str
    url: str = Field(pattern=r"^opc\.tcp://")
    security: OpcUaSecurity | None = None
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)


class OpcUaSourceConfig(OpcUaEndpoint):
    type: Literal["opcua"]
    name: str = "opcua"
    asset: str  # the machine these tags describe
    tags: list[OpcUaTagConfig] = Field(min_length=1)
    publishing_interval_ms: float = Field(500.0, gt=0)
    sampling_interval_ms: float = Field(100.0, ge=0)
    deadband: float = Field(0.0, ge=0)
    queue_size: int = Field(
        10, ge=1, le=10_000
    )  # values the server keeps per tag between publishes
    timestamp: Literal["source", "server"] = "source"
    # The server sends keep-alives every 0.75 * watchdog_s when nothing changes; nothing at all this
    # long: check the server, then re-create the subscription. 0: off.
    watchdog_s: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _unique_tags(self) -> OpcUaSourceConfig:
        names = [tag.name for tag in self.tags]
        if len(set(names)) != len(names):
            raise ValueError("tag names must be unique within a source")
        return self


class SimulatedSourceConfig(_Section):
    """Readings made up on the device, for demos and tests: a pump whose bearing wears, or a
    CSV file replayed row by row (a header names the tags; a ``ts`` column is ignored)."""

    type: Literal["simulated"]
    name: str = "simulated"
    asset: str = "pump-1"
    signal: Literal["pump", "csv"] = "pump"
    csv: Path | None = None
    interval_s: float = Field(1.0, gt=0)
    wear_period_s: float = Field(600.0, gt=0)  # pump: new bearing to worn out, then again
    loop: bool = True  # csv: start again at the end
    seed: int = 0

    @model_validator(mode="after")
    def _csv_named(self) -> SimulatedSourceConfig:
        if (self.signal == "csv") != (self.csv is not None):
            raise ValueError("signal = csv goes with csv = <file>, and only then")
        return self


class OpcUaWrite(_Section):
    """Write one result output to one node (only the results of ``asset``, when given)."""

    output: str
    node_id: str
    asset: str | None = None


class OpcUaSinkConfig(OpcUaEndpoint):
    """Write-back of result outputs to PLC nodes. Only the newest result counts: one that cannot
    be written while the server is away is skipped (counted), never written late."""

    type: Literal["opcua"]
    name: str = "opcua-writeback"
    writes: list[OpcUaWrite] = Field(min_length=1)


SinkConfig = Annotated[OpcUaSinkConfig, Field(discriminator="type")]


SourceConfig = Annotated[
    MqttSourceConfig | OpcUaSourceConfig | SimulatedSourceConfig, Field(discriminator="type")
]


class OutboxConfig(_Section):
    path: Path | None = None  # default: <state_dir>/outbox.db
    max_rows: int = Field(1_000_000, ge=10)
    max_bytes: int = Field(512 * 1024 * 1024, ge=64 * 1024)
    overflow: Literal["drop_oldest", "drop_newest", "pause_sources"] = "drop_oldest"
    max_inflight: int = Field(200, ge=1, le=65535)
    # "full": a committed batch survives a power cut; "normal": a power cut may lose the commits
    # since the last WAL checkpoint (faster on slow flash). See docs/durability.md.
    synchronous: Literal["full", "normal"] = "full"
    # Records/s a backlog drains at, on top of live results (never paced); 0: unpaced.
    replay_rate: float = Field(1000.0, ge=0)
    latest: bool = True  # also publish each asset's newest result, retained, on latest/<asset>


class HeartbeatConfig(_Section):
    interval_s: float = Field(30.0, ge=0.1)


class MetricsConfig(_Section):
    """The optional Prometheus endpoint: ``listen = "HOST:PORT"``."""

    listen: str

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9108, got {value!r}")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class LifecycleConfig(_Section):
    """How the agent takes new models: the store, shadow runs and the grace period's gates."""

    keep_previous: int = Field(2, ge=0, le=100)  # versions kept on disk besides the active one
    grace_s: float = Field(60.0, ge=0)  # default when the command does not say
    shadow_windows: int = Field(0, ge=0)  # default when the command does not say
    shadow_min_agreement: float = Field(0.0, ge=0, le=1)  # below this the shadow step refuses
    max_error_rate: float = Field(0.01, ge=0, le=1)  # failed windows / windows during grace
    min_windows: int = Field(20, ge=1)  # windows before the latency gate judges
    # Windows before the output gate judges: PSI over few values is noise (about bins / n).
    output_min_windows: int = Field(200, ge=1)
    latency_p99_ratio: float = Field(3.0, ge=1)  # new p99 against the previous model's
    latency_floor_ms: float = Field(2.0, ge=0)  # p99 differences below this never fail
    output_psi_alert: float | None = Field(None, gt=0)  # default: the bundle's psi_alert


class DriftConfig(_Section):
    """Drift summaries against the bundle's baseline, one per window."""

    enabled: bool = True
    window_s: float = Field(300.0, gt=0)
    min_count: int = Field(200, ge=1)  # windows with fewer values are summarized but not leveled


class AgentConfig(_Section):
    device: DeviceConfig
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    topic_prefix: str = DEFAULT_PREFIX
    model: ModelConfig
    sources: list[SourceConfig] = Field(min_length=1)
    windows: WindowsConfig = Field(default_factory=WindowsConfig)
    sinks: list[SinkConfig] = Field(default_factory=list)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    metrics: MetricsConfig | None = None  # off unless configured
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @model_validator(mode="after")
    def _unique_source_names(self) -> AgentConfig:
        names = [source.name for source in self.sources] + [sink.name for sink in self.sinks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source and sink names must be unique: {', '.join(duplicates)}")
        return self

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.device.state_dir / "outbox.db"


def check_config(path: Path) -> tuple[AgentConfig | None, list[ConfigError]]:
    """Validate a config file; return it, or None and every problem with file, line and key."""
    return check_toml(path, AgentConfig)


def load_config(path: Path) -> AgentConfig:
    """Load a config file or raise the first ConfigError."""
    return load_toml(path, AgentConfig)


def sample_config_text() -> str:
    """The commented example config shipped with the package (and as deploy/agent.toml)."""
    return resources.files("edge_agent").joinpath("sample_agent.toml").read_text(encoding="utf-8")
