"""The admin HTTP API against a real ledger (SQLite and PostgreSQL).

Most tests build the ledger with the ORM and the real job state machine (exact
shapes, every state); one sends phantom studies through the real receiver and
settles them, and reads the resulting jobs back through the API.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from node.api import create_app
from node.audit import Requester, token_id
from node.config import Settings
from node.db import create_db_engine, session_factory, upgrade
from node.jobs import JobState, transition
from node.manifest import Exclusion, ExclusionReason, Manifest, SliceRef, View
from node.schema import (
    Association,
    AuditEntry,
    Delivery,
    Instance,
    Job,
    JobEvent,
    Result,
    Series,
    Study,
    utcnow,
)

pytestmark = pytest.mark.integration

TOKEN = "s3cret-api-token-for-tests"
LOCAL = ("127.0.0.1", 41000)
REPORT = "Solid nodule in the right upper lobe, 8 mm. No pleural effusion."
IMPRESSION = "Pulmonary nodule; follow-up CT in 6-12 months."


@dataclass
class Ledger:
    settings: Settings
    factory: sessionmaker[Session]
    storage: Path

    def app(self, **kwargs: Any) -> Any:
        return create_app(self.settings, self.factory, **kwargs)

    def local(self, app: Any = None, **kwargs: Any) -> TestClient:
        """A client on 127.0.0.1 naming a loopback host, as a browser on the node would."""
        return TestClient(app or self.app(), client=LOCAL, base_url="http://127.0.0.1:8080", **kwargs)

    def remote(self, app: Any = None, token: str | None = None, **kwargs: Any) -> TestClient:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return TestClient(app or self.app(), headers=headers, **kwargs)

    def audit(self) -> list[AuditEntry]:
        with self.factory() as session:
            return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def make_settings(database_url: str, storage: Path, **tables: dict[str, Any]) -> Settings:
    values: dict[str, dict[str, Any]] = {
        "database": {"url": database_url},
        "storage": {"path": str(storage), "min_free_mb": 1},
        "node": {"roles": ["receiver", "scheduler"]},
        "api": {"tokens": [TOKEN]},
    }
    for table, extra in tables.items():
        values.setdefault(table, {}).update(extra)
    return Settings.model_validate(values)


@pytest.fixture
def ledger(database_url: str, tmp_path: Path) -> Iterator[Ledger]:
    engine = create_db_engine(database_url)
    upgrade(engine)
    storage = tmp_path / "storage"
    storage.mkdir()
    yield Ledger(make_settings(database_url, storage), session_factory(engine), storage)
    engine.dispose()


def seed_study(
    factory: sessionmaker[Session],
    uid: str,
    *,
    accession: str = "ACC001",
    patient_name: str = "Doe^Jane",
    instances: int = 3,
) -> Manifest:
    """A study with an axial CT series and a localizer; returns the manifest grouping would write."""
    now = utcnow()
    series_uid, scout_uid = f"{uid}.1", f"{uid}.2"
    with factory() as session, session.begin():
        session.add(
            Study(
                study_instance_uid=uid,
                patient_id="PID-77",
                patient_name=patient_name,
                accession_number=accession,
                study_date="20261120",
                study_description="CT CHEST",
                first_received_at=now - timedelta(minutes=5),
            )
        )
        session.flush()  # no ORM relationships: parents first
        session.add_all(
            [
                Series(
                    series_instance_uid=series_uid,
                    study_instance_uid=uid,
                    modality="CT",
                    series_number=2,
                    series_description="AXIAL 2.5",
                ),
                Series(
                    series_instance_uid=scout_uid,
                    study_instance_uid=uid,
                    modality="CT",
                    series_number=1,
                    series_description="SCOUT",
                ),
            ]
        )
        session.flush()
        for n in range(instances):
            session.add(
                Instance(
                    sop_instance_uid=f"{series_uid}.{n + 1}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    series_instance_uid=series_uid,
                    study_instance_uid=uid,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    instance_number=n + 1,
                    path=f"{uid}/{series_uid}/{n + 1}.dcm",
                    size_bytes=1000,
                    received_at=now - timedelta(seconds=60),
                )
            )
    slices = [
        SliceRef(
            sop_instance_uid=f"{series_uid}.{n + 1}", path=f"{uid}/{series_uid}/{n + 1}.dcm", position=2.5 * n
        )
        for n in range(instances)
    ]
    view = View(
        key="CT:axial:non_contrast",
        series_instance_uid=series_uid,
        stack_key=f"{series_uid}#0",
        modality="CT",
        plane="axial",
        phase="non_contrast",
        slice_count=instances,
        spacing_mm=2.5,
        evidence={
            "plane": "slice normal 0.0 deg from the patient's z axis",
            "phase": "no contrast agent in the headers",
        },
        slices=slices,
    )
    scout = Exclusion(
        series_instance_uid=scout_uid,
        reason_code=ExclusionReason.LOCALIZER,
        reason="ImageType says LOCALIZER",
    )
    return Manifest(study_instance_uid=uid, views=[view], excluded=[scout])


def seed_job(
    factory: sessionmaker[Session],
    manifest: Manifest,
    *,
    to: JobState | None = JobState.SUCCEEDED,
    deliveries: tuple[tuple[str, str], ...] = (("pacs", "succeeded"),),
    model_version: str = "1",
) -> int:
    """A job moved through the real state machine to ``to`` (None: left pending)."""
    now = utcnow()
    with factory() as session, session.begin():
        job = Job(
            study_instance_uid=manifest.study_instance_uid,
            state="pending",
            input_fingerprint=manifest.fingerprint(),
            manifest=manifest.to_json(),
            view_count=len(manifest.views),
            model_name="msvlm-demo",
            model_version=model_version,
            weights_sha256="ab" * 32,
            settle_signal="after_release",
            last_instance_at=now - timedelta(seconds=60),
            created_at=now - timedelta(seconds=54),
        )
        session.add(job)
        session.flush()
        session.add(JobEvent(job_id=job.id, from_state=None, to_state="pending", actor="settle"))
        job_id = job.id
    if to is None:
        return job_id
    with factory() as session, session.begin():
        transition(
            session,
            job_id,
            expected=[JobState.PENDING],
            to=JobState.RUNNING,
            actor="gpu-1",
            values={"worker": "gpu-1", "started_at": now - timedelta(seconds=50), "attempts": 1},
        )
    with factory() as session, session.begin():
        if to is JobState.SUCCEEDED:
            findings = [
                {
                    "key": "lung_nodule",
                    "display": "Lung nodule",
                    "code": "SCT:427359005",
                    "present": True,
                    "probability": 0.91,
                },
                {
                    "key": "pleural_effusion",
                    "display": "Pleural effusion",
                    "code": "SCT:60046008",
                    "present": False,
                    "probability": 0.04,
                },
            ]
            session.add(
                Result(
                    job_id=job_id,
                    report_text=REPORT,
                    impression_text=IMPRESSION,
                    findings=json.dumps(findings),
                    sr_sop_instance_uid=f"2.25.{job_id}1",
                    sr_series_instance_uid=f"2.25.{job_id}2",
                    sr_path=f"sr/{job_id}.dcm",
                )
            )
            transition(
                session,
                job_id,
                expected=[JobState.RUNNING],
                to=to,
                actor="gpu-1",
                values={"load_seconds": 1.25, "infer_seconds": 6.5, "report_seconds": 0.4},
            )
            for attempt, (destination, state) in enumerate(deliveries, start=1):
                session.add(
                    Delivery(
                        job_id=job_id,
                        destination=destination,
                        ae_title="PACS",
                        host="127.0.0.1",
                        port=104,
                        attempt=attempt,
                        state=state,
                        not_before=now,
                        started_at=now,
                        finished_at=now + timedelta(seconds=0.3),
                        worker="gpu-1",
                        status_code=0 if state == "succeeded" else 0xA700,
                        error=None if state == "succeeded" else "out of resources",
                    )
                )
        else:
            transition(
                session,
                job_id,
                expected=[JobState.RUNNING],
                to=to,
                actor="gpu-1",
                values={"error": "view CT:axial:non_contrast: 3 slices missing between 10 and 20 mm"},
            )
    return job_id


def job_state(factory: sessionmaker[Session], job_id: int) -> str:
    with factory() as session:
        return session.execute(select(Job.state).where(Job.id == job_id)).scalar_one()


def test_job_list_and_detail(ledger: Ledger) -> None:
    manifest = seed_study(ledger.factory, "1.2.3.4")
    done = seed_job(ledger.factory, manifest)
    failed = seed_job(ledger.factory, manifest, to=JobState.FAILED, model_version="2")
    client = ledger.local()

    listed = client.get("/api/jobs").json()
    assert [j["id"] for j in listed] == [failed, done]
    assert client.get("/api/jobs", params={"state": "failed"}).json()[0]["error"].startswith("view CT:axial")
    assert [
        j["id"] for j in client.get("/api/jobs", params={"state": "succeeded", "since": "1h"}).json()
    ] == [done]
    assert client.get("/api/jobs", params={"since": "2999-01-01"}).json() == []
    assert client.get("/api/jobs", params={"study": "9.9.9"}).json() == []
    assert len(client.get("/api/jobs", params={"limit": 1}).json()) == 1
    assert client.get("/api/jobs", params={"state": "bogus"}).status_code == 422
    assert client.get("/api/jobs", params={"since": "yesterday"}).status_code == 400

    detail = client.get(f"/api/jobs/{done}").json()
    assert detail["state"] == "succeeded" and detail["worker"] == "gpu-1"
    assert detail["manifest"]["views"][0]["key"] == "CT:axial:non_contrast"
    assert detail["manifest"]["views"][0]["evidence"]["phase"] == "no contrast agent in the headers"
    assert detail["manifest"]["excluded"] == [
        {
            "series_instance_uid": "1.2.3.4.2",
            "stack_key": None,
            "reason_code": "localizer",
            "reason": "ImageType says LOCALIZER",
        }
    ]
    timings = detail["timings"]
    assert timings["settle_seconds"] == pytest.approx(6, abs=0.5)
    assert timings["queue_seconds"] == pytest.approx(4, abs=0.5)
    assert (timings["load_seconds"], timings["infer_seconds"], timings["report_seconds"]) == (1.25, 6.5, 0.4)
    assert detail["result"]["report"] == REPORT and detail["result"]["impression"] == IMPRESSION
    assert detail["result"]["findings"][0] == {
        "key": "lung_nodule",
        "display": "Lung nodule",
        "code": "SCT:427359005",
        "present": True,
        "probability": 0.91,
    }
    assert detail["deliveries"][0]["status"] == "0x0000"
    assert [(e["from"], e["to"]) for e in detail["events"]] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "succeeded"),
    ]
    failed_detail = client.get(f"/api/jobs/{failed}").json()
    assert failed_detail["result"] is None and "slices missing" in failed_detail["error"]
    assert client.get("/api/jobs/999999").status_code == 404


def test_studies_deliveries_and_associations(ledger: Ledger) -> None:
    job_id = seed_job(
        ledger.factory,
        seed_study(ledger.factory, "1.2.3.5", accession="ACC-S"),
        deliveries=(("pacs", "failed"), ("pacs", "succeeded"), ("archive", "succeeded")),
    )
    with ledger.factory() as session, session.begin():
        session.add_all(
            [
                Association(
                    calling_ae="STORESCU",
                    called_ae="MSVLM",
                    peer_host="127.0.0.1",
                    peer_port=5000,
                    receiver="host:1",
                    outcome="released",
                    instances_received=3,
                    bytes_received=3000,
                ),
                Association(
                    calling_ae="INTRUDER",
                    called_ae="MSVLM",
                    peer_host="10.0.0.9",
                    peer_port=5001,
                    receiver="host:1",
                    outcome="rejected",
                    rejection_code="calling_ae",
                    rejection_reason="calling AE title 'INTRUDER' is not in the allow-list",
                ),
            ]
        )
    client = ledger.local()
    [study] = client.get("/api/studies").json()
    assert study == {
        **study,
        "study_instance_uid": "1.2.3.5",
        "accession_number": "ACC-S",
        "instances": 3,
        "latest_job": job_id,
        "job_state": "succeeded",
    }
    assert "patient_name" not in study  # lists carry no patient identity
    detail = client.get("/api/studies/1.2.3.5").json()
    assert detail["patient_name"] == "Doe^Jane" and detail["patient_id"] == "PID-77"
    assert [s["number"] for s in detail["series"]] == [1, 2] and detail["series"][1]["instances"] == 3
    assert [j["id"] for j in detail["jobs"]] == [job_id]
    assert client.get("/api/studies/9.9.9").status_code == 404

    deliveries = client.get("/api/deliveries").json()
    assert len(deliveries) == 3 and deliveries[0]["study_instance_uid"] == "1.2.3.5"
    [failure] = client.get("/api/deliveries", params={"state": "failed"}).json()
    assert failure["status"] == "0xA700" and failure["error"] == "out of resources"
    assert [
        d["destination"] for d in client.get("/api/deliveries", params={"destination": "archive"}).json()
    ] == ["archive"]
    [rejected] = client.get("/api/associations", params={"outcome": "rejected"}).json()
    assert rejected["calling_ae"] == "INTRUDER" and rejected["rejection_code"] == "calling_ae"
    assert "allow-list" in rejected["rejection_reason"]
    assert len(client.get("/api/associations").json()) == 2


def test_retry_and_cancel_change_state_and_are_audited(ledger: Ledger) -> None:
    manifest = seed_study(ledger.factory, "1.2.3.6")
    failed = seed_job(ledger.factory, manifest, to=JobState.FAILED)
    pending = seed_job(ledger.factory, manifest, to=None, model_version="2")
    client = ledger.remote(token=TOKEN)
    actor = token_id(TOKEN)

    response = client.post(f"/api/jobs/{failed}/retry")
    assert response.status_code == 200
    assert response.json() == {
        "id": failed,
        "state": "pending",
        "previous_state": "failed",
        "actor": f"api:{actor}",
    }
    assert job_state(ledger.factory, failed) == "pending"
    with ledger.factory() as session:
        last = session.scalars(
            select(JobEvent).where(JobEvent.job_id == failed).order_by(JobEvent.id.desc())
        ).first()
        assert last is not None and (last.from_state, last.to_state, last.actor) == (
            "failed",
            "pending",
            f"api:{actor}",
        )

    assert client.post(f"/api/jobs/{pending}/cancel").json()["state"] == "cancelled"
    assert job_state(ledger.factory, pending) == "cancelled"
    conflict = client.post(f"/api/jobs/{pending}/cancel")
    assert conflict.status_code == 409 and "only pending or running" in conflict.json()["detail"]
    assert client.post(f"/api/jobs/{failed}/retry").status_code == 409  # pending now: nothing to retry
    assert client.post("/api/jobs/424242/cancel").status_code == 404
    assert client.post(f"/api/jobs/{pending}/retry").status_code == 200  # cancelled -> pending

    audit = [(a.actor, a.method, a.path, a.status) for a in ledger.audit()]
    assert audit == [
        (actor, "POST", f"/api/jobs/{failed}/retry", 200),
        (actor, "POST", f"/api/jobs/{pending}/cancel", 200),
        (actor, "POST", f"/api/jobs/{pending}/cancel", 409),
        (actor, "POST", f"/api/jobs/{failed}/retry", 409),
        (actor, "POST", "/api/jobs/424242/cancel", 404),
        (actor, "POST", f"/api/jobs/{pending}/retry", 200),
    ]
    assert all(a.client == "testclient" for a in ledger.audit())


def test_a_state_change_and_its_audit_entry_commit_together(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = seed_job(ledger.factory, seed_study(ledger.factory, "1.2.3.7"), to=JobState.FAILED)
    # an audit entry the database refuses (NOT NULL): the retry must not survive without it
    monkeypatch.setattr(
        Requester,
        "entry",
        lambda self, status: AuditEntry(actor=None, method="POST", path="/", status=status),
    )
    response = ledger.local(raise_server_exceptions=False).post(f"/api/jobs/{failed}/retry")
    assert response.status_code == 500
    assert job_state(ledger.factory, failed) == "failed"
    with ledger.factory() as session:
        assert session.scalars(select(JobEvent.to_state).where(JobEvent.job_id == failed)).all() == [
            "pending",
            "running",
            "failed",
        ]


def test_reads_of_patient_data_are_audited_and_other_reads_are_not(ledger: Ledger) -> None:
    job_id = seed_job(ledger.factory, seed_study(ledger.factory, "1.2.3.8"))
    client = ledger.local()
    for path in (
        "/api/jobs?state=succeeded",
        f"/api/jobs/{job_id}",
        "/api/studies",
        "/api/studies/1.2.3.8",
        "/api/deliveries",
        "/api/studies/7.7",
        f"/jobs/{job_id}",
        "/studies",
    ):
        client.get(path)
    for path in ("/api/associations", "/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert [(a.actor, a.path, a.status) for a in ledger.audit()] == [
        ("loopback", "/api/jobs?state=succeeded", 200),
        ("loopback", f"/api/jobs/{job_id}", 200),
        ("loopback", "/api/studies", 200),
        ("loopback", "/api/studies/1.2.3.8", 200),
        ("loopback", "/api/deliveries", 200),
        ("loopback", "/api/studies/7.7", 404),
        ("loopback", f"/jobs/{job_id}", 200),
        ("loopback", "/studies", 200),
    ]


def test_authentication(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seed_job(ledger.factory, seed_study(ledger.factory, "1.2.3.9", patient_name="Secret^Patient"))
    app = ledger.app()
    anonymous = ledger.remote(app)
    for method, path in (
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/1"),
        ("POST", "/api/jobs/1/cancel"),
        ("GET", "/api/studies/1.2.3.9"),
        ("GET", "/jobs/1"),
        ("GET", "/studies"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
    ):
        response = anonymous.request(method, path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Secret" not in response.text
    assert ledger.remote(app, token="wrong-token").get("/api/jobs").status_code == 401
    assert TestClient(app, headers={"Authorization": f"Basic {TOKEN}"}).get("/api/jobs").status_code == 401
    assert ledger.remote(app, token=TOKEN).get("/api/jobs").status_code == 200
    assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200
    assert job_state(ledger.factory, 1) == "succeeded"

    local = ledger.local(app)
    assert local.get("/api/studies/1.2.3.9").json()["patient_name"] == "Secret^Patient"
    # a loopback client must name a loopback host (DNS rebinding) and not post from a foreign page
    rebound = TestClient(app, client=LOCAL, base_url="http://evil.example:8080")
    assert rebound.get("/api/jobs").status_code == 403
    assert local.post("/api/jobs/1/cancel", headers={"Origin": "http://evil.example"}).status_code == 403
    assert local.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ipv6 = TestClient(app, client=("::1", 41000), base_url="http://[::1]:8080")
    assert ipv6.get("/api/jobs").status_code == 200

    strict = Settings.model_validate(
        {**ledger.settings.model_dump(mode="python"), "api": {"tokens": [TOKEN], "trust_loopback": False}}
    )
    strict_app = create_app(strict, ledger.factory)
    assert ledger.local(strict_app).get("/api/jobs").status_code == 401
    assert (
        ledger.local(strict_app, headers={"Authorization": f"Bearer {TOKEN}"}).get("/api/jobs").status_code
        == 200
    )
    open_metrics = create_app(
        Settings.model_validate(
            {**ledger.settings.model_dump(mode="python"), "api": {"metrics_require_token": False}}
        ),
        ledger.factory,
    )
    assert ledger.remote(open_metrics).get("/metrics").status_code == 200

    actors = {a.actor for a in ledger.audit()}
    assert actors == {token_id(TOKEN), "loopback"}
    assert TOKEN not in caplog.text and "api.refused" in caplog.text
    with ledger.factory() as session:
        dumped = " ".join(str(row) for row in session.execute(text("SELECT * FROM audit")).all())
    assert TOKEN not in dumped


def test_dashboard_login_sets_a_cookie_that_only_pages_accept(ledger: Ledger) -> None:
    job_id = seed_job(ledger.factory, seed_study(ledger.factory, "1.2.3.10"))
    browser = ledger.remote(follow_redirects=False)
    assert browser.get("/login").status_code == 200
    assert (
        browser.post(
            "/login", content="token=nope", headers={"Content-Type": "application/x-www-form-urlencoded"}
        ).status_code
        == 401
    )
    response = browser.post(
        "/login", content=f"token={TOKEN}", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    browser.cookies.set("msvlm_token", TOKEN)
    assert browser.get(f"/jobs/{job_id}").status_code == 200
    assert browser.get("/api/jobs").status_code == 401  # the API wants the header
    assert browser.post(f"/api/jobs/{job_id}/retry").status_code == 401
    # without the cookie a browser is sent to the login page, not shown JSON
    refused = ledger.remote().get("/jobs", headers={"Accept": "text/html"})
    assert refused.status_code == 401 and 'href="/login"' in refused.text
    stale = ledger.remote(cookies={"msvlm_token": "revoked"}).get("/jobs")
    assert stale.status_code == 401 and stale.json()["detail"] == "invalid token"
    # a stale cookie does not lock out a loopback browser
    assert ledger.local(cookies={"msvlm_token": "revoked"}).get("/jobs").status_code == 200


def test_readyz_reports_each_failing_check(ledger: Ledger, tmp_path: Path) -> None:
    def ready(settings: Settings, **kwargs: Any) -> tuple[int, dict[str, bool]]:
        response = ledger.remote(create_app(settings, ledger.factory, **kwargs)).get("/readyz")
        return response.status_code, {c["name"]: c["ok"] for c in response.json()["checks"]}

    base = ledger.settings.model_dump(mode="python")
    assert ready(ledger.settings) == (200, {"database": True, "storage": True, "disk": True})

    not_a_dir = tmp_path / "storage-is-a-file"
    not_a_dir.write_text("x")
    status, checks = ready(Settings.model_validate({**base, "storage": {"path": str(not_a_dir)}}))
    assert status == 503 and checks["storage"] is False and checks["database"] is True
    status, checks = ready(Settings.model_validate({**base, "storage": {"path": str(tmp_path / "missing")}}))
    assert status == 503 and checks["storage"] is False
    status, checks = ready(
        Settings.model_validate({**base, "storage": {"path": str(ledger.storage), "min_free_mb": 10**12}})
    )
    assert status == 503 and checks == {"database": True, "storage": True, "disk": False}

    model = tmp_path / "model"  # the readiness check looks at the folder, it does not load it
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 8)
    worker = Settings.model_validate({**base, "node": {"roles": ["worker"]}, "model": {"path": str(model)}})
    assert ready(worker, model_ready=lambda: True) == (
        200,
        {"database": True, "model": True, "storage": True, "disk": True},
    )
    assert ready(worker, model_ready=lambda: False)[1]["model"] is False
    no_model = Settings.model_validate(
        {**base, "node": {"roles": ["worker"]}, "model": {"path": str(tmp_path)}}
    )
    assert ready(no_model)[1]["model"] is False

    with ledger.factory() as session, session.begin():
        session.execute(text("UPDATE alembic_version SET version_num = 'ancient'"))
    status, checks = ready(ledger.settings)
    assert status == 503 and checks["database"] is False
    assert list(ledger.storage.iterdir()) == []  # the probe file is gone


def test_openapi_lists_every_route_with_a_response_model(ledger: Ledger) -> None:
    app = ledger.app()
    document = ledger.local(app).get("/openapi.json").json()
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.include_in_schema]
    assert {r.path for r in routes} == {
        "/healthz",
        "/readyz",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/retry",
        "/api/jobs/{job_id}/cancel",
        "/api/studies",
        "/api/studies/{study_uid}",
        "/api/deliveries",
        "/api/associations",
    }
    for route in routes:
        assert route.response_model is not None, route.path
        for method in route.methods or ():
            operation = document["paths"][route.path][method.lower()]
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert "$ref" in schema or "$ref" in schema.get("items", {}), (route.path, schema)
            assert operation.get("description") or operation.get("summary"), route.path
    components = document["components"]["schemas"]
    assert {"JobDetail", "Manifest", "View", "Exclusion", "Finding", "Ready"} <= set(components)
    assert "from" in components["JobEventOut"]["properties"]


def test_real_settled_phantom_jobs_through_the_api(database_url: str, tmp_path: Path) -> None:
    """Receiver subprocess + dcmtk + settle, then the API reads, cancels and retries the real job."""
    from models.phantom import PhantomSpec, generate_study, write_study
    from node.modelinfo import ModelIdentity
    from node.settle import SettleContext, settle_once
    from tests.support import dcmtk
    from tests.support.node import NodeProcess

    workdir = tmp_path / "node"
    workdir.mkdir()
    node = NodeProcess(workdir, database_url).start()
    engine = create_db_engine(database_url)
    try:
        spec = PhantomSpec(
            modality="CT",
            planes=("axial",),
            phases=("non_contrast", "arterial"),
            seed=11,
            matrix=32,
            slices=12,
            include_localizer=True,
            include_dose_report=True,
            include_oblique=False,
        )
        write_study(generate_study(spec), tmp_path / "study")
        files = sorted((tmp_path / "study").rglob("*.dcm"))
        result = dcmtk.run(
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            node.ae_title,
            "127.0.0.1",
            str(node.port),
            *map(str, files),
        )
        assert result.returncode == 0, result.stderr
        settings = make_settings(database_url, node.storage, settle={"after_release_seconds": 0.5})
        factory = session_factory(engine)
        ctx = SettleContext(
            settings=settings,
            factory=factory,
            storage_root=node.storage,
            actor="test",
            model=ModelIdentity(path=Path("."), name="test-model", version="1", weights_sha256="0" * 64),
        )
        deadline = time.monotonic() + 20
        while not settle_once(ctx):
            assert time.monotonic() < deadline, "the study did not settle"
            time.sleep(0.2)
    finally:
        node.stop()

    client = Ledger(settings, factory, node.storage).local()
    [job] = client.get("/api/jobs").json()
    assert job["state"] == "pending" and job["views"] == 2 and job["signal"] == "after_release"
    detail = client.get(f"/api/jobs/{job['id']}").json()
    assert [v["key"] for v in detail["manifest"]["views"]] == ["CT:axial:non_contrast", "CT:axial:arterial"]
    assert all(v["slice_count"] == 12 and v["evidence"] for v in detail["manifest"]["views"])
    assert {"localizer"} <= {e["reason_code"] for e in detail["manifest"]["excluded"]}
    [study] = client.get("/api/studies").json()
    assert study["instances"] == len(files) and study["job_state"] == "pending"
    [association] = client.get("/api/associations").json()
    assert association["outcome"] == "released" and association["instances_received"] == len(files)
    assert client.post(f"/api/jobs/{job['id']}/cancel").json()["previous_state"] == "pending"
    assert client.post(f"/api/jobs/{job['id']}/retry").json()["previous_state"] == "cancelled"
    assert [e["to"] for e in client.get(f"/api/jobs/{job['id']}").json()["events"]] == [
        "pending",
        "cancelled",
        "pending",
    ]
    engine.dispose()
