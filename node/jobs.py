"""The job state machine: the one place where a job changes state.

Every change is a conditional ``UPDATE ... WHERE state IN (expected)`` plus a
:class:`~node.schema.JobEvent` row, in the caller's transaction, so a state and
its ledger entry commit together, and two processes can never both move the
same job (the loser's UPDATE matches no row and raises :class:`StaleJobState`).
Claiming uses ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so many workers share one
queue without waiting on each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from node.errors import NodeError
from node.schema import Job, JobEvent, utcnow


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: every legal transition; anything else is a bug and raises
ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.PENDING, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset({JobState.PENDING}),
    JobState.FAILED: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset({JobState.PENDING}),
}


class IllegalTransition(NodeError):
    """A transition the state machine does not allow."""


class StaleJobState(NodeError):
    """The job was no longer in the expected state (another process moved it)."""


def transition(
    session: Session,
    job_id: int,
    *,
    expected: Iterable[JobState],
    to: JobState,
    actor: str,
    detail: str | None = None,
    values: dict[str, Any] | None = None,
    worker: str | None = None,
) -> None:
    """Move a job from one of ``expected`` to ``to`` and record the event.

    ``worker``, when given, must also match the job's worker: a worker that lost
    its lease cannot finish a job someone else has since claimed.
    """
    sources = tuple(expected)
    for source in sources:
        if to not in ALLOWED[source]:
            raise IllegalTransition(f"job {job_id}: {source} -> {to} is not allowed")
    now = utcnow()
    stamps: dict[str, Any] = {"state": to.value}
    if to in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        stamps["finished_at"] = now
        stamps["lease_expires_at"] = None
    stmt = update(Job).where(Job.id == job_id, Job.state.in_([s.value for s in sources]))
    if worker is not None:
        stmt = stmt.where(Job.worker == worker)
    result = session.execute(stmt.values(**stamps, **(values or {})))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        current = session.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
        raise StaleJobState(f"job {job_id} is {current or 'gone'}, not {'/'.join(sources)}")
    from_state = sources[0] if len(sources) == 1 else None
    session.add(
        JobEvent(job_id=job_id, at=now, from_state=from_state, to_state=to.value, actor=actor, detail=detail)
    )


def claim_next(session: Session, *, worker: str, lease_seconds: float) -> Job | None:
    """Claim the oldest pending job for ``worker``; ``None`` when there is none."""
    stmt = select(Job.id).where(Job.state == JobState.PENDING.value).order_by(Job.created_at, Job.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    job_id = session.execute(stmt).scalar_one_or_none()
    if job_id is None:
        return None
    now = utcnow()
    transition(
        session,
        job_id,
        expected=[JobState.PENDING],
        to=JobState.RUNNING,
        actor=worker,
        values={
            "worker": worker,
            "started_at": now,
            "heartbeat_at": now,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "attempts": Job.attempts + 1,
            "error": None,
        },
    )
    return session.get(Job, job_id, populate_existing=True)


def renew_lease(session: Session, job_id: int, *, worker: str, lease_seconds: float) -> bool:
    """Extend a running job's lease; ``False`` if the worker no longer holds it."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value, Job.worker == worker)
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def reap_expired(session: Session, *, now: datetime | None = None, actor: str) -> list[int]:
    """Return jobs whose worker's lease expired to ``pending``, or fail them past max attempts."""
    now = now or utcnow()
    expired = session.execute(
        select(Job.id, Job.attempts, Job.max_attempts, Job.worker).where(
            Job.state == JobState.RUNNING.value, Job.lease_expires_at < now
        )
    ).all()
    moved = []
    for job_id, attempts, max_attempts, worker in expired:
        reason = f"worker {worker} stopped renewing its lease (attempt {attempts} of {max_attempts})"
        try:
            if attempts >= max_attempts:
                transition(
                    session,
                    job_id,
                    expected=[JobState.RUNNING],
                    to=JobState.FAILED,
                    actor=actor,
                    detail=reason,
                    values={"error": f"gave up: {reason}"},
                )
            else:
                transition(
                    session,
                    job_id,
                    expected=[JobState.RUNNING],
                    to=JobState.PENDING,
                    actor=actor,
                    detail=reason,
                    values={"worker": None, "lease_expires_at": None, "error": reason},
                )
        except StaleJobState:
            continue
        moved.append(job_id)
    return moved
