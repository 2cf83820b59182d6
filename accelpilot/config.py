"""One validated, frozen settings object: a TOML file plus ``ACCELPILOT_*`` environment variables.

Precedence (highest first): explicit overrides (CLI flags, tests), environment variables, the
TOML file, the defaults below.
Nested fields use a double underscore in the environment: ``ACCELPILOT_KAFKA__BOOTSTRAP_SERVERS``.
A broken config raises :class:`~accelpilot.errors.ConfigError` naming the field and the problem.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from accelpilot.errors import ConfigError

CONFIG_ENV = "ACCELPILOT_CONFIG"
DEFAULT_CONFIG_FILE = Path("accelpilot.toml")
#: ``worker.cluster`` unless configured.
DEFAULT_CLUSTER = "default"
# An InfluxDB tag value that needs no escaping in line protocol and reads the same in an InfluxQL
# regex or string literal and in a Grafana variable: no comma, space, =, quote, backslash, slash.
_CLUSTER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1)
    # Prepended to every topic name; tests use it to give each test its own topics.
    topic_prefix: str = ""
    partitions: int = Field(6, ge=1, le=1000)


class InfluxSettings(_Section):
    url: str = Field("http://127.0.0.1:8086", pattern=r"^https?://")
    database: str = Field("accelpilot", min_length=1)
    retention_policy: str = "autogen"
    # InfluxDB 1.x: "user:password" (anything while auth is off); 2.x: an API token.
    token: SecretStr = SecretStr("accelpilot:accelpilot")
    org: str = "-"
    timeout_s: float = Field(10.0, gt=0)

    @property
    def bucket(self) -> str:
        """The v2-API bucket of an InfluxDB 1.x database: ``db/rp``."""
        return f"{self.database}/{self.retention_policy}"


class StackSettings(_Section):
    cache_dir: Path = Path("~/.cache/accelpilot")
    # Broker and database state; temporary by design, wiped by `accelpilot stack down --wipe`.
    run_dir: Path = Path("/tmp/accelpilot-stack")
    kafka_version: str = Field("3.9.1", pattern=r"^3\.9\.\d+$")
    kafka_port: int = Field(9092, ge=1024, le=65535)
    kafka_controller_port: int = Field(9093, ge=1024, le=65535)
    kafka_heap_mb: int = Field(512, ge=128, le=8192)
    influx_version: str = Field("1.12.4", pattern=r"^1\.1[12]\.\d+$")
    influx_port: int = Field(8086, ge=1024, le=65535)
    influx_rpc_port: int = Field(8088, ge=1024, le=65535)
    start_timeout_s: float = Field(90.0, gt=0)


class WorkerSettings(_Section):
    app_id: str = Field("accelpilot-worker", min_length=1)
    # Batch of samples handed to the sinks at once (bounded by count and by time).
    batch_max: int = Field(500, ge=1, le=100_000)
    batch_within_s: float = Field(0.2, gt=0, le=60)
    # A batch smaller than batch_max waits this long for more (per-batch costs are then paid
    # at most ~1/batch_linger_s times a second under a light load; it adds as much latency).
    batch_linger_s: float = Field(0.05, ge=0, le=5)
    # Line protocol computed but not yet written to InfluxDB: the loop reads, detects and
    # alerts ahead of a slow or snapshotting InfluxDB up to this much, then waits for it
    # (back-pressure: Kafka keeps the data). More rides out longer stalls, costs as much memory
    # (about 1.2x it) and as many seconds of writes to land at a rebalance or stop.
    in_flight_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024, le=4 * 1024**3)
    # Line protocol per InfluxDB write at most (one batch's lines always go in one write);
    # InfluxDB 1.x refuses request bodies over its max-body-size, 25 MB by default.
    write_max_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024, le=1024**3)
    # InfluxDB writes under way at once (their records are still released in batch order), so
    # InfluxDB is not idle while an answer comes back and the next write is put together. On
    # the 2-core VM the drain went 28k -> 34k -> 40k device-samples/s for 1 -> 2 -> 3, and 4 was
    # no better than 3 (docs/streams.md, Round 6).
    influx_writes_in_flight: int = Field(3, ge=1, le=16)
    # Prometheus /metrics of this worker (streams/worker_metrics.py); 0 = off. Off by default:
    # several workers on one host each need a port of their own. metrics_addr 0.0.0.0 lets a
    # Prometheus elsewhere scrape it (in a container, say).
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_addr: str = Field("127.0.0.1", min_length=1)
    # Samples stamped further in the future than this are rejected to the DLQ.
    max_future_skew_s: float = Field(300.0, gt=0)
    data_dir: Path = Path("/tmp/accelpilot-worker")
    # Tumbling aggregate windows (event time) and how late a sample may arrive.
    windows_s: tuple[float, ...] = (10.0, 60.0)
    allowed_lateness_s: float = Field(5.0, ge=0, le=600)
    # A host's complete windows are closed up to this long after they are complete (a fixed
    # fraction of it per host), so the hosts that cross a window boundary in the same second
    # do not close ~9 windows each in one batch in front of every sample behind it. 0: at once.
    # This is the smallest window's spread, used up to half that window (the fleet roll-up
    # relies on closes within a window; a host more than a window behind the wall clock is
    # closed at once anyway); a larger window's grows with its length (5 s: 30 s for 60 s
    # windows), streams/batch_stages.py close_spreads_s.
    close_spread_s: float = Field(5.0, ge=0, le=600)
    # Raw samples to InfluxDB (measurement device_sample: the Grafana device panels and the
    # collector-silent / device-silent alert rules read it): "all" writes every sample; "every"
    # one sample per device per raw_every_s (a sample whose ts_ns falls in the first interval_s
    # of each raw_every_s: the same samples on a replay). At most 30 s, so those rules still
    # count >= 2 samples a minute. Aggregates, anomalies and alerts are written either way; how
    # long raw points are kept is the retention policy the worker writes to
    # (influx.retention_policy).
    raw_samples: Literal["all", "every"] = "all"
    raw_every_s: float = Field(10.0, gt=0, le=30)
    # The cluster this worker group serves (one Kafka pipeline per cluster; several may write
    # one InfluxDB): every point the worker writes is tagged cluster=<this>.
    cluster: str = DEFAULT_CLUSTER

    @field_validator("cluster")
    @classmethod
    def _cluster_is_a_plain_tag_value(cls, value: str) -> str:
        if not _CLUSTER_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a cluster name: 1-64 characters from A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit (it becomes the InfluxDB tag value cluster=...)"
            )
        return value


class AgentSettings(_Section):
    # Tried in order; "sim" (a fleet scenario: a bundled name or a .json path) only when named.
    backends: tuple[str, ...] = ("nvml", "amdsmi", "cpu")
    scenario: str | None = None
    interval_s: float = Field(1.0, ge=0.05, le=3600)
    # Samples wait here, in order, while the broker is unreachable.
    buffer_dir: Path = Path("~/.local/state/accelpilot/agent")
    buffer_max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    metrics_port: int = Field(9101, ge=0, le=65535)  # Prometheus /metrics; 0 = off
    dry_run: bool = False
    # Ed25519 public keys (*.pub) allowed to sign fleet.actions; none = every action rejected.
    public_keys: Path | None = None
    restore_limits_on_exit: bool = True


class AlertsSettings(_Section):
    # Subscriptions, the delivery queue and dead letters (SQLite, durable).
    store_path: Path = Path("~/.local/state/accelpilot/alerts.sqlite")
    group_id: str = Field("accelpilot-alerts", min_length=1)
    from_beginning: bool = False
    retry_base_s: float = Field(2.0, gt=0)
    retry_cap_s: float = Field(300.0, gt=0)
    retry_jitter: float = Field(0.2, ge=0, lt=1)
    max_attempts: int = Field(12, ge=1)
    give_up_after_s: float = Field(3600.0, gt=0)
    http_timeout_s: float = Field(10.0, gt=0)
    smtp_timeout_s: float = Field(10.0, gt=0)


class OptimizerSettings(_Section):
    # advise: recommendations only (recorded, never sent); auto: signed actions to fleet.actions.
    mode: Literal["advise", "auto"] = "advise"
    # The optimizer alone holds the Ed25519 private key; hosts hold the public key.
    private_key: Path | None = None
    recommendations_path: Path = Path("~/.local/state/accelpilot/recommendations.jsonl")
    group_id: str = Field("accelpilot-optimizer", min_length=1)


class ConsoleSettings(_Section):
    # Loopback by default; any other address requires tokens (docs/console.md).
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=1, le=65535)
    # Comma-separated name:role:token entries, role viewer|operator.
    tokens: SecretStr = SecretStr("")


class Settings(BaseSettings):
    """The effective configuration of every accelpilot process."""

    model_config = SettingsConfigDict(
        env_prefix="ACCELPILOT_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    # The TOML file's values (set by load_settings on a subclass made per call).
    _file_data: ClassVar[dict[str, Any]] = {}

    host_id: str = Field(default_factory=socket.gethostname, min_length=1)
    kafka: KafkaSettings = KafkaSettings()
    influx: InfluxSettings = InfluxSettings()
    stack: StackSettings = StackSettings()
    worker: WorkerSettings = WorkerSettings()
    agent: AgentSettings = AgentSettings()
    alerts: AlertsSettings = AlertsSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    console: ConsoleSettings = ConsoleSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit overrides (CLI flags, tests) beat the environment, which beats the file.
        return (init_settings, env_settings, _FileSource(settings_cls, cls._file_data))

    def topic(self, name: str) -> str:
        """The full topic name for a logical topic such as ``telemetry.samples``."""
        return f"{self.kafka.topic_prefix}{name}"

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets masked, for `accelpilot config show`."""
        masked: dict[str, Any] = _mask(self.model_dump(mode="python"))
        return masked


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist; pass an existing file") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(root)"
        env = "ACCELPILOT_" + "__".join(str(p) for p in item["loc"]).upper()
        lines.append(f"field '{field}' (env {env}): {item['msg']}")
    return f"invalid configuration ({source}): " + "; ".join(lines)


class _FileSource(PydanticBaseSettingsSource):
    """The TOML file's values, below the environment in precedence."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load the effective settings.

    ``path`` is a TOML file; without it ``$ACCELPILOT_CONFIG``, then ``./accelpilot.toml`` if it
    exists, else defaults and environment only. Precedence: ``overrides`` (CLI flags, tests), then
    ``ACCELPILOT_*`` environment variables, then the file, then the defaults; nested sections
    merge field by field.
    """
    chosen = path or os.environ.get(CONFIG_ENV)
    file_path = (
        Path(chosen) if chosen else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    )
    data: dict[str, Any] = _read_toml(file_path) if file_path else {}

    class _Loaded(Settings):
        _file_data: ClassVar[dict[str, Any]] = data

    source = f"file {file_path} + environment" if file_path else "defaults + environment"
    try:
        return _Loaded(**overrides)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from e


def write_toml(settings: Settings, path: Path) -> Path:
    """Write ``settings`` as a TOML file that :func:`load_settings` reads back to the same values
    (secrets in clear: the file is created 0600). For handing settings to a subprocess."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | list | tuple):
            return json.dumps(list(v) if not isinstance(v, str) else v)
        return repr(v)

    data = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        model = getattr(settings, name)
        if isinstance(model, BaseModel):
            for key in type(model).model_fields:
                secret = getattr(model, key)
                if isinstance(secret, SecretStr):
                    data[name][key] = secret.get_secret_value()
    lines = [
        f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None
    ]
    for section, fields in data.items():
        if isinstance(fields, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in fields.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path
