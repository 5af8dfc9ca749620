"""The SQL ledger's tables (SQLAlchemy 2.0 typed models).

Natural DICOM keys (Study/Series Instance UID) are the primary keys of studies
and series, so admins can join on the UIDs they see in their PACS and the
receive path can insert without id round trips. Counts and "last received"
times are derived with queries rather than stored, so there is no hot row that
parallel associations would fight over.

The schema only changes through an Alembic migration in ``migrations/``; a test
fails when this file and the migrations drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

UID = String(64)
AE = String(16)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp in the ledger is UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns timezone-aware datetimes on SQLite and PostgreSQL alike.

    SQLite has no time zones and hands back naive values; comparing those with
    aware ones raises, so every value is normalised here, in one place.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use node.schema.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Association(Base):
    """One DICOM association, accepted or rejected, with what it brought."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    calling_ae: Mapped[str] = mapped_column(AE)
    called_ae: Mapped[str] = mapped_column(AE)
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    #: which receiver process took it ("host:pid")
    receiver: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: open, released, aborted, rejected
    outcome: Mapped[str] = mapped_column(String(16), default="open")
    #: why it was rejected, as a fixed code (node.receive.RejectionCode) to group and count by
    rejection_code: Mapped[str | None] = mapped_column(String(16))
    #: the same for a human: names the AE titles and host involved
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    instances_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_associations_started_at", "started_at"),)


class Study(Base):
    """A study we have received at least one instance of."""

    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: the arrivals (series x instance counts) the last settle decision covered;
    #: written only by settle, so receiving never contends on this row
    settled_arrival_key: Mapped[str | None] = mapped_column(String(64))
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Series(Base):
    """A series, with the tags grouping needs to label it without reopening files."""

    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("studies.study_instance_uid", ondelete="CASCADE"), index=True
    )
    modality: Mapped[str | None] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str | None] = mapped_column(String(128))
    body_part: Mapped[str | None] = mapped_column(String(16))
    image_orientation: Mapped[str | None] = mapped_column(String(128))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    series_time: Mapped[str | None] = mapped_column(String(16))
    acquisition_time: Mapped[str | None] = mapped_column(String(16))
    contrast_agent: Mapped[str | None] = mapped_column(String(64))
    contrast_route: Mapped[str | None] = mapped_column(String(64))
    contrast_start_time: Mapped[str | None] = mapped_column(String(16))
    scanning_sequence: Mapped[str | None] = mapped_column(String(64))
    sequence_variant: Mapped[str | None] = mapped_column(String(64))
    echo_time: Mapped[float | None] = mapped_column(Float)
    repetition_time: Mapped[float | None] = mapped_column(Float)
    inversion_time: Mapped[float | None] = mapped_column(Float)
    #: an SR this node (or another msvlm-node) wrote: stored, never processed again
    own_output: Mapped[bool] = mapped_column(Boolean, default=False)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Instance(Base):
    """One stored SOP instance. Its row exists only once its file is durable."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("series.series_instance_uid", ondelete="CASCADE"), index=True
    )
    #: denormalised from the series: settle asks "latest instance per study" a lot
    study_instance_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    #: relative to the storage root
    path: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: how many times this SOP Instance UID arrived (the latest copy is kept)
    receive_count: Mapped[int] = mapped_column(Integer, default=1)
    association_id: Mapped[int | None] = mapped_column(
        ForeignKey("associations.id", ondelete="SET NULL"), index=True
    )
    #: when retention removed the file (the row stays: the ledger is kept)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_instances_study_received", "study_instance_uid", "received_at"),
        Index("ix_instances_received_at", "received_at"),
    )


class Job(Base):
    """One model run over one study's multi-view input. The only hand-off between stages.

    States: pending -> running -> succeeded | failed (and cancelled by an admin);
    every transition is a :class:`JobEvent` row committed with it (node.jobs).
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("studies.study_instance_uid", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(16), default="pending")
    #: SHA-256 of the manifest's input (views and their slices)
    input_fingerprint: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[str] = mapped_column(Text)
    view_count: Mapped[int] = mapped_column(Integer, default=0)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    #: which completeness signal settled the study: after_release, quiet, late_series, requested
    settle_signal: Mapped[str] = mapped_column(String(32))
    supersedes_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    #: when the study's last instance arrived (turnaround starts here)
    last_instance_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)
    load_seconds: Mapped[float | None] = mapped_column(Float)
    infer_seconds: Mapped[float | None] = mapped_column(Float)
    report_seconds: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint(
            "study_instance_uid", "input_fingerprint", "model_version", "weights_sha256", name="uq_jobs_input"
        ),
        Index("ix_jobs_state_created", "state", "created_at"),
    )


class JobEvent(Base):
    """The ledger of every job state change: who, when, from what, why."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(Text)


class Result(Base):
    """What a succeeded job produced: the report, the coded findings, the SR."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    report_text: Mapped[str] = mapped_column(Text)
    impression_text: Mapped[str] = mapped_column(Text)
    #: JSON list of {key, display, code, present, probability}
    findings: Mapped[str] = mapped_column(Text)
    sr_sop_instance_uid: Mapped[str] = mapped_column(UID)
    sr_series_instance_uid: Mapped[str] = mapped_column(UID)
    #: relative to the storage root
    sr_path: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    superseded_by_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    #: when retention removed the local SR copy
    sr_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RetentionEvent(Base):
    """One retention action: which study's files went, why, and how much space came back."""

    __tablename__ = "retention_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    #: age, delivered, emergency, sr_age
    reason: Mapped[str] = mapped_column(String(16))
    files_removed: Mapped[int] = mapped_column(Integer)
    bytes_freed: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(128))


class Delivery(Base):
    """One attempt to C-STORE a job's SR to one destination, with what came back."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    ae_title: Mapped[str] = mapped_column(AE)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    #: scheduled -> sending -> succeeded | failed
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    not_before: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str | None] = mapped_column(String(128))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_deliveries_state_not_before", "state", "not_before"),)


# --- audit (admin HTTP API; node/audit.py, migration 0004) ---
class AuditEntry(Base):
    """Who read patient data or changed state through the admin API, what, when, with what outcome.

    A state change's entry commits in the same transaction as the change, so the
    ledger never shows a retried job without the request that retried it.
    """

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: "loopback" or "token:<8 hex of the token's SHA-256>"; never the token itself
    actor: Mapped[str] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    #: path and query string as requested
    path: Mapped[str] = mapped_column(String(512))
    status: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_audit_at", "at"),)


# --- end audit ---
