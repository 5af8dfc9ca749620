"""From study to SR in the PACS, with real peers: dcmtk storescu -> node -> dcmtk storescp.

The node runs as subprocesses (``serve`` and ``worker``) against SQLite and
PostgreSQL. A tiny random model keeps the worker mechanics fast; the report's
content is checked with the bundled demo weights in tests/model.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select, text

from models.phantom import FINDINGS
from models.phantom.findings import vocabulary_entries
from node.manifest import Manifest
from node.schema import Delivery, Job, JobEvent, Result
from node.srcheck import validate_sr
from tests.support.node import REPO, NodeProcess
from tests.support.pipeline import (
    StoreScp,
    cli,
    delivered,
    ledger,
    phantom,
    pipeline_node,
    send,
    start_worker,
    wait_for,
)
from tests.support.sr_fixtures import read_back

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


def test_study_to_validated_sr_at_the_pacs(
    node_factory: Callable[..., NodeProcess], tiny_model: Path, pacs: StoreScp, tmp_path: Path
) -> None:
    # Comprehensive SR, which carries each key image's region (the other tests keep Basic Text)
    node = pipeline_node(node_factory, tiny_model, pacs.port, extra={"report": {"document": "comprehensive"}})
    node.start()
    files = phantom(tmp_path, seed=11)
    send(node, files)
    wait_for(lambda: delivered(node.database_url) == 1, 120, "the SR delivered to the PACS", node)
    [sr_file] = pacs.files()
    warnings = validate_sr(sr_file)  # dciodvfy and dsrdump: raises on any error
    assert isinstance(warnings, list)
    sr = dcmread(sr_file)
    assert sr.Modality == "SR" and sr.Manufacturer == "msvlm-node"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    # coded findings only for what the model assesses on CT: no rectal mass on a chest CT
    back = read_back(sr)
    coded = {meaning for (_, _), (meaning, _, _) in back.coded.items()}
    assert coded == {f.code.meaning for f in FINDINGS if f.applies_to("CT")}

    [job] = cli(node, "jobs", "list")
    assert job["state"] == "succeeded"
    detail = cli(node, "jobs", "show", str(job["id"]))
    manifest = Manifest.model_validate(detail["manifest"])
    used = {ref.sop_instance_uid for view in manifest.views for ref in view.slices}
    referenced = {
        inst.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert referenced == used
    assert sr.StudyInstanceUID == manifest.study_instance_uid
    # the nodule (called present) is coded at the site the job's result names, as the vocabulary codes it
    [nodule] = [f for f in detail["result"]["findings"] if f["key"] == "lung_nodule"]
    assert nodule["present"] and 0 < nodule["site_probability"] <= 1
    # its side read from the images (the worker passes each view's orientation), the site on it
    assert nodule["side_from_images"] in ("right", "left")
    assert nodule["site"].startswith(nodule["side_from_images"] + " "), nodule
    [entry] = [e for e in vocabulary_entries() if e["key"] == "lung_nodule"]
    [site] = [s for s in entry["sites"] if s["name"] == nodule["site"]]
    expected = (site["structure"][0], *([site["modifier"][1][0]] if "modifier" in site else []))
    assert back.sites[("786838002", "SCT")] == expected
    sited = {e["key"] for e in vocabulary_entries() if "sites" in e}
    with_site = [f for f in detail["result"]["findings"] if "site" in f]
    assert with_site == [f for f in detail["result"]["findings"] if f["present"] and f["key"] in sited]
    assert len(back.sites) == len(with_site)
    # each key image is an instance the model read, placed and present, and the SR points to it
    keyed = {f["code"]: f["key_image"] for f in detail["result"]["findings"] if "key_image" in f}
    assert keyed and set(keyed) <= {f["code"] for f in with_site}  # the tiny model's nodule has one
    assert all(image["sop_instance_uid"] in used for image in keyed.values())
    assert {code: image["sop_instance_uid"] for code, image in keyed.items()} == {
        f"{scheme}:{value}": uid for (value, scheme), (_, _, uid, _) in back.key_images.items()
    }
    # and where on it: the region the result gives, outlined on that image, inside its pixels
    sources = {dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    for code, image in keyed.items():
        left, top, right, bottom = image["region"]
        shown = dcmread(sources[image["sop_instance_uid"]], stop_before_pixels=True)
        assert 0 <= left < right <= shown.Columns and 0 <= top < bottom <= shown.Rows, image
        scheme, value = code.split(":")
        relationship, graphic, corners, selected_from = back.key_regions[(value, scheme)]
        assert (relationship, graphic, selected_from[2]) == (
            "INFERRED FROM",
            "POLYLINE",
            image["sop_instance_uid"],
        )
        outline = (left, top, right, top, right, bottom, left, bottom, left, top)
        assert [v for point in corners for v in point] == pytest.approx(outline, abs=0.06)
    assert detail["result"]["sr_sop_instance_uid"] == sr.SOPInstanceUID
    assert [d["state"] for d in detail["deliveries"]] == ["succeeded"]
    assert all(detail["timings"][k] is not None for k in ("load_seconds", "infer_seconds", "report_seconds"))
    studies = cli(node, "studies", "list")
    assert studies[0]["job_state"] == "succeeded"

    # the admin views answer with this job
    summary = ledger(node.database_url, text("SELECT job_id, state, deliveries_succeeded FROM v_job_summary"))
    assert [tuple(r) for r in summary] == [(job["id"], "succeeded", 1)]
    [turnaround] = ledger(node.database_url, text("SELECT last_image_to_sr_seconds FROM v_turnaround"))
    assert 0 < turnaround[0] < 120
    assert ledger(node.database_url, text("SELECT * FROM v_failures")) == []
    _run_documented_queries(node.database_url)

    # the node's own HTTP surface: ready, and its metrics saw the study flow
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/readyz", timeout=10) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'msvlm_jobs{state="succeeded"} 1.0' in metrics
    assert f"msvlm_instances_received_total {float(len(files))}" in metrics

    # re-sending the same study creates no second job
    send(node, files)
    time.sleep(3)
    assert len(cli(node, "jobs", "list")) == 1
    assert node.stop() == 0


def _run_documented_queries(url: str) -> None:
    """Every SQL block of docs/admin-sql.md that fits this database runs without error."""
    import re

    blocks = re.findall(r"```sql\n(.*?)```", (REPO / "docs" / "admin-sql.md").read_text(), flags=re.S)
    postgres_only = ("now()", "interval", "percentile_cont", "date_trunc")
    sqlite_only = ("datetime(", "date(last")
    ran = 0
    for sql in blocks:
        if "'1.2.3...'" in sql:
            sql = sql.replace("'1.2.3...'", "'none'")
        if url.startswith("sqlite") and any(k in sql for k in postgres_only):
            continue
        if url.startswith("postgresql") and any(k in sql for k in sqlite_only):
            continue
        ledger(url, text(sql))
        ran += 1
    assert ran >= 5


def test_destination_down_then_up_gets_the_sr(
    node_factory: Callable[..., NodeProcess], tiny_model: Path, tmp_path: Path
) -> None:
    down = StoreScp(tmp_path / "late-pacs")  # not started yet: the port refuses connections
    node = pipeline_node(node_factory, tiny_model, down.port).start()
    send(node, phantom(tmp_path, seed=12))
    wait_for(
        lambda: ledger(node.database_url, select(Delivery.id).where(Delivery.state == "failed")),
        120,
        "a failed delivery attempt",
        node,
    )
    down.start()
    try:
        wait_for(
            lambda: delivered(node.database_url), 60, "the SR delivered after the destination came back", node
        )
    finally:
        down.stop()
    rows = ledger(
        node.database_url, select(Delivery.attempt, Delivery.state, Delivery.error).order_by(Delivery.attempt)
    )
    assert rows[-1].state == "succeeded" and rows[0].state == "failed"
    assert len(down.files()) == 1
    assert "cannot reach PACS@127.0.0.1" in rows[0].error
    failures = ledger(node.database_url, text("SELECT kind, reason FROM v_failures"))
    assert failures and all(kind == "delivery" for kind, _ in failures)


def test_killed_worker_job_is_finished_by_another(
    node_factory: Callable[..., NodeProcess], tiny_model: Path, pacs: StoreScp, tmp_path: Path
) -> None:
    node = pipeline_node(node_factory, tiny_model, pacs.port, roles=("receiver", "scheduler")).start()
    send(node, phantom(tmp_path, seed=13, planes=("axial", "coronal"), matrix=192, slices=64))
    wait_for(
        lambda: ledger(node.database_url, select(Job.id).where(Job.state == "pending")), 60, "a job", node
    )
    first = start_worker(node, "worker-a")
    try:
        wait_for(
            lambda: ledger(node.database_url, select(Job.id).where(Job.state == "running")),
            120,
            "worker-a to claim the job",
            node,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    [(state,)] = ledger(node.database_url, select(Job.state))
    if state == "succeeded":
        pytest.fail("worker-a finished before it could be killed; make the study larger")
    second = start_worker(node, "worker-b")
    try:
        wait_for(
            lambda: ledger(node.database_url, select(Job.id).where(Job.state == "succeeded")),
            180,
            "worker-b to finish the job",
            node,
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    [job] = ledger(node.database_url, select(Job.attempts, Job.worker))
    assert job.attempts == 2 and job.worker == "worker-b"
    events = ledger(node.database_url, select(JobEvent.to_state, JobEvent.actor).order_by(JobEvent.id))
    assert [e.to_state for e in events] == ["pending", "running", "pending", "running", "succeeded"]
    assert events[1].actor == "worker-a" and events[3].actor == "worker-b"
    wait_for(lambda: delivered(node.database_url) == 1, 60, "the SR delivered", node)
    assert len(pacs.files()) == 1


def test_two_workers_run_each_of_ten_jobs_exactly_once(
    node_factory: Callable[..., NodeProcess], tiny_model: Path, pacs: StoreScp, tmp_path: Path
) -> None:
    node = pipeline_node(node_factory, tiny_model, pacs.port, roles=("receiver", "scheduler")).start()
    for seed in range(20, 30):
        send(
            node,
            phantom(
                tmp_path,
                seed=seed,
                phases=("non_contrast",),
                matrix=32,
                slices=12,
                include_localizer=False,
                include_dose_report=False,
                include_oblique=False,
            ),
        )
    wait_for(lambda: len(ledger(node.database_url, select(Job.id))) == 10, 60, "ten jobs", node)
    workers = [start_worker(node, "worker-1"), start_worker(node, "worker-2")]
    try:
        wait_for(
            lambda: (
                ledger(
                    node.database_url, select(func.count()).select_from(Job).where(Job.state == "succeeded")
                )[0][0]
                == 10
            ),
            300,
            "ten succeeded jobs",
            node,
        )
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
    assert {row.attempts for row in ledger(node.database_url, select(Job.attempts))} == {1}
    runs = ledger(
        node.database_url,
        select(JobEvent.job_id, func.count()).where(JobEvent.to_state == "running").group_by(JobEvent.job_id),
    )
    assert sorted(n for _, n in runs) == [1] * 10
    assert ledger(node.database_url, select(func.count()).select_from(Result))[0][0] == 10
    wait_for(lambda: delivered(node.database_url) == 10, 60, "ten SRs delivered", node)
    assert len(pacs.files()) == 10


def test_corrupt_pixel_data_fails_that_job_and_the_next_study_still_processes(
    node_factory: Callable[..., NodeProcess], tiny_model: Path, pacs: StoreScp, tmp_path: Path
) -> None:
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    node = pipeline_node(node_factory, tiny_model, pacs.port).start()
    files = phantom(
        tmp_path,
        seed=14,
        phases=("non_contrast",),
        include_localizer=False,
        include_dose_report=False,
        include_oblique=False,
    )
    corrupted = tmp_path / "corrupt"
    corrupted.mkdir()
    broken = []
    for i, path in enumerate(files):
        ds = dcmread(path)
        ds.compress(RLELossless)
        if i == 3:  # a garbage RLE segment table: structurally valid DICOM, undecodable pixels
            [fragment] = list(generate_frames(ds.PixelData, number_of_frames=1))
            ds.PixelData = encapsulate([b"\x7f" * 64 + fragment[64:]])
        out = corrupted / path.name
        ds.save_as(out, enforce_file_format=True)
        broken.append(out)
    send(node, broken, "-xr")  # propose RLE: keep the files as they are
    failed = wait_for(
        lambda: ledger(node.database_url, select(Job.id, Job.error).where(Job.state == "failed")),
        120,
        "the corrupt study's job to fail",
        node,
    )
    assert len(failed) == 1 and failed[0].error
    assert "decode" in failed[0].error.lower() or "pixel" in failed[0].error.lower()
    send(node, phantom(tmp_path, seed=15))
    wait_for(
        lambda: ledger(node.database_url, select(Job.id).where(Job.state == "succeeded")),
        120,
        "the next study to succeed",
        node,
    )
    [(kind, reason)] = ledger(node.database_url, text("SELECT kind, reason FROM v_failures"))
    assert kind == "job" and reason == failed[0].error
