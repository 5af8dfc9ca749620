"""Completeness: decide when a study has fully arrived, group it, enqueue its job.

Signals, in order (a study settles on the first that holds):

* ``after_release`` – the association that brought the study's last instance
  was released, no other association is still bringing instances of it, and
  nothing new came for ``settle.after_release_seconds``;
* ``quiet`` – nothing new for ``settle.quiet_seconds`` (per-peer override),
  which also covers aborted associations and senders that never release;
* a study that already has a job and receives more gets a new job that
  supersedes the earlier one (recorded as ``late_series``) — but only when the
  new arrivals change the model's input: a re-sent study, or a late dose screen
  that grouping excludes, changes nothing and creates nothing.

:func:`settle_once` is what the APScheduler interval job calls. It is
idempotent and safe in many processes at once: the job's unique key (study,
input fingerprint, model version, weights hash) lets exactly one insert win.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.config import Settings
from node.errors import NodeError
from node.grouping import group_study
from node.headers import read_header
from node.jobs import JobState, transition
from node.manifest import Manifest
from node.modelinfo import ModelIdentity
from node.schema import Association, Instance, Job, JobEvent, Result, Series, Study, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettleContext:
    settings: Settings
    factory: sessionmaker[Session]
    storage_root: Path
    model: ModelIdentity
    actor: str
    #: called after a job was created (serve uses it to wake its worker at once)
    on_job_created: Callable[[], None] | None = None


@dataclass(frozen=True)
class Arrivals:
    """What has arrived for one study, as the settle decision sees it."""

    key: str
    last_instance_at: datetime
    paths: tuple[str, ...]
    signal: str | None


def recent_window(settings: Settings) -> timedelta:
    """How far back a regular tick looks for studies to settle.

    Every signal fires within the longest quiet timeout of a study's last
    instance, so older studies were already decided; twice that plus ten
    minutes leaves room for a slow tick or a briefly unreachable database.
    """
    quiet = max(
        [
            settings.settle.quiet_seconds,
            settings.settle.after_release_seconds,
            *(p.quiet_seconds for p in settings.security.peers if p.quiet_seconds is not None),
        ]
    )
    return timedelta(seconds=2 * quiet + 600)


def settle_once(ctx: SettleContext, now: datetime | None = None, *, full: bool = False) -> list[int]:
    """Examine recently active studies; return the ids of jobs created.

    A regular tick looks back :func:`recent_window`; ``full`` looks back
    ``settle.lookback_hours``, which the scheduler does once after start so
    studies that arrived just before a stop or crash are still settled.
    """
    now = now or utcnow()
    lookback = timedelta(hours=ctx.settings.settle.lookback_hours)
    since = now - (lookback if full else min(lookback, recent_window(ctx.settings)))
    with ctx.factory() as session:
        studies = (
            session.execute(
                select(Instance.study_instance_uid)
                .where(Instance.received_at > since)
                .group_by(Instance.study_instance_uid)
            )
            .scalars()
            .all()
        )
    created = []
    for study_uid in studies:
        try:
            job_id = settle_study(ctx, study_uid, now)
        except (NodeError, SQLAlchemyError) as exc:
            log.error("settle.study_failed", extra={"study_instance_uid": study_uid, "error": str(exc)})
            continue
        if job_id is not None:
            created.append(job_id)
    if created and ctx.on_job_created is not None:
        ctx.on_job_created()
    return created


def _arrivals(session: Session, ctx: SettleContext, study: Study, now: datetime) -> Arrivals | None:
    per_series = session.execute(
        select(Instance.series_instance_uid, func.count(), func.max(Instance.received_at))
        .join(Series, Series.series_instance_uid == Instance.series_instance_uid)
        .where(Instance.study_instance_uid == study.study_instance_uid, Series.own_output.is_(False))
        .group_by(Instance.series_instance_uid)
    ).all()
    if not per_series:
        return None
    key = hashlib.sha256("\n".join(sorted(f"{uid}:{n}" for uid, n, _ in per_series)).encode()).hexdigest()
    if key == study.settled_arrival_key:
        return None
    last_at = max(at for _, _, at in per_series)
    last_assoc = session.execute(
        select(Association.outcome, Association.ended_at, Association.calling_ae)
        .join(Instance, Instance.association_id == Association.id)
        .where(Instance.study_instance_uid == study.study_instance_uid)
        .order_by(Instance.received_at.desc())
        .limit(1)
    ).first()
    still_open = session.execute(
        select(func.count(func.distinct(Association.id)))
        .join(Instance, Instance.association_id == Association.id)
        .where(Instance.study_instance_uid == study.study_instance_uid, Association.outcome == "open")
    ).scalar_one()
    settle = ctx.settings.settle
    signal = None
    if last_assoc is not None and last_assoc.outcome == "released" and not still_open:
        released_at = last_assoc.ended_at or last_at
        if now - max(released_at, last_at) >= timedelta(seconds=settle.after_release_seconds):
            signal = "after_release"
    if signal is None:
        quiet = settle.quiet_seconds
        if last_assoc is not None:
            for peer in ctx.settings.security.peers:
                if peer.ae_title == last_assoc.calling_ae and peer.quiet_seconds is not None:
                    quiet = peer.quiet_seconds
        if now - last_at >= timedelta(seconds=quiet):
            signal = "quiet"
    paths = tuple(
        session.execute(
            select(Instance.path)
            .join(Series, Series.series_instance_uid == Instance.series_instance_uid)
            .where(Instance.study_instance_uid == study.study_instance_uid, Series.own_output.is_(False))
        ).scalars()
    )
    return Arrivals(key=key, last_instance_at=last_at, paths=paths, signal=signal)


def settle_study(ctx: SettleContext, study_uid: str, now: datetime) -> int | None:
    """Settle one study if a signal holds; returns the new job's id, if any."""
    with ctx.factory() as session:
        study = session.get(Study, study_uid)
        if study is None:
            return None
        arrivals = _arrivals(session, ctx, study, now)
    if arrivals is None or arrivals.signal is None:
        return None

    error = None
    try:
        headers = [read_header(ctx.storage_root / path) for path in arrivals.paths]
        manifest = group_study(headers, ctx.settings.grouping)
    except NodeError as exc:
        error = f"could not group the study: {exc}"
        manifest = Manifest(study_instance_uid=study_uid, views=[], excluded=[])
    if error is None and not manifest.views:
        reasons = "; ".join(sorted({f"{e.reason_code}: {e.reason}" for e in manifest.excluded}))[:2000]
        error = f"no usable views in the study ({reasons or 'no image series'})"

    with ctx.factory() as session, session.begin():
        previous = session.execute(
            select(Job.id)
            .where(
                Job.study_instance_uid == study_uid,
                Job.model_version == ctx.model.version,
                Job.weights_sha256 == ctx.model.weights_sha256,
            )
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        signal = "late_series" if previous is not None else arrivals.signal
        job_id = _insert_job(session, ctx, study_uid, manifest, arrivals, signal, previous, now)
        session.execute(
            update(Study)
            .where(Study.study_instance_uid == study_uid)
            .values(settled_arrival_key=arrivals.key, settled_at=now)
        )
        if job_id is None:
            return None
        session.add(
            JobEvent(
                job_id=job_id,
                at=now,
                from_state=None,
                to_state=JobState.PENDING.value,
                actor=ctx.actor,
                detail=f"settled by {arrivals.signal}",
            )
        )
        if previous is not None:
            session.execute(
                update(Result).where(Result.job_id == previous).values(superseded_by_job_id=job_id)
            )
        if error is not None:
            transition(
                session,
                job_id,
                expected=[JobState.PENDING],
                to=JobState.FAILED,
                actor=ctx.actor,
                detail="grouping",
                values={"error": error},
            )
    log.info(
        "settle.job_created",
        extra={
            "job": job_id,
            "study_instance_uid": study_uid,
            "signal": signal,
            "views": len(manifest.views),
            "excluded": len(manifest.excluded),
            "supersedes": previous,
            "failed": error is not None,
        },
    )
    return job_id


def _insert_job(
    session: Session,
    ctx: SettleContext,
    study_uid: str,
    manifest: Manifest,
    arrivals: Arrivals,
    signal: str,
    previous: int | None,
    now: datetime,
) -> int | None:
    """Insert the job unless an identical one exists (another settler, or the same input)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(Job)
        .values(
            study_instance_uid=study_uid,
            state=JobState.PENDING.value,
            input_fingerprint=manifest.fingerprint(),
            manifest=manifest.to_json(),
            view_count=len(manifest.views),
            model_name=ctx.model.name,
            model_version=ctx.model.version,
            weights_sha256=ctx.model.weights_sha256,
            settle_signal=signal,
            supersedes_job_id=previous,
            attempts=0,
            max_attempts=ctx.settings.worker.max_attempts,
            last_instance_at=arrivals.last_instance_at,
            created_at=utcnow(),  # after grouping: queue time is time spent waiting for a worker
        )
        .on_conflict_do_nothing(
            index_elements=[
                Job.study_instance_uid,
                Job.input_fingerprint,
                Job.model_version,
                Job.weights_sha256,
            ]
        )
        .returning(Job.id)
    )
    return session.execute(stmt).scalar_one_or_none()
