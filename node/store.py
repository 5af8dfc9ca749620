"""The instance store: ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

A file becomes visible under its final name only once its bytes are durable:
written to a hidden temporary file in the target directory, fsynced, renamed
atomically over the final name, and the directory fsynced. A crash at any
point leaves either the old complete file, the new complete file, or a hidden
``.tmp`` file that :meth:`InstanceStore.sweep_temporary` removes at a later start-up.

Every UID is validated before it becomes part of a path: a UID is the only
thing a remote peer controls in our file names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from node.errors import DiskFullError, InvalidUIDError, StorageError

log = logging.getLogger(__name__)

#: PS3.5 9.1: components of digits without leading zeros, dot separated, ≤ 64 chars
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TEMP_SUFFIX = ".tmp"
SPACE_CHECK_SECONDS = 0.5
#: a temporary file untouched this long has no writer left (one instance is written in well under a second)
STALE_TEMP_SECONDS = 600.0


def validate_uid(value: object, what: str) -> str:
    """Return ``value`` if it is a valid DICOM UID, else raise :class:`InvalidUIDError`."""
    if not isinstance(value, str) or not value:
        raise InvalidUIDError(f"{what} is missing")
    if len(value) > 64 or not _UID_RE.match(value):
        raise InvalidUIDError(f"{what} is not a valid UID: {value[:80]!r}")
    return value


@dataclass(frozen=True)
class DiskState:
    free_bytes: int
    used_percent: float


class InstanceStore:
    """Durable, atomic storage of encoded datasets under one root directory."""

    def __init__(self, root: Path, *, min_free_mb: int, max_used_percent: float, fsync: bool):
        self.root = root
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.max_used_percent = max_used_percent
        self.fsync = fsync
        self._known_dirs: set[Path] = set()
        self._space: DiskState | None = None
        self._space_at = 0.0
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The path of an instance relative to the root, after validating each UID."""
        validate_uid(study_uid, "Study Instance UID")
        validate_uid(series_uid, "Series Instance UID")
        validate_uid(sop_uid, "SOP Instance UID")
        return f"{study_uid}/{series_uid}/{sop_uid}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def disk_state(self) -> DiskState:
        usage = shutil.disk_usage(self.root)
        return DiskState(free_bytes=usage.free, used_percent=100.0 * usage.used / usage.total)

    def check_space(self, incoming_bytes: int) -> None:
        """Raise :class:`DiskFullError` if storing ``incoming_bytes`` would pass the watermark.

        statvfs is asked at most every :data:`SPACE_CHECK_SECONDS` (it showed up
        in ingest profiles); in between, the bytes we wrote ourselves are
        subtracted, and ENOSPC at write time is the backstop.
        """
        now = time.monotonic()
        with self._lock:
            if self._space is None or now - self._space_at > SPACE_CHECK_SECONDS:
                self._space, self._space_at = self.disk_state(), now
            self._space = DiskState(self._space.free_bytes - incoming_bytes, self._space.used_percent)
            state = self._space
        if state.free_bytes - incoming_bytes < self.min_free_bytes:
            raise DiskFullError(
                f"storage has {state.free_bytes // (1024 * 1024)} MB free, "
                f"below the {self.min_free_bytes // (1024 * 1024)} MB watermark"
            )
        if state.used_percent > self.max_used_percent:
            raise DiskFullError(
                f"storage is {state.used_percent:.1f}% full, above the {self.max_used_percent:.1f}% watermark"
            )

    def write(self, relative: str, chunks: tuple[bytes, ...]) -> int:
        """Write ``chunks`` durably and atomically at ``relative``; return the size."""
        final = self.root / relative
        directory = final.parent
        self._ensure_dir(directory)
        temp = directory / f".{final.name}.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}"
        size = 0
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                        size += written
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, final)
            if self.fsync:
                _fsync_dir(directory)
        except OSError as exc:
            _unlink_quietly(temp)
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise DiskFullError(f"storage is full: {exc.strerror}") from exc
            raise StorageError(f"could not write {relative}: {exc.strerror or exc}") from exc
        return size

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        with self._lock:
            missing = [p for p in (directory, *directory.parents) if not p.exists()]
            directory.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                # make new directory entries durable, from the deepest parent upward
                for created in reversed(missing):
                    _fsync_dir(created.parent)
            self._known_dirs.add(directory)

    def sweep_temporary(self, older_than_seconds: float = STALE_TEMP_SECONDS) -> int:
        """Remove temporary files left by a crash; return how many were removed.

        Only files untouched for ``older_than_seconds`` go: the storage is shared by every
        process of the node (receivers, workers, other hosts on the same volume), and one
        that starts while the others are receiving must not delete the files they are
        writing at that moment. A younger leftover stays hidden until a later sweep.
        """
        removed = 0
        cutoff = time.time() - older_than_seconds
        for temp in self.root.rglob(f".*{TEMP_SUFFIX}"):
            try:
                if temp.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:  # renamed into place by its writer meanwhile
                continue
            _unlink_quietly(temp)
            removed += 1
        if removed:
            log.warning("store.swept_temporary", extra={"count": removed})
        return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
