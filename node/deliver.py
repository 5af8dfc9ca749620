"""Delivery: C-STORE each job's SR to every configured destination, with retries.

One ``deliveries`` row per attempt: ``scheduled`` (with a not-before time) ->
``sending`` -> ``succeeded`` | ``failed`` with the DIMSE status or the network
error. A failed attempt schedules the next one with exponential back-off until
``delivery.max_attempts``; so a destination that is down for minutes gets the SR
once it is back, and one that refuses has the reason on record. Claiming is a
conditional UPDATE (plus SKIP LOCKED on PostgreSQL), so any number of processes
may run :func:`deliver_due` at once and each attempt is made exactly once.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from node.config import DeliverySection, DestinationSection, Settings
from node.schema import Delivery, Result, utcnow

log = logging.getLogger(__name__)

#: statuses a C-STORE SCP answers that mean "stored" (success and warnings)
STORED = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class DeliveryContext:
    settings: Settings
    factory: sessionmaker[Session]
    storage_root: Path
    actor: str
    ssl_context: ssl.SSLContext | None = None


def schedule_first_attempts(
    session: Session, job_id: int, destinations: tuple[DestinationSection, ...]
) -> None:
    """Queue attempt 1 for every destination, in the caller's transaction (with the result)."""
    now = utcnow()
    for dest in destinations:
        session.add(
            Delivery(
                job_id=job_id,
                destination=dest.name,
                ae_title=dest.ae_title,
                host=dest.host,
                port=dest.port,
                attempt=1,
                state="scheduled",
                not_before=now,
            )
        )


def backoff(config: DeliverySection, attempt: int) -> float:
    """Seconds to wait before ``attempt`` (2, 3, ...)."""
    return float(min(config.max_backoff_seconds, config.backoff_seconds * 2 ** (attempt - 2)))


def deliver_due(ctx: DeliveryContext, limit: int = 20) -> int:
    """Make every attempt that is due; returns how many were made."""
    made = 0
    while made < limit:
        claimed = _claim(ctx)
        if claimed is None:
            break
        _attempt(ctx, claimed)
        made += 1
    return made


def _claim(ctx: DeliveryContext) -> tuple[Delivery, str] | None:
    with ctx.factory() as session, session.begin():
        stmt = (
            select(Delivery.id)
            .where(Delivery.state == "scheduled", Delivery.not_before <= utcnow())
            .order_by(Delivery.not_before, Delivery.id)
            .limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        delivery_id = session.execute(stmt).scalar_one_or_none()
        if delivery_id is None:
            return None
        moved = session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.state == "scheduled")
            .values(state="sending", started_at=utcnow(), worker=ctx.actor)
        ).rowcount  # type: ignore[attr-defined]
        if moved != 1:
            return None
        delivery = session.get(Delivery, delivery_id, populate_existing=True)
        assert delivery is not None  # we just moved it, inside this transaction
        sr_path = session.execute(select(Result.sr_path).where(Result.job_id == delivery.job_id)).scalar_one()
        session.expunge(delivery)
        return delivery, sr_path


def _attempt(ctx: DeliveryContext, claimed: tuple[Delivery, str]) -> None:
    delivery, sr_path = claimed
    status, error = send_file(ctx, delivery, ctx.storage_root / sr_path)
    succeeded = status in STORED
    config = ctx.settings.delivery
    with ctx.factory() as session, session.begin():
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id)
            .values(
                state="succeeded" if succeeded else "failed",
                finished_at=utcnow(),
                status_code=status,
                error=None if succeeded else error,
            )
        )
        if not succeeded and delivery.attempt < config.max_attempts:
            session.add(
                Delivery(
                    job_id=delivery.job_id,
                    destination=delivery.destination,
                    ae_title=delivery.ae_title,
                    host=delivery.host,
                    port=delivery.port,
                    attempt=delivery.attempt + 1,
                    state="scheduled",
                    not_before=utcnow() + timedelta(seconds=backoff(config, delivery.attempt + 1)),
                )
            )
    fields = {
        "job": delivery.job_id,
        "destination": delivery.destination,
        "attempt": delivery.attempt,
        "status": None if status is None else f"0x{status:04X}",
    }
    if succeeded:
        log.info("deliver.succeeded", extra=fields)
    else:
        final = delivery.attempt >= config.max_attempts
        log.warning("deliver.gave_up" if final else "deliver.failed", extra={**fields, "error": error})


def send_file(ctx: DeliveryContext, delivery: Delivery, path: Path) -> tuple[int | None, str]:
    """C-STORE one file; returns (status or None, error text a human can act on)."""
    try:
        dataset = dcmread(path)
    except OSError as exc:
        return None, f"SR file unreadable: {exc}"
    ae = AE(ae_title=ctx.settings.node.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ctx.settings.delivery.timeout_seconds
    ae.connection_timeout = ctx.settings.delivery.timeout_seconds
    ae.add_requested_context(dataset.SOPClassUID, [dataset.file_meta.TransferSyntaxUID])
    destination = next(
        (d for d in ctx.settings.delivery.destinations if d.name == delivery.destination), None
    )
    tls_args = None
    if destination is not None and destination.tls:
        if ctx.ssl_context is None:
            return None, "destination requires TLS but no client TLS context is configured"
        tls_args = (ctx.ssl_context, delivery.host)
    assoc = ae.associate(delivery.host, delivery.port, ae_title=delivery.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        if assoc.is_rejected:
            return None, f"association rejected by {delivery.ae_title}@{delivery.host}:{delivery.port}"
        return (
            None,
            f"cannot reach {delivery.ae_title}@{delivery.host}:{delivery.port} "
            "(connection failed or aborted)",
        )
    try:
        response = assoc.send_c_store(dataset)
        if not response or "Status" not in response:
            return None, "no response to C-STORE (timeout or aborted association)"
        status = int(response.Status)
        comment = str(response.get("ErrorComment", "") or "")
        return status, "" if status in STORED else f"C-STORE refused with 0x{status:04X} {comment}".strip()
    finally:
        if assoc.is_established:
            assoc.release()
