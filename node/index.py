"""The study index: what the receive side learns from an instance and records.

:func:`inspect_encoded` parses only the header of the bytes as received (never
the pixel data) and checks that the Pixel Data element is complete, so a
truncated transfer is refused instead of being stored. :class:`Indexer` writes
the study, series and instance rows; the instance row commits in the same
transaction as its parents, after the file is durable.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar, cast

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from sqlalchemy import Connection, Engine, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from node.errors import DatabaseError, InvalidUIDError, NodeError
from node.schema import Association, Instance, Series, Study, utcnow
from node.sop_classes import (
    CT_MR_IMAGE_STORAGE,
    OWN_MANUFACTURER,
    SECONDARY_CAPTURE_STORAGE,
    SR_STORAGE,
)
from node.statuses import Status
from node.store import validate_uid

PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_N = TypeVar("_N", int, float)
#: UIDs are read whole (validation, not truncation, refuses one that is too long)
_UID_READ = 4096


class RejectedInstance(NodeError):
    """An instance we refuse, with the DIMSE status to answer."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InstanceInfo:
    """The header facts the index needs, taken from one received instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    own_output: bool
    study: dict[str, Any]
    series: dict[str, Any]


def inspect_encoded(
    data: bytes, *, requested_sop_class: str, requested_sop_instance: str, transfer_syntax: str
) -> InstanceInfo:
    """Parse and check one received dataset (Part 10 bytes with file meta)."""
    stream = BytesIO(data)
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for malformed input
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"unparseable dataset: {exc}") from exc
    sop_class = _text(ds, "SOPClassUID", _UID_READ) or ""
    sop_instance = _text(ds, "SOPInstanceUID", _UID_READ) or ""
    if not sop_class or not sop_instance:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, "dataset has no SOP Class/Instance UID")
    if sop_class != requested_sop_class or sop_instance != requested_sop_instance:
        raise RejectedInstance(
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class/Instance UID in the dataset differ from the C-STORE request",
        )
    try:
        study_uid = validate_uid(_text(ds, "StudyInstanceUID", _UID_READ) or "", "Study Instance UID")
        series_uid = validate_uid(_text(ds, "SeriesInstanceUID", _UID_READ) or "", "Series Instance UID")
        validate_uid(sop_instance, "SOP Instance UID")
    except InvalidUIDError as exc:
        status = Status.MISSING_ATTRIBUTE if "missing" in str(exc) else Status.INVALID_UID
        raise RejectedInstance(status, str(exc)) from exc

    own_output = False
    if sop_class in SR_STORAGE:
        if _text(ds, "Manufacturer", 64) != OWN_MANUFACTURER:
            raise RejectedInstance(
                Status.SOP_CLASS_NOT_SUPPORTED,
                "Structured Reports are accepted only from msvlm-node itself",
            )
        own_output = True
    elif sop_class in CT_MR_IMAGE_STORAGE or sop_class in SECONDARY_CAPTURE_STORAGE:
        _check_pixel_data_complete(data, stream.tell(), transfer_syntax)
    else:  # negotiation should have prevented this
        raise RejectedInstance(Status.SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} not accepted")

    return InstanceInfo(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        transfer_syntax_uid=transfer_syntax,
        instance_number=_number(ds, "InstanceNumber", int),
        own_output=own_output,
        study={
            "patient_id": _text(ds, "PatientID", 64),
            "patient_name": _text(ds, "PatientName", 324),
            "accession_number": _text(ds, "AccessionNumber", 16),
            "study_date": _text(ds, "StudyDate", 8),
            "study_description": _text(ds, "StudyDescription", 64),
        },
        series={
            "modality": _text(ds, "Modality", 16),
            "sop_class_uid": sop_class,
            "series_number": _number(ds, "SeriesNumber", int),
            "series_description": _text(ds, "SeriesDescription", 64),
            "image_type": _text(ds, "ImageType", 128),
            "body_part": _text(ds, "BodyPartExamined", 16),
            "image_orientation": _text(ds, "ImageOrientationPatient", 128),
            "slice_thickness": _number(ds, "SliceThickness", float),
            "series_time": _text(ds, "SeriesTime", 16),
            "acquisition_time": _text(ds, "AcquisitionTime", 16),
            "contrast_agent": _text(ds, "ContrastBolusAgent", 64),
            "contrast_route": _text(ds, "ContrastBolusRoute", 64),
            "contrast_start_time": _text(ds, "ContrastBolusStartTime", 16),
            "scanning_sequence": _text(ds, "ScanningSequence", 64),
            "sequence_variant": _text(ds, "SequenceVariant", 64),
            "echo_time": _number(ds, "EchoTime", float),
            "repetition_time": _number(ds, "RepetitionTime", float),
            "inversion_time": _number(ds, "InversionTime", float),
            "own_output": own_output,
        },
    )


def _check_pixel_data_complete(data: bytes, offset: int, transfer_syntax: str) -> None:
    """Refuse a dataset whose Pixel Data is missing or shorter than it declares.

    Reads the element header at ``offset`` (where pydicom stopped) and compares
    the declared length with the bytes received; for encapsulated pixel data
    the stream must end with the sequence delimiter. Deflated datasets are
    checked by inflating them fully, since their byte offsets are not raw.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            full = pydicom.dcmread(BytesIO(data))
            _ = full.PixelData
        except Exception as exc:
            raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"deflated dataset incomplete: {exc}") from exc
        return
    if offset >= len(data):
        raise RejectedInstance(Status.MISSING_ATTRIBUTE, "image has no Pixel Data")
    endian = ">" if transfer_syntax == ExplicitVRBigEndian else "<"
    group, element = struct.unpack(endian + "HH", data[offset : offset + 4])
    if (group << 16 | element) not in PIXEL_DATA_TAGS:
        raise RejectedInstance(Status.MISSING_ATTRIBUTE, "image has no Pixel Data")
    if transfer_syntax == ImplicitVRLittleEndian:
        (length,) = struct.unpack("<I", data[offset + 4 : offset + 8])
        value_start = offset + 8
    else:
        (length,) = struct.unpack(endian + "I", data[offset + 8 : offset + 12])
        value_start = offset + 12
    if length == 0xFFFFFFFF:
        if not data.endswith(_SEQUENCE_DELIMITER):
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND, "encapsulated Pixel Data is truncated (no sequence delimiter)"
            )
        return
    received = len(data) - value_start
    if length > received:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND,
            f"dataset truncated: Pixel Data declares {length} bytes, {received} received",
        )


#: value representations whose raw bytes, when ASCII, read as pydicom reads them: each value
#: (backslash-separated) with trailing spaces and NULs removed
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "IS", "LO", "PN", "SH", "TM", "UI"})


def _raw_text(ds: Dataset, keyword: str) -> str | None:
    """The element's value read straight from its raw bytes, "" when absent or empty.

    Why: pydicom converts an element on first access, about 17 µs each, and the index reads
    some 28 of them per received instance: half of the header's parse time at ingest. For
    ASCII values of the plain VRs (`_PLAIN_VRS`) the bytes already are the text. Returns
    None when they are not (another VR, another character set, an element pydicom has
    already converted): the caller then asks pydicom.
    """
    raw = ds.get_item(tag_for_keyword(keyword))  # type: ignore[arg-type]  # our keywords are known
    if raw is None:
        return ""
    if not isinstance(raw, RawDataElement):
        return None
    vr = raw.VR or dictionary_VR(raw.tag)
    if vr not in _PLAIN_VRS:
        return None
    if not raw.value:
        return ""
    try:
        text = bytes(raw.value).decode("ascii")
    except UnicodeDecodeError:
        return None
    return "\\".join(value.rstrip("\0 ") for value in text.split("\\"))


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    fast = _raw_text(ds, keyword)
    if fast is not None:
        return fast[:limit] or None
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None or value == "":
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, pydicom.multival.MultiValue) else str(value)
    return text[:limit] or None


def _number(ds: Dataset, keyword: str, kind: type[_N]) -> _N | None:
    """The element's single value as `kind`, None when absent, empty or not a number."""
    fast = _raw_text(ds, keyword)
    if fast is not None and "\\" not in fast:
        try:
            return kind(fast) if fast.strip() else None
        except ValueError:
            pass  # pydicom decides (it reads "12.0" as the integer 12)
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else kind(value)
    except Exception:
        return None


def receiver_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(eq=False)
class _PendingRow:
    """An instance row waiting for the writer thread; ``done`` is set once it is settled."""

    info: InstanceInfo
    path: str
    size: int
    association_id: int | None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class DriverStatement:
    """A Core statement compiled once for the engine's dialect, then run on the DBAPI cursor.

    At ingest the index writer runs one upsert per instance, and SQLAlchemy's work around
    each execution (cache lookup, parameter set-up, result wrapping) was most of the
    writer's time, against almost nothing in the database itself. The SQL, the parameter
    order and the type conversions all still come from SQLAlchemy, compiled here once;
    only the per-row execution goes straight to the driver, on the connection (and in
    the transaction) SQLAlchemy manages.
    """

    def __init__(self, statement: Any, engine: Engine):
        self._statement = statement
        self._dialect = engine.dialect
        self._compiled: Any = None  # compiled for the parameter names of the first execution
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error

    def _compile(self, keys: list[str]) -> None:
        compiled = self._statement.compile(dialect=self._dialect, column_keys=keys)
        self._sql = compiled.string
        self._positions = compiled.positiontup  # None for named paramstyles (psycopg)
        self._processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.bind_processor(self._dialect)) is not None
        }
        self._compiled = compiled

    def first(self, conn: Connection, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Execute with ``params`` (always the same names); the first row returned, or None.

        Driver errors become :class:`DatabaseError`.
        """
        if self._compiled is None:
            self._compile(list(params))
        values = self._compiled.construct_params(params)
        for name, processor in self._processors.items():
            values[name] = processor(values[name])
        arguments: Any = values if self._positions is None else [values[n] for n in self._positions]
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self._sql, arguments)
            row = cursor.fetchone()
        except self._driver_error as exc:
            raise DatabaseError(f"index write failed: {type(exc).__name__}: {exc}") from exc
        finally:
            cursor.close()
        return tuple(row) if row is not None else None


class WriteLock:
    """Serialises write transactions to an embedded SQLite file across receiver processes.

    SQLite's own busy handler polls with growing sleeps (1, 2, 5 ... 100 ms), so under a
    steady stream one receiver process could keep the write lock while the other slept:
    measured 42 images/s instead of 270 with two processes on one file. A blocking
    ``flock`` wakes the waiter as soon as the lock is free. A thread lock comes first
    because ``flock`` does not exclude threads sharing the descriptor. Without a path
    (PostgreSQL, in-memory SQLite) it does nothing: the server arbitrates.
    """

    def __init__(self, path: Path | None):
        self._thread_lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640) if path is not None else None

    @classmethod
    def for_engine(cls, engine: Engine) -> WriteLock:
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            return cls(Path(f"{database}.write-lock"))
        return cls(None)

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._fd is None:
            yield
            return
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Indexer:
    """Writes the receive side's rows. Safe to share between association threads.

    Group commit: association threads hand their instance rows to one writer thread,
    which commits everything queued in one transaction (one fsync of the WAL for many
    instances) and then wakes each waiting thread with its own outcome, so an
    instance is still acknowledged only after its row is committed. The rows are
    written with one SQLAlchemy Core upsert built once, not the ORM: at hundreds of
    instances per second the ORM's bookkeeping was a fifth of the receiver's CPU.
    """

    #: rows per transaction at most; a batch forms from whatever queued during the last commit
    MAX_BATCH = 64
    #: how long an association thread waits for its row before answering "database unavailable"
    WAIT_SECONDS = 120.0

    def __init__(self, engine: Engine, factory: sessionmaker[Session]):
        self.engine = engine
        self.factory = factory
        self.write_lock = WriteLock.for_engine(engine)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._series_study: dict[str, str] = {}
        self._queue: list[_PendingRow] = []
        self._wakeup = threading.Condition()
        self._closed = False
        #: the writer thread's own connection, kept open: checking one out of the pool and
        #: returning it for every batch was a quarter of the writer's time at ingest
        self._conn: Connection | None = None
        table = cast(Table, Instance.__table__)
        upsert = self._insert(table)
        upsert_instance = upsert.on_conflict_do_update(
            index_elements=[table.c.sop_instance_uid],
            set_={
                "transfer_syntax_uid": upsert.excluded.transfer_syntax_uid,
                "instance_number": upsert.excluded.instance_number,
                "size_bytes": upsert.excluded.size_bytes,
                "received_at": upsert.excluded.received_at,
                "association_id": upsert.excluded.association_id,
                "receive_count": table.c.receive_count + 1,
            },
            # a SOP Instance UID may only come back in the series it first came in
            where=table.c.series_instance_uid == upsert.excluded.series_instance_uid,
        ).returning(table.c.id)
        self._upsert_instance = DriverStatement(upsert_instance, engine)
        self._writer = threading.Thread(target=self._write_loop, name="index-writer", daemon=True)
        self._writer.start()

    def record_instance(
        self, info: InstanceInfo, *, path: str, size: int, association_id: int | None
    ) -> None:
        """Insert or refresh the instance row (and its study/series); return once committed.

        Raises :class:`RejectedInstance` for a UID conflict, SQLAlchemy's error when the
        transaction failed, and :class:`DatabaseError` when the writer is stopped or stuck.
        """
        self._check_series(info)
        pending = _PendingRow(info, path, size, association_id)
        with self._wakeup:
            if self._closed:
                raise DatabaseError("the index writer is stopped")
            self._queue.append(pending)
            self._wakeup.notify()
        if not pending.done.wait(self.WAIT_SECONDS):
            raise DatabaseError(f"index row not committed within {self.WAIT_SECONDS:.0f} s")
        if pending.error is not None:
            raise pending.error

    def close(self) -> None:
        """Commit what is queued, stop the writer thread and release the write lock."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._writer.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.write_lock.close()

    def _check_series(self, info: InstanceInfo) -> None:
        known_study = self._series_study.get(info.series_instance_uid)
        if known_study is not None and known_study != info.study_instance_uid:
            raise RejectedInstance(
                Status.CONFLICTING_INSTANCE, "Series Instance UID belongs to another study"
            )

    def _write_loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue:
                    return
                batch = self._queue[: self.MAX_BATCH]
                del self._queue[: self.MAX_BATCH]
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - every waiter must learn the outcome
                for pending in batch:
                    if pending.error is None:
                        pending.error = exc
            finally:
                for pending in batch:
                    pending.done.set()

    def _commit(self, batch: list[_PendingRow]) -> None:
        """One transaction for the whole batch; a rejected row does not fail the others.

        Rejections are decided before anything of that row is written (or, for the
        upsert, by a no-op), so no savepoints are needed.
        """
        now = utcnow()
        if self._conn is None:
            self._conn = self.engine.connect()
        conn = self._conn
        try:
            with self.write_lock.held(), conn.begin():
                for pending in batch:
                    try:
                        self._write(conn, pending, now)
                    except RejectedInstance as exc:
                        pending.error = exc
        except BaseException:
            self._conn = None  # a broken connection is not reused; the next batch opens a fresh one
            conn.close()
            raise
        for pending in batch:
            if pending.error is None:
                self._series_study[pending.info.series_instance_uid] = pending.info.study_instance_uid

    def _write(self, conn: Connection, pending: _PendingRow, now: datetime) -> None:
        info = pending.info
        self._check_series(info)
        if info.series_instance_uid not in self._series_study:
            self._ensure_parents(conn, info, now)
        row = self._upsert_instance.first(
            conn,
            {
                "sop_instance_uid": info.sop_instance_uid,
                "sop_class_uid": info.sop_class_uid,
                "series_instance_uid": info.series_instance_uid,
                "study_instance_uid": info.study_instance_uid,
                "transfer_syntax_uid": info.transfer_syntax_uid,
                "instance_number": info.instance_number,
                "path": pending.path,
                "size_bytes": pending.size,
                "received_at": now,
                "receive_count": 1,
                "association_id": pending.association_id,
            },
        )
        if row is None:
            raise RejectedInstance(
                Status.CONFLICTING_INSTANCE, "SOP Instance UID already stored in another series"
            )

    def _ensure_parents(self, conn: Connection, info: InstanceInfo, now: datetime) -> None:
        owner = conn.execute(
            select(Series.study_instance_uid).where(Series.series_instance_uid == info.series_instance_uid)
        ).scalar_one_or_none()
        if owner is None:
            conn.execute(
                self._insert(Study)
                .values(study_instance_uid=info.study_instance_uid, first_received_at=now, **info.study)
                .on_conflict_do_nothing(index_elements=[Study.study_instance_uid])
            )
            conn.execute(
                self._insert(Series)
                .values(
                    series_instance_uid=info.series_instance_uid,
                    study_instance_uid=info.study_instance_uid,
                    first_received_at=now,
                    **info.series,
                )
                .on_conflict_do_nothing(index_elements=[Series.series_instance_uid])
            )
            # another receiver (PostgreSQL) may have created the series first
            owner = conn.execute(
                select(Series.study_instance_uid).where(
                    Series.series_instance_uid == info.series_instance_uid
                )
            ).scalar_one()
        if owner != info.study_instance_uid:
            raise RejectedInstance(
                Status.CONFLICTING_INSTANCE, "Series Instance UID belongs to another study"
            )

    def open_association(
        self,
        *,
        calling_ae: str,
        called_ae: str,
        host: str,
        port: int,
        tls: bool,
        outcome: str = "open",
        rejection_code: str | None = None,
        rejection_reason: str | None = None,
    ) -> int:
        with self.write_lock.held(), self.factory() as session, session.begin():
            row = Association(
                calling_ae=calling_ae[:16],
                called_ae=called_ae[:16],
                peer_host=host[:64],
                peer_port=port,
                tls=tls,
                receiver=receiver_identity(),
                started_at=utcnow(),
                outcome=outcome,
                rejection_code=rejection_code,
                rejection_reason=rejection_reason,
                ended_at=utcnow() if outcome == "rejected" else None,
            )
            session.add(row)
            session.flush()
            return row.id

    def close_association(
        self, association_id: int, *, outcome: str, received: int, failed: int, nbytes: int
    ) -> None:
        with self.write_lock.held(), self.factory() as session, session.begin():
            session.execute(
                update(Association)
                .where(Association.id == association_id)
                .values(
                    ended_at=utcnow(),
                    outcome=outcome,
                    instances_received=received,
                    instances_failed=failed,
                    bytes_received=nbytes,
                )
            )
