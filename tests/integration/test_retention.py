"""Retention removes exactly what it should, keeps the ledger, and never a study in flight.

Instances arrive through the real receiver (dcmtk storescu); settle creates the
jobs; the tests then move jobs and deliveries through the state machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from models.phantom import PhantomSpec, generate_study, write_study
from node import retention
from node.config import Settings
from node.db import create_db_engine, session_factory, upgrade
from node.jobs import JobState, transition
from node.modelinfo import ModelIdentity
from node.retention import RetentionContext, run_retention
from node.schema import AuditEntry, Delivery, Instance, Job, Result, RetentionEvent, utcnow
from node.settle import SettleContext, settle_once
from node.store import InstanceStore
from tests.support import dcmtk
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(node: NodeProcess, tmp_path: Path) -> Iterator[tuple[NodeProcess, Settings, SettleContext]]:
    settings = Settings.model_validate(
        {
            "settle": {"after_release_seconds": 0.5},
            "storage": {"path": str(node.storage), "min_free_mb": 1},
            "database": {"url": node.database_url},
        }
    )
    engine = create_db_engine(node.database_url)
    model = ModelIdentity(path=Path("."), name="m", version="1", weights_sha256="0" * 64)
    ctx = SettleContext(
        settings=settings,
        factory=session_factory(engine),
        storage_root=node.storage,
        model=model,
        actor="test",
    )
    for seed in (1, 2, 3):
        out = tmp_path / f"s{seed}"
        write_study(
            generate_study(
                PhantomSpec(
                    modality="CT",
                    planes=("axial",),
                    phases=("non_contrast",),
                    seed=seed,
                    matrix=32,
                    slices=10,
                    include_localizer=False,
                    include_dose_report=False,
                    include_oblique=False,
                )
            ),
            out,
        )
        sent = dcmtk.run(
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            "MSVLM",
            "127.0.0.1",
            str(node.port),
            *map(str, sorted(out.rglob("*.dcm"))),
        )
        assert sent.returncode == 0, sent.stderr
    time.sleep(0.8)
    assert len(settle_once(ctx)) == 3
    yield node, settings, ctx
    engine.dispose()


def _finish(ctx: SettleContext, job_id: int, *, delivered: bool | None) -> None:
    """Run a job to success by hand; add one delivery that succeeded, failed for good, or is pending."""
    with ctx.factory() as session, session.begin():
        transition(
            session,
            job_id,
            expected=[JobState.PENDING],
            to=JobState.RUNNING,
            actor="t",
            values={"worker": "t", "attempts": 1},
        )
        transition(session, job_id, expected=[JobState.RUNNING], to=JobState.SUCCEEDED, actor="t")
        session.add(
            Result(
                job_id=job_id,
                report_text="r",
                impression_text="i",
                findings="[]",
                sr_sop_instance_uid=f"1.2.3.{job_id}",
                sr_series_instance_uid=f"1.2.4.{job_id}",
                sr_path=f"sr-{job_id}.dcm",
            )
        )
        state = {True: "succeeded", False: "failed", None: "scheduled"}[delivered]
        session.add(
            Delivery(
                job_id=job_id, destination="pacs", ae_title="PACS", host="h", port=104, attempt=1, state=state
            )
        )


def _files(node: NodeProcess) -> set[str]:
    return {p.relative_to(node.storage).parts[0] for p in node.storage.rglob("*.dcm")}


def test_delivered_studies_are_removed_and_in_flight_ones_kept(
    ledger: tuple[NodeProcess, Settings, SettleContext],
) -> None:
    node, settings, settle = ledger
    with settle.factory() as session:
        jobs = session.execute(select(Job.id, Job.study_instance_uid).order_by(Job.id)).all()
    (done, done_uid), (waiting, waiting_uid), (pending, pending_uid) = jobs
    _finish(settle, done, delivered=True)
    _finish(settle, waiting, delivered=None)  # its SR is still queued for the PACS
    store = InstanceStore(node.storage, min_free_mb=1, max_used_percent=100, fsync=False)
    rules = settings.model_copy(
        update={"retention": settings.retention.model_copy(update={"instances_after_delivery": True})}
    )
    ctx = RetentionContext(settings=rules, factory=settle.factory, store=store, actor="test")

    assert run_retention(ctx) == 1
    assert _files(node) == {waiting_uid, pending_uid}
    with settle.factory() as session:
        purged = session.execute(select(Instance.study_instance_uid, Instance.purged_at)).all()
        events = session.scalars(select(RetentionEvent)).all()
    assert {uid for uid, at in purged if at is not None} == {done_uid}
    assert len(purged) == 30  # every ledger row is kept
    assert [(e.study_instance_uid, e.reason, e.files_removed) for e in events] == [
        (done_uid, "delivered", 10)
    ]
    assert events[0].bytes_freed > 0
    assert run_retention(ctx) == 0  # nothing left to do


def test_age_rule_skips_a_queued_job_and_emergency_frees_space(
    ledger: tuple[NodeProcess, Settings, SettleContext],
) -> None:
    node, settings, settle = ledger
    with settle.factory() as session:
        jobs = session.execute(select(Job.id, Job.study_instance_uid).order_by(Job.id)).all()
    (first, first_uid), (second, second_uid), (pending, pending_uid) = jobs
    _finish(settle, first, delivered=True)
    _finish(settle, second, delivered=False)  # gave up: finished, though not delivered
    store = InstanceStore(node.storage, min_free_mb=1, max_used_percent=100, fsync=False)
    aged = settings.model_copy(
        update={"retention": settings.retention.model_copy(update={"instances_after_days": 30})}
    )
    ctx = RetentionContext(settings=aged, factory=settle.factory, store=store, actor="test")
    assert run_retention(ctx, now=utcnow() + timedelta(days=10)) == 0
    assert run_retention(ctx, now=utcnow() + timedelta(days=31)) == 2
    assert _files(node) == {pending_uid}, "a study whose job is still pending must keep its files"

    # emergency: the disk is "fuller" than the threshold; only delivered studies may go
    node_files_before = _files(node)
    used = store.disk_state().used_percent
    emergency = settings.model_copy(
        update={
            "retention": settings.retention.model_copy(
                update={"emergency_used_percent": max(0.1, used - 1), "emergency_target_percent": 0.01}
            )
        }
    )
    ctx = RetentionContext(settings=emergency, factory=settle.factory, store=store, actor="test")
    run_retention(ctx)
    assert _files(node) == node_files_before  # the only study left is in flight


def test_audit_rows_are_deleted_only_past_their_age_and_only_when_configured(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "AUDIT_BATCH", 1)  # the old rows take several batches
    engine = create_db_engine(database_url)
    upgrade(engine)
    factory = session_factory(engine)
    now = utcnow()
    ages = [400, 91, 89, 0]  # days
    with factory() as session, session.begin():
        session.add_all(
            AuditEntry(
                at=now - timedelta(days=d), actor="loopback", method="GET", path=f"/jobs?d={d}", status=200
            )
            for d in ages
        )

    def retain(**rules: object) -> list[str]:
        settings = Settings.model_validate(
            {
                "database": {"url": database_url},
                "storage": {"path": str(tmp_path / "storage"), "min_free_mb": 1},
                "retention": {"emergency_used_percent": 100, "emergency_target_percent": 99, **rules},
            }
        )
        store = InstanceStore(tmp_path / "storage", min_free_mb=1, max_used_percent=100, fsync=False)
        run_retention(RetentionContext(settings=settings, factory=factory, store=store, actor="test"), now)
        with factory() as session:
            return list(session.scalars(select(AuditEntry.path).order_by(AuditEntry.id)))

    assert retain() == [f"/jobs?d={d}" for d in ages]  # unset: kept for ever
    assert retain(audit_after_days=90) == ["/jobs?d=89", "/jobs?d=0"]
    engine.dispose()
