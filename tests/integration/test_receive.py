"""The receiver against real peers: dcmtk echoscu/storescu, and pynetdicom for bad input.

Every test here runs on SQLite and on PostgreSQL (``database_url`` fixture).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from node.schema import Association, Instance, Series, Study
from node.store import SPACE_CHECK_SECONDS
from tests.support import dcmtk
from tests.support.dicom import ct_slice, dataset_bytes, write_ct_series
from tests.support.node import NodeProcess
from tests.support.pipeline import ledger, wait_for

pytestmark = pytest.mark.integration


def _storescu(node: NodeProcess, *files: Path, aet: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    return dcmtk.run(
        "storescu", "-v", "-aet", aet, "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, files)
    )


def test_echo_succeeds_and_unknown_or_wrong_called_ae_are_rejected(node: NodeProcess) -> None:
    ok = dcmtk.run("echoscu", "-aet", "STORESCU", "-aec", "MSVLM", "127.0.0.1", str(node.port))
    assert ok.returncode == 0, ok.stderr
    unknown = dcmtk.run("echoscu", "-aet", "INTRUDER", "-aec", "MSVLM", "127.0.0.1", str(node.port))
    assert unknown.returncode != 0
    assert "Rejected" in unknown.stderr or "rejected" in unknown.stderr.lower()
    wrong_called = dcmtk.run("echoscu", "-aet", "STORESCU", "-aec", "NOTUS", "127.0.0.1", str(node.port))
    assert wrong_called.returncode != 0
    # the node keeps serving after rejections
    assert (
        dcmtk.run("echoscu", "-aet", "STORESCU", "-aec", "MSVLM", "127.0.0.1", str(node.port)).returncode == 0
    )

    rejected = ledger(
        node.database_url,
        select(Association.calling_ae, Association.rejection_reason, Association.rejection_code)
        .where(Association.outcome == "rejected")
        .order_by(Association.id),
    )
    assert [(r[0], r[2]) for r in rejected] == [("INTRUDER", "calling_ae"), ("STORESCU", "called_ae")]
    assert "not in the allow-list" in rejected[0][1]
    assert "called AE title 'NOTUS'" in rejected[1][1]
    assert "rejected" in node.log() and "INTRUDER" in node.log()


def test_peer_host_check_rejects_the_right_ae_from_the_wrong_host(node_factory: type[NodeProcess]) -> None:
    node = node_factory(peers=[{"ae_title": "STORESCU", "host": "10.1.2.3"}]).start()
    result = dcmtk.run("echoscu", "-aet", "STORESCU", "-aec", "MSVLM", "127.0.0.1", str(node.port))
    assert result.returncode != 0
    reasons = ledger(node.database_url, select(Association.rejection_reason, Association.rejection_code))
    assert "not allowed from 127.0.0.1" in reasons[0][0] and reasons[0][1] == "calling_host"


@pytest.mark.parametrize("associations", [1, 4])
def test_storescu_series_is_stored_byte_identical_and_indexed_once(
    node: NodeProcess, tmp_path: Path, associations: int
) -> None:
    files = write_ct_series(tmp_path / "series", 24, rows=128, seed=associations)
    chunks = [files[i::associations] for i in range(associations)]
    procs = [
        subprocess.Popen(
            [
                dcmtk.tool("storescu"),
                "-aet",
                "STORESCU",
                "-aec",
                "MSVLM",
                "127.0.0.1",
                str(node.port),
                *map(str, chunk),
            ],
            env=dcmtk.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for chunk in chunks
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    rows = ledger(
        node.database_url,
        select(Instance.sop_instance_uid, Instance.path, Instance.size_bytes, Instance.receive_count),
    )
    assert len(rows) == len(files)
    assert all(r.receive_count == 1 for r in rows)
    stored = {r.sop_instance_uid: node.storage / r.path for r in rows}
    for source in files:
        from pydicom import dcmread

        sop = dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(stored[sop]) == dataset_bytes(source)
        assert stored[sop].stat().st_size == dict((r.sop_instance_uid, r.size_bytes) for r in rows)[sop]
    assert not list(node.storage.rglob("*.tmp"))
    counts = (
        ledger(node.database_url, select(func.count()).select_from(Study))[0][0],
        ledger(node.database_url, select(func.count()).select_from(Series))[0][0],
    )
    assert counts == (1, 1)

    # The node records a release after answering it, so a peer may exit a moment before its row says so.
    def ended() -> list[tuple[str, int]] | None:
        rows = ledger(node.database_url, select(Association.outcome, Association.instances_received))
        done = len(rows) == associations and all(r.outcome != "open" for r in rows)
        return sorted((r.outcome, r.instances_received) for r in rows) if done else None

    outcomes = wait_for(ended, 10, "every association to be recorded as ended", node)
    assert outcomes == sorted(("released", len(c)) for c in chunks)


def test_repeated_sop_instance_replaces_the_stored_copy(node: NodeProcess, tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path / "a", 1)
    assert _storescu(node, path).returncode == 0
    assert _storescu(node, path).returncode == 0
    [(count,)] = ledger(node.database_url, select(Instance.receive_count))
    assert count == 2
    assert len(list(node.storage.rglob("*.dcm"))) == 1


def _send_with_pynetdicom(node: NodeProcess, dataset_or_bytes, sop_class: str, sop_instance: str) -> int:  # type: ignore[no-untyped-def]
    """C-STORE through pynetdicom, which (unlike dcmtk) can send malformed bytes unchanged."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset_or_bytes)
        return int(status.Status)
    finally:
        assoc.release()


def test_bad_instances_get_their_specific_status_and_the_node_keeps_serving(
    node: NodeProcess, tmp_path: Path
) -> None:
    from pynetdicom import _config

    study, series = generate_uid(), generate_uid()
    # a truncated file, sent as raw bytes
    good = ct_slice(study=study, series=series, index=0, rows=128)
    path = tmp_path / "full.dcm"
    good.save_as(path, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:-4000])
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = _send_with_pynetdicom(node, truncated, good.SOPClassUID, good.SOPInstanceUID)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert status == 0xC000

    # an invalid UID
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        bad_uid = ct_slice(study=study, series="1.2.840.01.abc", index=1, rows=16)
    assert _send_with_pynetdicom(node, bad_uid, bad_uid.SOPClassUID, bad_uid.SOPInstanceUID) == 0xC001

    # a Structured Report someone else wrote
    sr = ct_slice(study=study, series=series, index=2, rows=16)
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.Manufacturer = "OTHER VENDOR"
    del sr.PixelData
    assert _send_with_pynetdicom(node, sr, sr.SOPClassUID, sr.SOPInstanceUID) == 0x0122

    # a non-image SOP class is not even negotiated by dcmtk's storescu
    pdf = ct_slice(study=study, series=series, index=3, rows=16)
    pdf.SOPClassUID = pdf.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    pdf_path = tmp_path / "doc.dcm"
    pdf.save_as(pdf_path, enforce_file_format=True)
    result = _storescu(node, pdf_path)
    assert result.returncode != 0
    assert "presentation context" in (result.stdout + result.stderr).lower()

    # none of these left a file or a row; a good instance still goes through
    assert not list(node.storage.rglob("*.dcm")) if node.storage.exists() else True
    assert _storescu(node, path).returncode == 0
    [(sop,)] = ledger(node.database_url, select(Instance.sop_instance_uid))
    assert sop == good.SOPInstanceUID
    log = node.log()
    assert "status_name=CANNOT_UNDERSTAND" in log and "status_name=INVALID_UID" in log
    assert "TEST^SYNTHETIC" not in "\n".join(line for line in log.splitlines() if " DEBUG " not in line)


def test_echoes_and_stores_share_an_association_on_either_c_store_path(
    node_factory: type[NodeProcess],
) -> None:
    """C-STORE takes the fast path (node.pdata); C-ECHO and commands split over PDUs take pynetdicom's.

    With a 128-byte maximum PDU the command itself is split, so every message of the
    second node goes through pynetdicom's handler; both nodes must store and count alike.
    """
    for max_pdu in (4194304, 128):
        node = node_factory(extra={"node": {"max_pdu_size": max_pdu}}).start()
        study, series = generate_uid(), generate_uid()
        slices = [ct_slice(study=study, series=series, index=i, rows=32) for i in range(3)]
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.add_requested_context(slices[0].SOPClassUID, slices[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_established
        try:
            answers = [
                assoc.send_c_echo().Status,
                assoc.send_c_store(slices[0]).Status,
                assoc.send_c_store(slices[1]).Status,
                assoc.send_c_echo().Status,
                assoc.send_c_store(slices[2]).Status,
            ]
        finally:
            assoc.release()
        assert answers == [0, 0, 0, 0, 0], max_pdu
        stored = ledger(
            node.database_url,
            select(Instance.sop_instance_uid, Instance.path).where(Instance.series_instance_uid == series),
        )
        assert sorted(r[0] for r in stored) == sorted(str(s.SOPInstanceUID) for s in slices)
        for row in stored:
            [source] = [s for s in slices if s.SOPInstanceUID == row[0]]
            assert dataset_bytes(node.storage / row[1]) == _encoded(source)
        latest = select(Association.outcome, Association.instances_received).order_by(Association.id.desc())
        deadline = time.monotonic() + 10
        while ledger(node.database_url, latest.limit(1))[0][0] != "released":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert ledger(node.database_url, latest.limit(1)) == [("released", 3)]


def _encoded(dataset) -> bytes:  # type: ignore[no-untyped-def]
    """The data set as pynetdicom sends it (its transfer syntax, no file meta)."""
    from io import BytesIO

    from pydicom import dcmwrite

    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    raw = buffer.getvalue()
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]


def test_own_structured_report_is_stored_but_marked_as_our_output(node: NodeProcess) -> None:
    sr = ct_slice(study=generate_uid(), series=generate_uid(), index=0, rows=16)
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.Modality = "SR"
    sr.Manufacturer = "msvlm-node"
    del sr.PixelData
    assert _send_with_pynetdicom(node, sr, sr.SOPClassUID, sr.SOPInstanceUID) == 0x0000
    [(own,)] = ledger(node.database_url, select(Series.own_output))
    assert own is True


def test_disk_watermark_refuses_with_a700_then_accepts_again(
    node_factory: type[NodeProcess], tmp_path: Path
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    node = node_factory(extra={"storage": {"min_free_mb": int(free_mb - 200)}}).start()
    [path] = write_ct_series(tmp_path / "w", 1)
    ballast = tmp_path / "ballast"
    with ballast.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, 400 * 1024 * 1024)
    try:
        result = _storescu(node, path)
        assert "refused: outofresources" in (result.stdout + result.stderr).lower()
        assert "status=0xA700" in node.log()
        assert not list(node.storage.rglob("*.dcm"))
        assert ledger(node.database_url, select(func.count()).select_from(Instance))[0][0] == 0
    finally:
        ballast.unlink()
    time.sleep(SPACE_CHECK_SECONDS + 0.2)  # the node re-reads free space at most this often
    assert _storescu(node, path).returncode == 0
    assert len(list(node.storage.rglob("*.dcm"))) == 1


def test_sigterm_finishes_in_flight_association_and_exits_cleanly(node: NodeProcess, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 60, rows=256)
    sender = subprocess.Popen(
        [
            dcmtk.tool("storescu"),
            "-aet",
            "STORESCU",
            "-aec",
            "MSVLM",
            "127.0.0.1",
            str(node.port),
            *map(str, files),
        ],
        env=dcmtk.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while "receive.association_accepted" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.stop() == 0
    _, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, err
    [(count,)] = ledger(node.database_url, select(func.count()).select_from(Instance))
    assert count == len(files)
    assert "receive.stopped" in node.log()
    refused = dcmtk.run("echoscu", "-aet", "STORESCU", "-aec", "MSVLM", "127.0.0.1", str(node.port))
    assert refused.returncode != 0


def test_two_receiver_processes_take_concurrent_associations_two_each(
    node_factory: type[NodeProcess], tmp_path: Path
) -> None:
    """Four associations held open at once fall 2/2 on two receiver processes.

    Left to the kernel (SO_REUSEPORT hashing) they fell 4/0 or 3/1 in most runs, and
    one GIL-bound process did all the work.
    """
    node = node_factory(extra={"node": {"receivers": 2}}).start()
    deadline = time.monotonic() + 60
    while node.log().count("receive.listening") < 2:
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    study, series = generate_uid(), generate_uid()
    held = []
    try:
        for _ in range(4):
            assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
            assert assoc.is_established
            held.append(assoc)
        for i, assoc in enumerate(held):
            status = assoc.send_c_store(ct_slice(study=study, series=series, index=i))
            assert int(status.Status) == 0
    finally:
        for assoc in held:
            assoc.release()
    deadline = time.monotonic() + 30
    while True:
        per_receiver = ledger(
            node.database_url,
            select(Association.receiver, func.count())
            .where(Association.outcome == "released")
            .group_by(Association.receiver),
        )
        if sum(n for _, n in per_receiver) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(n for _, n in per_receiver) == [2, 2], node.problems()
    assert ledger(node.database_url, select(func.count()).select_from(Instance))[0][0] == 4
