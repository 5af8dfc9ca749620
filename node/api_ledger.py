"""The ledger questions only the HTTP API asks, and its readiness checks.

Job and study queries live in :mod:`node.admin` (shared with the CLI); here are
the delivery and association listings, cancelling a job, and ``/readyz``'s
checks. Each check says what failed in words an operator can act on, because a
503 from a load balancer's probe is otherwise a riddle.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from node.admin import NotFound, iso
from node.admin import parse_since as parse_duration_or_date
from node.api_models import Check
from node.config import Settings
from node.db import current_revision
from node.errors import DatabaseError, NodeError
from node.jobs import JobState, transition
from node.modelinfo import model_path
from node.schema import Association, Delivery, Job


def parse_since(value: str | None) -> datetime | None:
    """``since`` of a request (``24h``, ``7d``, an ISO date); a bad value is the client's 400."""
    if not value:
        return None
    try:
        return parse_duration_or_date(value)
    except NodeError as exc:
        raise HTTPException(status_code=400, detail=str(exc).replace("--since", "since")) from exc


def list_deliveries(
    session: Session, *, state: str | None = None, destination: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Recent delivery attempts, newest first."""
    stmt = (
        select(Delivery, Job.study_instance_uid)
        .join(Job, Job.id == Delivery.job_id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    if state:
        stmt = stmt.where(Delivery.state == state)
    if destination:
        stmt = stmt.where(Delivery.destination == destination)
    return [
        {
            "id": d.id,
            "job_id": d.job_id,
            "study_instance_uid": study,
            "destination": d.destination,
            "ae_title": d.ae_title,
            "host": d.host,
            "port": d.port,
            "attempt": d.attempt,
            "state": d.state,
            "not_before": iso(d.not_before),
            "started_at": iso(d.started_at),
            "finished_at": iso(d.finished_at),
            "worker": d.worker,
            "error": d.error,
            "status": None if d.status_code is None else f"0x{d.status_code:04X}",
        }
        for d, study in session.execute(stmt)
    ]


def list_associations(
    session: Session, *, outcome: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Recent associations, newest first (no patient data: peers and counts only)."""
    stmt = select(Association).order_by(Association.id.desc()).limit(limit)
    if outcome:
        stmt = stmt.where(Association.outcome == outcome)
    return [
        {
            "id": a.id,
            "calling_ae": a.calling_ae,
            "called_ae": a.called_ae,
            "peer_host": a.peer_host,
            "peer_port": a.peer_port,
            "tls": a.tls,
            "receiver": a.receiver,
            "started_at": iso(a.started_at),
            "ended_at": iso(a.ended_at),
            "outcome": a.outcome,
            "rejection_code": a.rejection_code,
            "rejection_reason": a.rejection_reason,
            "instances_received": a.instances_received,
            "instances_failed": a.instances_failed,
            "bytes_received": a.bytes_received,
        }
        for a in session.scalars(stmt)
    ]


def job_state(session: Session, job_id: int) -> JobState:
    state = session.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
    if state is None:
        raise NotFound(f"no job {job_id}")
    return JobState(state)


def cancel_job(session: Session, job_id: int, *, actor: str) -> JobState:
    """Cancel a pending or running job; returns the state it had.

    A running job's worker finds the job cancelled when it tries to finish
    (its conditional UPDATE matches no row) and drops its result.
    """
    state = job_state(session, job_id)
    if state not in (JobState.PENDING, JobState.RUNNING):
        raise NodeError(f"job {job_id} is {state}; only pending or running jobs can be cancelled")
    transition(
        session, job_id, expected=[state], to=JobState.CANCELLED, actor=actor, detail="cancel requested"
    )
    return state


def check_database(engine: Engine, head: str) -> Check:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        revision = current_revision(engine)
    except (SQLAlchemyError, DatabaseError) as exc:
        return Check(name="database", ok=False, detail=f"unreachable: {type(exc).__name__}")
    if revision != head:
        return Check(name="database", ok=False, detail=f"schema at {revision or 'none'}, code needs {head}")
    return Check(name="database", ok=True, detail=f"reachable, schema {revision}")


def check_model(settings: Settings, model_ready: Callable[[], bool] | None) -> Check:
    folder = model_path(settings.model.path)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return Check(name="model", ok=False, detail="model folder has no config.json or *.safetensors")
    if model_ready is not None and not model_ready():
        return Check(name="model", ok=False, detail="model folder present, model not loaded yet")
    return Check(name="model", ok=True, detail="loaded" if model_ready is not None else "folder present")


def check_storage(root: Path) -> Check:
    """Write (and remove) a probe file: permission bits say nothing when running as root."""
    try:
        # the ".*.tmp" name is what InstanceStore.sweep_temporary removes, should we die mid-probe
        with tempfile.NamedTemporaryFile(dir=root, prefix=".readyz-", suffix=".tmp") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        return Check(name="storage", ok=False, detail=f"not writable: {exc.strerror or type(exc).__name__}")
    return Check(name="storage", ok=True, detail="writable")


def check_disk(root: Path, *, min_free_mb: int, max_used_percent: float) -> Check:
    try:
        usage = shutil.disk_usage(root)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return Check(name="disk", ok=False, detail=f"cannot stat storage: {why}")
    free_mb = usage.free // (1024 * 1024)
    used = 100.0 * usage.used / usage.total if usage.total else 100.0
    if free_mb < min_free_mb:
        return Check(name="disk", ok=False, detail=f"{free_mb} MB free, below the {min_free_mb} MB watermark")
    if used > max_used_percent:
        return Check(
            name="disk", ok=False, detail=f"{used:.1f}% used, above the {max_used_percent:.1f}% watermark"
        )
    return Check(name="disk", ok=True, detail=f"{free_mb} MB free, {used:.1f}% used")


def readiness(
    settings: Settings, engine: Engine, head: str, model_ready: Callable[[], bool] | None
) -> list[Check]:
    """Every check ``/readyz`` runs; the model is checked only where this process runs a worker."""
    root = Path(settings.storage.path)
    checks = [check_database(engine, head)]
    if "worker" in settings.node.roles:
        checks.append(check_model(settings, model_ready))
    checks.append(check_storage(root))
    checks.append(
        check_disk(
            root, min_free_mb=settings.storage.min_free_mb, max_used_percent=settings.storage.max_used_percent
        )
    )
    return checks
