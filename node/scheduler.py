"""The timers (APScheduler): settle, reap expired leases, deliver, all idempotent.

Every callback only claims or enqueues through the database, so it is safe for
any number of processes to run the same schedule, and a missed or overlapping
tick changes nothing (``coalesce`` and ``max_instances=1`` keep one run per
process at a time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.deliver import DeliveryContext, deliver_due
from node.errors import NodeError
from node.jobs import reap_expired
from node.retention import RetentionContext, run_retention
from node.settle import SettleContext, settle_once

log = logging.getLogger(__name__)


def _guarded(name: str, work: Callable[[], Any]) -> Callable[[], None]:
    """Run ``work``; log (never raise) our errors and database outages, so the timer survives."""

    def run() -> None:
        try:
            work()
        except (NodeError, SQLAlchemyError) as exc:
            log.error("scheduler.tick_failed", extra={"timer": name, "error": str(exc)})

    return run


def _settle_tick(ctx: SettleContext) -> Callable[[], Any]:
    """Settle with the full lookback on the first tick after start, the recent window after."""
    first = [True]

    def tick() -> list[int]:
        created = settle_once(ctx, full=first[0])
        first[0] = False
        return created

    return tick


def build_scheduler(
    *,
    settle: SettleContext | None,
    delivery: DeliveryContext | None,
    retention: RetentionContext | None,
    factory: sessionmaker[Session],
    actor: str,
    reap_interval: float,
) -> BackgroundScheduler:
    """The node's timers: settle, delivery and retention when given, and always the lease reaper."""
    scheduler = BackgroundScheduler(
        timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    )
    if settle is not None:
        scheduler.add_job(
            _guarded("settle", _settle_tick(settle)),
            "interval",
            seconds=settle.settings.settle.interval_seconds,
            id="settle",
        )
    if delivery is not None:
        scheduler.add_job(
            _guarded("deliver", lambda: deliver_due(delivery)),
            "interval",
            seconds=delivery.settings.delivery.interval_seconds,
            id="deliver",
        )

    if retention is not None:
        scheduler.add_job(
            _guarded("retention", lambda: run_retention(retention)),
            "interval",
            seconds=retention.settings.retention.interval_seconds,
            id="retention",
        )

    def reap() -> None:
        with factory() as session, session.begin():
            moved = reap_expired(session, actor=actor)
        if moved:
            log.warning("scheduler.leases_reaped", extra={"jobs": moved})

    scheduler.add_job(_guarded("reap", reap), "interval", seconds=reap_interval, id="reap")
    return scheduler
