"""Retention: remove received instances and local SR copies, keep every ledger row.

Rules (``[retention]``): instances N days after a study's last instance, or as
soon as its SR reached every destination; SR copies N days after they were
written; and an emergency clean-up of the oldest delivered studies when the
disk passes a high watermark. Each removal is a ``retention_events`` row and
marks the rows it concerns (``instances.purged_at``, ``results.sr_purged_at``).
The one table whose rows are deleted is ``audit``, and only when
``audit_after_days`` says so: an open dashboard adds a row per refresh.

A study is never touched while it is in flight: instances newer than its last
settle, a job pending or running, or a delivery scheduled or sending. Removal
only takes rows that are still as they were when checked, so an instance
re-sent meanwhile keeps its new file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from node.config import Settings
from node.jobs import JobState
from node.schema import AuditEntry, Delivery, Instance, Job, Result, RetentionEvent, Study, utcnow
from node.store import InstanceStore

log = logging.getLogger(__name__)

BATCH = 200
#: audit rows deleted per transaction (short transactions beside the API's writes)
AUDIT_BATCH = 5000


@dataclass(frozen=True)
class RetentionContext:
    settings: Settings
    factory: sessionmaker[Session]
    store: InstanceStore
    actor: str


def _settled_idle_studies(
    session: Session, *, received_before: datetime | None
) -> list[tuple[str, datetime]]:
    """Studies with files left, fully settled, with no job or delivery in flight; oldest first."""
    last = (
        select(Instance.study_instance_uid.label("uid"), func.max(Instance.received_at).label("last"))
        .where(Instance.purged_at.is_(None))
        .group_by(Instance.study_instance_uid)
        .subquery()
    )
    busy_job = exists().where(
        Job.study_instance_uid == Study.study_instance_uid,
        Job.state.in_([JobState.PENDING.value, JobState.RUNNING.value]),
    )
    busy_delivery = exists().where(
        Delivery.job_id == Job.id,
        Job.study_instance_uid == Study.study_instance_uid,
        Delivery.state.in_(["scheduled", "sending"]),
    )
    stmt = (
        select(Study.study_instance_uid, last.c.last)
        .join(last, last.c.uid == Study.study_instance_uid)
        .where(Study.settled_at.is_not(None), Study.settled_at >= last.c.last, ~busy_job, ~busy_delivery)
        .order_by(last.c.last)
        .limit(BATCH)
    )
    if received_before is not None:
        stmt = stmt.where(last.c.last < received_before)
    return [(uid, at) for uid, at in session.execute(stmt)]


def _delivered(session: Session, study_uid: str) -> bool:
    """The study's latest job succeeded and every destination it was sent to acknowledged it."""
    job = session.execute(
        select(Job.id, Job.state).where(Job.study_instance_uid == study_uid).order_by(Job.id.desc()).limit(1)
    ).first()
    if job is None or job.state != JobState.SUCCEEDED.value:
        return False
    destinations = set(
        session.execute(select(Delivery.destination).where(Delivery.job_id == job.id)).scalars()
    )
    done = set(
        session.execute(
            select(Delivery.destination).where(Delivery.job_id == job.id, Delivery.state == "succeeded")
        ).scalars()
    )
    return destinations == done


def purge_study(ctx: RetentionContext, study_uid: str, reason: str, checked_at: datetime) -> tuple[int, int]:
    """Remove a study's files received up to ``checked_at``; returns (files, bytes)."""
    with ctx.factory() as session:
        rows = session.execute(
            select(Instance.id, Instance.path, Instance.size_bytes).where(
                Instance.study_instance_uid == study_uid,
                Instance.purged_at.is_(None),
                Instance.received_at <= checked_at,
            )
        ).all()
    files = freed = 0
    directories = set()
    for _, path, size in rows:
        target = ctx.store.absolute(path)
        try:
            target.unlink()
            files, freed = files + 1, freed + size
        except FileNotFoundError:
            pass
        directories.add(target.parent)
    now = utcnow()
    with ctx.factory() as session, session.begin():
        ids = [row_id for row_id, _, _ in rows]
        for start in range(0, len(ids), 500):
            session.execute(
                update(Instance)
                .where(Instance.id.in_(ids[start : start + 500]), Instance.received_at <= checked_at)
                .values(purged_at=now)
            )
        session.add(
            RetentionEvent(
                at=now,
                study_instance_uid=study_uid,
                reason=reason,
                files_removed=files,
                bytes_freed=freed,
                actor=ctx.actor,
            )
        )
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        for empty in (directory, directory.parent):
            try:
                empty.rmdir()
            except OSError:
                break
    log.info(
        "retention.purged",
        extra={"study_instance_uid": study_uid, "reason": reason, "files": files, "bytes": freed},
    )
    return files, freed


def purge_sr_copies(ctx: RetentionContext, older_than: datetime) -> int:
    with ctx.factory() as session:
        rows = session.execute(
            select(Result.id, Result.sr_path, Job.study_instance_uid)
            .join(Job, Job.id == Result.job_id)
            .where(
                Result.sr_purged_at.is_(None),
                Result.created_at < older_than,
                ~exists().where(
                    and_(Delivery.job_id == Result.job_id, Delivery.state.in_(["scheduled", "sending"]))
                ),
            )
            .limit(BATCH)
        ).all()
    for result_id, path, study_uid in rows:
        target = ctx.store.absolute(path)
        size = target.stat().st_size if target.exists() else 0
        target.unlink(missing_ok=True)
        with ctx.factory() as session, session.begin():
            session.execute(update(Result).where(Result.id == result_id).values(sr_purged_at=utcnow()))
            session.add(
                RetentionEvent(
                    study_instance_uid=study_uid,
                    reason="sr_age",
                    files_removed=1 if size else 0,
                    bytes_freed=size,
                    actor=ctx.actor,
                )
            )
    return len(rows)


def run_retention(ctx: RetentionContext, now: datetime | None = None) -> int:
    """Apply every configured rule once; returns how many studies or SR copies were cleaned."""
    now = now or utcnow()
    rules = ctx.settings.retention
    cleaned = 0
    with ctx.factory() as session:
        if rules.instances_after_days is not None:
            cutoff = now - timedelta(days=rules.instances_after_days)
            for uid, _ in _settled_idle_studies(session, received_before=cutoff):
                purge_study(ctx, uid, "age", now)
                cleaned += 1
        if rules.instances_after_delivery:
            for uid, _ in _settled_idle_studies(session, received_before=None):
                if _delivered(session, uid):
                    purge_study(ctx, uid, "delivered", now)
                    cleaned += 1
    if rules.sr_copies_after_days is not None:
        cleaned += purge_sr_copies(ctx, now - timedelta(days=rules.sr_copies_after_days))
    if ctx.store.disk_state().used_percent > rules.emergency_used_percent:
        cleaned += emergency_cleanup(ctx, now)
    if rules.audit_after_days is not None:
        prune_audit(ctx, now - timedelta(days=rules.audit_after_days))
    return cleaned


def prune_audit(ctx: RetentionContext, older_than: datetime) -> int:
    """Delete audit rows written before ``older_than``, in short batches; returns how many."""
    removed = 0
    while True:
        with ctx.factory() as session, session.begin():
            batch = select(AuditEntry.id).where(AuditEntry.at < older_than).limit(AUDIT_BATCH)
            deleted = session.execute(delete(AuditEntry).where(AuditEntry.id.in_(batch.scalar_subquery())))
        count = deleted.rowcount  # type: ignore[attr-defined]
        removed += count
        if count < AUDIT_BATCH:
            break
    if removed:
        log.info(
            "retention.audit_pruned",
            extra={"rows": removed, "older_than": older_than.isoformat(timespec="seconds")},
        )
    return removed


def emergency_cleanup(ctx: RetentionContext, now: datetime) -> int:
    """Remove the oldest delivered studies until usage is below the target."""
    rules = ctx.settings.retention
    log.warning(
        "retention.emergency",
        extra={
            "used_percent": round(ctx.store.disk_state().used_percent, 1),
            "target_percent": rules.emergency_target_percent,
        },
    )
    cleaned = 0
    with ctx.factory() as session:
        candidates = [
            uid for uid, _ in _settled_idle_studies(session, received_before=None) if _delivered(session, uid)
        ]
    for uid in candidates:
        if ctx.store.disk_state().used_percent <= rules.emergency_target_percent:
            break
        purge_study(ctx, uid, "emergency", now)
        cleaned += 1
    return cleaned
