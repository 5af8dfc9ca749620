"""Typed settings for the whole node, loaded once at start-up.

One object (:class:`Settings`) holds every key. Values come, lowest priority
first, from the defaults below, the TOML file (``--config PATH`` or
``MSVLM_NODE_CONFIG``), then environment variables that override single keys
(``MSVLM_NODE_<TABLE>__<KEY>``, e.g. ``MSVLM_NODE_DATABASE__URL``). Unknown keys
and bad values stop start-up with a message naming the key, because a typo in a
PACS node's config (an allow-list, a port) must never be silently ignored.

``config/node.toml`` documents every key with the same defaults; a test keeps
the two in step.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from node.errors import ConfigError
from node.grouping import GroupingSettings
from node.volume import VolumeSettings

ENV_PREFIX = "MSVLM_NODE_"
CONFIG_ENV = "MSVLM_NODE_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(_Section):
    """Identity and network of the DICOM service."""

    ae_title: str = "MSVLM"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    #: what `serve` runs: the DICOM receiver, the timers (settle, reap, deliver), a worker
    roles: tuple[Literal["receiver", "scheduler", "worker"], ...] = ("receiver", "scheduler", "worker")
    #: receiver processes sharing one listening socket (node.balance); 0 = one per CPU core
    receivers: int = Field(default=1, ge=0, le=64)
    max_associations: int = Field(default=16, ge=1)
    #: largest PDU we accept (bytes); 0 means no limit
    max_pdu_size: int = Field(default=4194304, ge=0)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    acse_timeout_seconds: float = Field(default=30.0, gt=0)
    dimse_timeout_seconds: float = Field(default=60.0, gt=0)
    #: how long SIGTERM waits for in-flight associations before aborting them
    drain_seconds: float = Field(default=30.0, ge=0)
    #: the root under which our own UIDs (SR documents, series) are made
    uid_prefix: str = "1.2.826.0.1.3680043.8.498.71."

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        stripped = value.strip()
        if not 1 <= len(stripped) <= 16 or "\\" in stripped or not stripped.isprintable():
            raise ValueError("an AE title is 1-16 printable characters without a backslash")
        return stripped

    @field_validator("uid_prefix")
    @classmethod
    def _uid_prefix(cls, value: str) -> str:
        body = value.rstrip(".")
        if not body or len(value) > 40 or not all(p.isdigit() for p in body.split(".")):
            raise ValueError("a UID prefix is dotted digits, at most 40 characters, e.g. '1.2.3.'")
        return body + "."


class PeerSection(_Section):
    """A calling AE allowed to send to us."""

    ae_title: str
    #: if set, the peer must connect from this address
    host: str | None = None
    #: overrides settle.quiet_seconds for studies from this peer
    quiet_seconds: float | None = Field(default=None, gt=0)


class SecuritySection(_Section):
    """Who may talk to us, and how."""

    #: accept any calling AE title (only sensible on loopback or for testing)
    accept_unknown_callers: bool = False
    peers: tuple[PeerSection, ...] = (PeerSection(ae_title="STORESCU", host="127.0.0.1"),)
    tls_enabled: bool = False
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    #: CA bundle used to verify callers' client certificates
    tls_ca_certificates: Path | None = None
    tls_require_client_certificate: bool = True


class StorageSection(_Section):
    """Where received instances live."""

    path: Path = Path("var/storage")
    #: refuse new instances (0xA700) when less than this is free
    min_free_mb: int = Field(default=1024, ge=0)
    #: refuse new instances when the volume is fuller than this
    max_used_percent: float = Field(default=98.0, gt=0, le=100)
    #: fsync files and directories before acknowledging (turn off only for tests)
    fsync: bool = True


class DatabaseSection(_Section):
    """The SQL ledger."""

    url: str = "sqlite:///var/msvlm-node.db"
    echo: bool = False


class SettleSection(_Section):
    """When a study counts as complete."""

    after_release_seconds: float = Field(default=5.0, ge=0)
    quiet_seconds: float = Field(default=60.0, gt=0)
    interval_seconds: float = Field(default=2.0, gt=0)
    #: only studies with an instance received within this many hours are examined
    lookback_hours: float = Field(default=168.0, gt=0)


class ModelSection(_Section):
    """Which MS-VLM weights to run, and how."""

    #: a Hugging Face style folder (config.json, *.safetensors, tokenizer files);
    #: unset = the bundled demo model under models/weights/demo
    path: Path | None = None
    #: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: "auto" (bfloat16 on a GPU with bf16 support, else mixed; float32 on CPU), "float32",
    #: "mixed" (float32 weights, bf16 autocast) or "bfloat16" (bf16 weights and compiled
    #: decoding: fastest on a GPU, ~20 s of compilation at start)
    precision: Literal["auto", "float32", "mixed", "bfloat16"] = "auto"
    max_new_tokens: int = Field(default=256, ge=1)
    num_beams: int = Field(default=1, ge=1)
    #: torch threads on CPU; 0 = torch's default (every core). With several workers
    #: on one machine, give each cores / workers so they do not fight over the cores
    cpu_threads: int = Field(default=0, ge=0)


class WorkerSection(_Section):
    """How inference workers claim and run jobs."""

    #: defaults to "<host>:<pid>"
    name: str | None = None
    #: a job whose worker has not renewed its lease for this long goes back to pending
    lease_seconds: float = Field(default=60.0, gt=1)
    max_attempts: int = Field(default=3, ge=1)
    #: a job running longer than this fails with a time-limit error
    job_timeout_seconds: float = Field(default=900.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)


class DestinationSection(_Section):
    """A DICOM node that receives our SRs by C-STORE."""

    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False


class DeliverySection(_Section):
    destinations: tuple[DestinationSection, ...] = ()
    #: attempts per destination before giving up
    max_attempts: int = Field(default=10, ge=1)
    #: delay before retry n is backoff_seconds * 2**(n-1), capped at max_backoff_seconds
    backoff_seconds: float = Field(default=5.0, gt=0)
    max_backoff_seconds: float = Field(default=600.0, gt=0)
    interval_seconds: float = Field(default=1.0, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)


class ReportSection(_Section):
    """The DICOM Structured Report we write."""

    #: "basic" (Basic Text SR) or "comprehensive" (Comprehensive SR)
    document: Literal["basic", "comprehensive"] = "basic"
    series_description: str = "AI report (MS-VLM, preliminary)"
    institution_name: str | None = None
    #: validate every SR with dciodvfy and dsrdump before storing or sending it
    validate_with_dicom3tools: bool = True


class RetentionSection(_Section):
    """When received instances and local SR copies are removed (ledger rows are always kept)."""

    #: remove a study's received instances this many days after its last instance (unset: keep)
    instances_after_days: float | None = Field(default=None, gt=0)
    #: remove a study's received instances as soon as its SR reached every destination
    instances_after_delivery: bool = False
    #: remove local SR copies this many days after they were written (unset: keep)
    sr_copies_after_days: float | None = Field(default=None, gt=0)
    #: above this disk usage, remove the oldest delivered studies ...
    emergency_used_percent: float = Field(default=95.0, gt=0, le=100)
    #: ... until usage is back below this
    emergency_target_percent: float = Field(default=90.0, gt=0, le=100)
    #: delete ``audit`` rows this many days old (unset: keep; mind your rules on access logs)
    audit_after_days: float | None = Field(default=None, gt=0)
    interval_seconds: float = Field(default=300.0, gt=0)


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


# --- [api] (admin HTTP API, dashboard, /metrics; node/api.py) ---
class ApiSection(_Section):
    """The admin HTTP API, the dashboard and Prometheus ``/metrics``.

    Loopback by default. Requests from other addresses need ``Authorization:
    Bearer <token>`` with one of ``tokens`` (SecretStr: never shown in a repr or log).
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: bearer tokens accepted from non-loopback clients; none = loopback clients only
    tokens: tuple[SecretStr, ...] = ()
    #: treat loopback clients as authorized without a token (turn off behind a local reverse proxy)
    trust_loopback: bool = True
    #: /metrics needs a token from non-loopback clients too (Prometheus: authorization.credentials)
    metrics_require_token: bool = True
    #: dashboard auto-refresh period in seconds (0 = off; ?refresh=N overrides per page)
    dashboard_refresh_seconds: int = Field(default=10, ge=0, le=3600)


# --- end [api] ---


class Settings(BaseSettings):
    """Every setting of the node. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    node: NodeSection = NodeSection()
    security: SecuritySection = SecuritySection()
    storage: StorageSection = StorageSection()
    database: DatabaseSection = DatabaseSection()
    settle: SettleSection = SettleSection()
    grouping: GroupingSettings = GroupingSettings()
    volume: VolumeSettings = VolumeSettings()
    model: ModelSection = ModelSection()
    worker: WorkerSection = WorkerSection()
    delivery: DeliverySection = DeliverySection()
    report: ReportSection = ReportSection()
    retention: RetentionSection = RetentionSection()
    logging: LoggingSection = LoggingSection()
    api: ApiSection = ApiSection()  # [api]: node/api.py

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; environment variables must win.
        return (env_settings, init_settings)


def config_path_from_env(explicit: str | Path | None) -> Path | None:
    """The config file to read: the explicit path, else ``$MSVLM_NODE_CONFIG``, else none."""
    chosen = explicit if explicit is not None else os.environ.get(CONFIG_ENV)
    return Path(chosen) if chosen else None


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, merge and validate the settings; raise :class:`ConfigError` naming each bad key."""
    file_path = config_path_from_env(path)
    data: dict[str, Any] = {}
    if file_path is not None:
        try:
            data = tomllib.loads(file_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {file_path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file_path} is not valid TOML: {exc}") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file_path)) from exc


def _describe(exc: ValidationError, file_path: Path | None) -> str:
    where = f" in {file_path}" if file_path else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
