"""The dashboard: server-rendered pages, and one job page as headless Chromium shows it.

The Chromium test settles a real phantom study (receiver subprocess, dcmtk,
settle), finishes its job the way a worker records one, serves the app with
uvicorn on a free loopback port, then dumps the DOM and takes a screenshot.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from node.api import start_api
from node.audit import token_id
from node.config import Settings
from node.db import create_db_engine, session_factory, upgrade
from node.jobs import JobState, claim_next, transition
from node.schema import Delivery, Job, JobEvent, Result, utcnow
from tests.integration.test_api import (
    IMPRESSION,
    REPORT,
    TOKEN,
    Ledger,
    make_settings,
    seed_job,
    seed_study,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(database_url: str, tmp_path: Path) -> Iterator[Ledger]:
    engine = create_db_engine(database_url)
    upgrade(engine)
    storage = tmp_path / "storage"
    storage.mkdir()
    yield Ledger(make_settings(database_url, storage), session_factory(engine), storage)
    engine.dispose()


def test_pages_filters_colours_refresh_and_no_names_in_lists(ledger: Ledger) -> None:
    manifest = seed_study(ledger.factory, "1.2.7.1", accession="ACC-D1", patient_name="Doe^Jane")
    done = seed_job(ledger.factory, manifest)
    failed = seed_job(ledger.factory, manifest, to=JobState.FAILED, model_version="2")
    seed_job(ledger.factory, manifest, to=None, model_version="3")
    client = ledger.local()

    jobs = client.get("/jobs").text
    assert 'http-equiv="refresh" content="10"' in jobs
    assert all(f'class="pill s-{state}"' in jobs for state in ("succeeded", "failed", "pending"))
    assert "ACC-D1" in jobs and "Doe^Jane" not in jobs
    only_failed = client.get("/jobs", params={"state": "failed"}).text
    assert f'href="/jobs/{failed}"' in only_failed and f'href="/jobs/{done}"' not in only_failed
    assert "No jobs match" in client.get("/jobs", params={"since": "2999-01-01"}).text
    assert client.get("/jobs", params={"since": "soon"}).status_code == 400

    still = client.get("/jobs", params={"refresh": "0"}).text
    assert 'http-equiv="refresh"' not in still and "off (<a" in still
    assert 'content="30"' in client.get("/jobs", params={"refresh": "30"}).text

    studies = client.get("/studies").text
    assert "ACC-D1" in studies and "Doe^Jane" not in studies and "s-pending" in studies
    study = client.get("/studies/1.2.7.1").text
    assert "Doe^Jane" in study and "SCOUT" in study and f'href="/jobs/{done}"' in study

    page = client.get(f"/jobs/{done}").text
    for expected in (
        "Doe^Jane",
        REPORT,
        IMPRESSION,
        "Lung nodule",
        "Present",
        "Absent",
        "0.91",
        "CT:axial:non_contrast",
        "no contrast agent in the headers",
        "localizer",
        "ImageType says LOCALIZER",
        "last image",
        "settled (job created)",
        "delivered",
        "0x0000",
    ):
        assert expected in page, expected
    assert "slices missing" in client.get(f"/jobs/{failed}").text
    assert client.get("/jobs/999999").status_code == 404
    assert ledger.remote().get(f"/jobs/{done}").status_code == 401


def _state_and_last_event(ledger: Ledger, job_id: int) -> tuple[str, str]:
    with ledger.factory() as session:
        state = session.execute(select(Job.state).where(Job.id == job_id)).scalar_one()
        actor = session.execute(
            select(JobEvent.actor).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()).limit(1)
        ).scalar_one()
    return state, actor


def test_job_page_retry_and_cancel_buttons_are_same_origin_audited_form_posts(ledger: Ledger) -> None:
    manifest = seed_study(ledger.factory, "1.2.7.2", accession="ACC-D2")
    failed = seed_job(ledger.factory, manifest, to=JobState.FAILED)
    pending = seed_job(ledger.factory, manifest, to=None, model_version="2")
    here = {"Origin": "http://127.0.0.1:8080"}
    browser = ledger.local(follow_redirects=False)

    page = browser.get(f"/jobs/{failed}").text
    assert f'action="/jobs/{failed}/retry"' in page and "/cancel" not in page
    assert f'action="/jobs/{pending}/cancel"' in browser.get(f"/jobs/{pending}").text

    retried = browser.post(f"/jobs/{failed}/retry", headers=here)
    assert retried.status_code == 303 and retried.headers["location"] == f"/jobs/{failed}?done=retried"
    assert _state_and_last_event(ledger, failed) == ("pending", "dashboard:loopback")
    assert "Sent back to pending" in browser.get(retried.headers["location"]).text

    # a pending job cannot be retried: the page says why, and nothing changes
    refused = browser.post(f"/jobs/{pending}/retry", headers=here)
    assert refused.status_code == 409
    assert "Refused: job" in refused.text and "only finished jobs can be retried" in refused.text
    assert _state_and_last_event(ledger, pending) == ("pending", "settle")
    cancelled = browser.post(f"/jobs/{pending}/cancel", headers=here)
    assert cancelled.status_code == 303
    assert _state_and_last_event(ledger, pending) == ("cancelled", "dashboard:loopback")
    assert browser.post("/jobs/999999/cancel", headers=here).status_code == 404

    # another site cannot forge the post, whether the browser is on the node or signed in remotely
    evil, remote_here = {"Origin": "http://evil.example"}, {"Origin": "http://testserver"}
    assert browser.post(f"/jobs/{pending}/retry", headers=evil).status_code == 403
    signed_in = ledger.remote(cookies={"msvlm_token": TOKEN}, follow_redirects=False)
    assert signed_in.post(f"/jobs/{pending}/retry").status_code == 403  # no Origin at all
    assert signed_in.post(f"/jobs/{pending}/retry", headers=evil).status_code == 403
    assert ledger.remote().post(f"/jobs/{pending}/retry", headers=remote_here).status_code == 401
    assert _state_and_last_event(ledger, pending)[0] == "cancelled"
    ok = signed_in.post(f"/jobs/{pending}/retry", headers=remote_here)
    assert ok.status_code == 303
    assert _state_and_last_event(ledger, pending) == ("pending", f"dashboard:{token_id(TOKEN)}")

    posts = [(e.method, e.path, e.status) for e in ledger.audit() if e.method == "POST"]
    assert posts == [
        ("POST", f"/jobs/{failed}/retry", 200),
        ("POST", f"/jobs/{pending}/retry", 409),
        ("POST", f"/jobs/{pending}/cancel", 200),
        ("POST", "/jobs/999999/cancel", 404),
        ("POST", f"/jobs/{pending}/retry", 200),
    ]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("headless Chromium not found: apt-get install chromium")


def _headless(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *extra,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _settled_phantom_job(database_url: str, tmp_path: Path) -> tuple[Ledger, int]:
    """A real phantom study through the receiver and settle; its job finished as a worker records it."""
    from models.phantom import PhantomSpec, generate_study, write_study
    from node.modelinfo import ModelIdentity
    from node.settle import SettleContext, settle_once
    from tests.support import dcmtk
    from tests.support.node import NodeProcess

    (tmp_path / "node").mkdir()
    node = NodeProcess(tmp_path / "node", database_url).start()
    settings = make_settings(
        database_url,
        node.storage,
        settle={"after_release_seconds": 0.5},
        api={"port": 0, "dashboard_refresh_seconds": 0},
    )
    engine = create_db_engine(database_url)
    factory = session_factory(engine)
    try:
        spec = PhantomSpec(
            modality="CT",
            planes=("axial", "coronal"),
            phases=("non_contrast", "venous"),
            seed=31,
            matrix=32,
            slices=12,
            include_localizer=True,
            include_dose_report=True,
            include_oblique=False,
        )
        write_study(generate_study(spec), tmp_path / "study")
        result = dcmtk.run(
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            node.ae_title,
            "127.0.0.1",
            str(node.port),
            *map(str, sorted((tmp_path / "study").rglob("*.dcm"))),
        )
        assert result.returncode == 0, result.stderr
        ctx = SettleContext(
            settings=settings,
            factory=factory,
            storage_root=node.storage,
            actor="test",
            model=ModelIdentity(
                path=Path("."), name="msvlm-demo", version="0.1", weights_sha256="c0ffee" * 10 + "abcd"
            ),
        )
        deadline = time.monotonic() + 20
        while not settle_once(ctx):
            assert time.monotonic() < deadline, "the study did not settle"
            time.sleep(0.2)
    finally:
        node.stop()
    with factory() as session, session.begin():
        job = claim_next(session, worker="gpu-01:4242", lease_seconds=60)
        assert job is not None
        job_id = job.id
    findings = [
        {
            "key": "lung_nodule",
            "display": "Lung nodule",
            "code": "SCT:427359005",
            "present": True,
            "probability": 0.91,
            "site": "right upper lobe",
            "site_probability": 0.62,
            "side_from_images": "right",
            "key_image": {
                "series_instance_uid": "1.2.3",
                "sop_instance_uid": "1.2.3.4",
                "series_number": 3,
                "instance_number": 17,
                "region": [192.0, 64.0, 256.0, 128.0],
            },
            "impression_restated_from_mm": "16",
        },
        {
            "key": "pleural_effusion",
            "display": "Pleural effusion",
            "code": "SCT:60046008",
            "present": False,
            "probability": 0.04,
        },
        {
            "key": "liver_lesion",
            "display": "Liver lesion",
            "code": "SCT:300331000",
            "present": False,
            "probability": 0.22,
        },
    ]
    now = utcnow()
    with factory() as session, session.begin():
        session.add(
            Result(
                job_id=job_id,
                report_text=REPORT,
                impression_text=IMPRESSION,
                findings=json.dumps(findings),
                sr_path="sr.dcm",
                sr_sop_instance_uid="1.2.826.0.1.3680043.8.498.71.1.1",
                sr_series_instance_uid="1.2.826.0.1.3680043.8.498.71.1",
            )
        )
        transition(
            session,
            job_id,
            expected=[JobState.RUNNING],
            to=JobState.SUCCEEDED,
            actor="gpu-01:4242",
            worker="gpu-01:4242",
            values={"load_seconds": 0.84, "infer_seconds": 5.72, "report_seconds": 0.31},
        )
        session.add_all(
            [
                Delivery(
                    job_id=job_id,
                    destination="pacs",
                    ae_title="PACS",
                    host="pacs.example.org",
                    port=104,
                    attempt=1,
                    state="failed",
                    not_before=now,
                    started_at=now,
                    finished_at=now,
                    error="association rejected: called AE title not recognised",
                ),
                Delivery(
                    job_id=job_id,
                    destination="pacs",
                    ae_title="PACS",
                    host="pacs.example.org",
                    port=104,
                    attempt=2,
                    state="succeeded",
                    not_before=now + timedelta(seconds=5),
                    started_at=now + timedelta(seconds=5),
                    finished_at=now + timedelta(seconds=5.4),
                    status_code=0,
                ),
            ]
        )
    return Ledger(settings, factory, node.storage), job_id


def test_job_page_in_headless_chromium(database_url: str, tmp_path: Path) -> None:
    ledger, job_id = _settled_phantom_job(database_url, tmp_path)
    api = start_api(ledger.settings, ledger.factory)
    try:
        url = f"{api.url}/jobs/{job_id}"
        dom = _headless(url, tmp_path / "profile-dom", "--dump-dom")
        screenshot = tmp_path / "job.png"
        shot = _headless(
            url, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1400,2000"
        )
    finally:
        api.stop()
    assert dom.returncode == 0, dom.stderr[-2000:]
    for expected in (
        REPORT,
        IMPRESSION,
        "Lung nodule",
        "Present",
        "Absent",
        "right upper lobe",
        "(p 0.62; side read from the images)",
        "series 3, image 17, columns 192-256, rows 64-128",
        "impression gave lung nodule as 16 mm",
        "CT:axial:non_contrast",
        "CT:coronal:venous",
        "localizer",
        "settled (job created)",
        "delivered",
        "0x0000",
        "association rejected",
    ):
        assert expected in dom.stdout, expected
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    assert screenshot.stat().st_size > 30_000
    with Image.open(screenshot) as image:
        assert image.size == (1400, 2000)
        colours = image.convert("RGB").resize((140, 200)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # text, pills and tables, not a blank page


def test_api_server_starts_and_stops_on_a_free_port(ledger: Ledger) -> None:
    settings = Settings.model_validate({**ledger.settings.model_dump(mode="python"), "api": {"port": 0}})
    api = start_api(settings, ledger.factory)
    import httpx

    try:
        assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{api.url}/api/jobs").status_code == 200  # loopback
    finally:
        api.stop()
    assert not api.thread.is_alive()


def test_run_api_serves_until_the_stop_event_is_set(ledger: Ledger) -> None:
    """The way ``serve`` runs it: a thread that returns once ``stop`` is set."""
    import threading

    import httpx

    from node.api import run_api
    from tests.support.node import free_port

    port = free_port()
    settings = Settings.model_validate({**ledger.settings.model_dump(mode="python"), "api": {"port": port}})
    stop = threading.Event()
    thread = threading.Thread(target=run_api, args=(settings, ledger.factory, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.05)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
