"""What admins ask the ledger: job and study listings and details, and retry.

The CLI (and later the HTTP API) only format what these functions return:
plain dicts ready for JSON, so ``--json`` and tables show the same facts.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.errors import NodeError
from node.jobs import JobState, transition
from node.schema import Delivery, Instance, Job, JobEvent, Result, Series, Study, utcnow


class NotFound(NodeError):
    """The job or study asked for does not exist."""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str) -> datetime:
    """``24h``, ``30m``, ``7d`` (relative) or an ISO date/time (absolute, UTC if naive)."""
    match = _DURATION.match(text.strip())
    if match:
        value, unit = float(match.group(1)), match.group(2)
        seconds = value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        return utcnow() - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise NodeError(f"--since: {text!r} is neither a duration like 24h nor an ISO date") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def iso(value: datetime | None) -> str | None:
    """Ledger times as ISO 8601 to the second, for tables and JSON alike."""
    return value.isoformat(timespec="seconds") if value else None


def list_jobs(
    session: Session,
    *,
    state: str | None = None,
    since: datetime | None = None,
    study: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if state:
        if state not in {s.value for s in JobState}:
            raise NodeError(f"--state: {state!r} is not one of {', '.join(s.value for s in JobState)}")
        stmt = stmt.where(Job.state == state)
    if since:
        stmt = stmt.where(Job.created_at >= since)
    if study:
        stmt = stmt.where(Job.study_instance_uid == study)
    return [
        {
            "id": job.id,
            "state": job.state,
            "study_instance_uid": job.study_instance_uid,
            "views": job.view_count,
            "attempts": job.attempts,
            "signal": job.settle_signal,
            "created_at": iso(job.created_at),
            "finished_at": iso(job.finished_at),
            "worker": job.worker,
            "error": (job.error or "")[:200] or None,
        }
        for job in session.scalars(stmt)
    ]


def show_job(session: Session, job_id: int) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    result = session.scalars(select(Result).where(Result.job_id == job_id)).first()
    deliveries = session.scalars(
        select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.destination, Delivery.attempt)
    ).all()
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
    settle_seconds = None
    if job.created_at and job.last_instance_at:
        settle_seconds = round((job.created_at - job.last_instance_at).total_seconds(), 3)
    queue_seconds = None
    if job.started_at:
        queue_seconds = round((job.started_at - job.created_at).total_seconds(), 3)
    return {
        "id": job.id,
        "state": job.state,
        "study_instance_uid": job.study_instance_uid,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "worker": job.worker,
        "signal": job.settle_signal,
        "supersedes_job_id": job.supersedes_job_id,
        "model": {"name": job.model_name, "version": job.model_version, "weights_sha256": job.weights_sha256},
        "error": job.error,
        "timings": {
            "last_instance_at": iso(job.last_instance_at),
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "settle_seconds": settle_seconds,
            "queue_seconds": queue_seconds,
            "load_seconds": job.load_seconds,
            "infer_seconds": job.infer_seconds,
            "report_seconds": job.report_seconds,
        },
        "manifest": json.loads(job.manifest),
        "result": None
        if result is None
        else {
            "report": result.report_text,
            "impression": result.impression_text,
            "findings": json.loads(result.findings),
            "sr_sop_instance_uid": result.sr_sop_instance_uid,
            "sr_path": result.sr_path,
            "superseded_by_job_id": result.superseded_by_job_id,
        },
        "deliveries": [
            {
                "destination": d.destination,
                "attempt": d.attempt,
                "state": d.state,
                "status": None if d.status_code is None else f"0x{d.status_code:04X}",
                "error": d.error,
                "not_before": iso(d.not_before),
                "finished_at": iso(d.finished_at),
            }
            for d in deliveries
        ],
        "events": [
            {"at": iso(e.at), "from": e.from_state, "to": e.to_state, "actor": e.actor, "detail": e.detail}
            for e in events
        ],
    }


def region_text(region: list[float]) -> str:
    """A key image's region (left, top, right, bottom in its pixels) as a reader finds it on
    the image: "columns 192-256, rows 64-128"; for the terminal and the dashboard alike."""
    left, top, right, bottom = region
    return f"columns {left:g}-{right:g}, rows {top:g}-{bottom:g}"


def finding_line(finding: dict[str, Any]) -> str:
    """One coded finding of a job's result, for a terminal: "Lung nodule PRESENT p=0.99 [site:
    right upper lobe, p=0.62; side read from the images] [key image: series 4, image 2]"."""
    presence = "PRESENT" if finding["present"] else "absent"
    out = f"{finding['display']} {presence} p={finding['probability']:.2f}"
    if "site" in finding:
        side = "; side read from the images" if "side_from_images" in finding else ""
        out += f" [site: {finding['site']}, p={finding['site_probability']:.2f}{side}]"
    image = finding.get("key_image")
    if image is not None:
        series, number = image.get("series_number") or "?", image.get("instance_number") or "?"
        region = image.get("region")
        where = f", {region_text(region)}" if region else ""
        out += f" [key image: series {series}, image {number}{where}]"
    if "impression_restated_from_mm" in finding:
        out += f" [impression said {finding['impression_restated_from_mm']} mm]"
    return out


def retry_job(session: Session, job_id: int, *, actor: str) -> JobState:
    """Send a finished (or failed) job back to pending, with a fresh attempt budget.

    Returns the state it had, for the caller's log line and answer.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    state = JobState(job.state)
    if state in (JobState.PENDING, JobState.RUNNING):
        raise NodeError(f"job {job_id} is {state}; only finished jobs can be retried")
    transition(
        session,
        job_id,
        expected=[state],
        to=JobState.PENDING,
        actor=actor,
        detail="retry requested",
        values={"attempts": 0, "error": None, "worker": None, "started_at": None, "finished_at": None},
    )
    return state


def list_studies(
    session: Session, *, since: datetime | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    counts = (
        select(
            Instance.study_instance_uid.label("uid"),
            func.count().label("instances"),
            func.max(Instance.received_at).label("last"),
        )
        .group_by(Instance.study_instance_uid)
        .subquery()
    )
    latest_job = (
        select(Job.study_instance_uid.label("uid"), func.max(Job.id).label("job_id"))
        .group_by(Job.study_instance_uid)
        .subquery()
    )
    stmt = (
        select(Study, counts.c.instances, counts.c.last, latest_job.c.job_id)
        .join(counts, counts.c.uid == Study.study_instance_uid)
        .outerjoin(latest_job, latest_job.c.uid == Study.study_instance_uid)
        .order_by(counts.c.last.desc())
        .limit(limit)
    )
    if since:
        stmt = stmt.where(counts.c.last >= since)
    rows = []
    for study, instances, last, job_id in session.execute(stmt):
        job_state = (
            session.execute(select(Job.state).where(Job.id == job_id)).scalar_one() if job_id else None
        )
        rows.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "accession_number": study.accession_number,
                "study_date": study.study_date,
                "instances": instances,
                "last_received_at": iso(last) if isinstance(last, datetime) else str(last),
                "latest_job": job_id,
                "job_state": job_state,
            }
        )
    return rows


def show_study(session: Session, study_uid: str) -> dict[str, Any]:
    study = session.get(Study, study_uid)
    if study is None:
        raise NotFound(f"no study {study_uid}")
    series = session.execute(
        select(Series, func.count(Instance.id))
        .outerjoin(Instance, Instance.series_instance_uid == Series.series_instance_uid)
        .where(Series.study_instance_uid == study_uid)
        .group_by(Series.series_instance_uid)
        .order_by(Series.series_number)
    ).all()
    jobs = list_jobs(session, study=study_uid)
    return {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "first_received_at": iso(study.first_received_at),
        "settled_at": iso(study.settled_at),
        "series": [
            {
                "series_instance_uid": s.series_instance_uid,
                "number": s.series_number,
                "modality": s.modality,
                "description": s.series_description,
                "instances": n,
                "own_output": s.own_output,
            }
            for s, n in series
        ],
        "jobs": jobs,
    }
