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

    __table_args__ = (Index("ix_instances_study_received", "study_instance_uid", "received_at"),)
