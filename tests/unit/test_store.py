from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from node.errors import DiskFullError, InvalidUIDError
from node.store import STALE_TEMP_SECONDS, InstanceStore, validate_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "0.1", "2.25.123456789012345678901234567890"])
def test_valid_uids_pass(uid: str) -> None:
    assert validate_uid(uid, "UID") == uid


@pytest.mark.parametrize(
    "uid", ["", "1.02.3", "1..2", "1.2.", "../../etc/passwd", "1.2/3", "1.2.3a", "1." + "2" * 70, " 1.2"]
)
def test_invalid_uids_never_reach_a_path(uid: str, tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, min_free_mb=0, max_used_percent=100, fsync=False)
    with pytest.raises(InvalidUIDError):
        store.relative_path(uid, "1.2", "1.3")
    with pytest.raises(InvalidUIDError):
        store.relative_path("1.2", "1.3", uid)


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, min_free_mb=0, max_used_percent=100, fsync=True)
    rel = store.relative_path("1.2", "1.2.3", "1.2.3.4")
    assert store.write(rel, (b"abc", b"def")) == 6
    assert (tmp_path / rel).read_bytes() == b"abcdef"
    assert store.write(rel, (b"new",)) == 3
    assert (tmp_path / rel).read_bytes() == b"new"
    assert [p.name for p in (tmp_path / "1.2" / "1.2.3").iterdir()] == ["1.2.3.4.dcm"]


def test_sweep_removes_crash_leftovers_only(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, min_free_mb=0, max_used_percent=100, fsync=False)
    rel = store.relative_path("1.2", "1.2.3", "1.2.3.4")
    store.write(rel, (b"x",))
    leftover = tmp_path / "1.2" / "1.2.3" / ".1.2.3.5.dcm.1.2.tmp"
    leftover.write_bytes(b"half")
    stale = time.time() - STALE_TEMP_SECONDS - 1
    os.utime(leftover, (stale, stale))
    in_flight = tmp_path / "1.2" / "1.2.3" / ".1.2.3.6.dcm.3.4.tmp"
    in_flight.write_bytes(b"being written by another process")
    assert store.sweep_temporary() == 1
    assert not leftover.exists() and (tmp_path / rel).exists()
    # a process starting while others receive must leave their files alone
    assert in_flight.exists()


def test_watermark_refuses_before_writing(tmp_path: Path) -> None:
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // 2**20
    store = InstanceStore(tmp_path, min_free_mb=free_mb + 10, max_used_percent=100, fsync=False)
    with pytest.raises(DiskFullError, match="below the"):
        store.check_space(1000)
    percent = InstanceStore(tmp_path, min_free_mb=0, max_used_percent=0.001, fsync=False)
    with pytest.raises(DiskFullError, match="above the"):
        percent.check_space(1000)
