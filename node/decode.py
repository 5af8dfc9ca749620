"""Read and decode slice files into a preallocated volume, in threads or processes.

The loader (:mod:`node.volume`) owns the output array; this module fills it.
Each file is opened once: for native (uncompressed, little-endian) single-frame
files the header is parsed up to Pixel Data and the pixels are read straight
into numpy (no pydicom pixel machinery, and the read releases the GIL, which is
what lets threads overlap). Everything else (compressed transfer syntaxes,
Enhanced multi-frame, odd bit depths) goes through pydicom's decoders with the
pylibjpeg / pyjpegls plugins. Threads are the default; for decoders that hold
the GIL on many-core machines there is an opt-in process pool whose workers
return float32 slices (see ``VolumeSettings.executor``).
"""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.errors import VolumeError
from node.headers import FrameGeometry, InstanceHeader, header_from_dataset

SliceTask = tuple[Path, Sequence[tuple[int, int | None]]]  # file, [(output slot, frame)]


class SliceReadError(VolumeError):
    """A slice file is missing, unreadable, or its pixel data cannot be decoded."""


class UnsupportedPixelsError(VolumeError):
    """Pixel data the loader does not handle (colour, wrong matrix)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """Geometry of one decoded slice, as read from its own file."""

    slot: int
    path: str
    geometry: FrameGeometry


def _frame_geometry(header: InstanceHeader, frame: int | None) -> FrameGeometry:
    if frame is not None and header.frames:
        if not 0 <= frame < len(header.frames):
            raise SliceReadError(f"{header.path}: frame {frame} does not exist")
        return header.frames[frame]
    return FrameGeometry(
        position=header.image_position,
        orientation=header.image_orientation,
        pixel_spacing=header.pixel_spacing,
        slice_thickness=header.slice_thickness,
        rescale_slope=header.rescale_slope,
        rescale_intercept=header.rescale_intercept,
    )


def _store(dst: np.ndarray, src: np.ndarray, slope: float | None, intercept: float | None) -> None:
    """dst[...] = src * slope + intercept, in float32, without temporaries."""
    if src.shape != dst.shape:
        raise UnsupportedPixelsError(f"slice of shape {src.shape}, the view's first is {dst.shape}")
    if slope is not None and slope != 1.0:
        np.multiply(src, np.float32(slope), out=dst, casting="unsafe")
    else:
        dst[...] = src
    if intercept:
        dst += np.float32(intercept)


_NATIVE_SYNTAXES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_LONG_VRS = {b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN"}


def _value(ds: pydicom.Dataset, tag: int) -> Any:
    element = ds.get(tag)
    return None if element is None else element.value


def _numbers(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _single_frame_geometry(ds: pydicom.Dataset) -> FrameGeometry:
    """The few values a single-frame slice needs, read by tag (10x cheaper than keywords)."""
    slope, intercept = _value(ds, 0x00281053), _value(ds, 0x00281052)
    thickness = _value(ds, 0x00180050)
    return FrameGeometry(
        position=_numbers(_value(ds, 0x00200032), 3),  # type: ignore[arg-type]
        orientation=_numbers(_value(ds, 0x00200037), 6),  # type: ignore[arg-type]
        pixel_spacing=_numbers(_value(ds, 0x00280030), 2),  # type: ignore[arg-type]
        slice_thickness=None if thickness in (None, "") else float(thickness),
        rescale_slope=None if slope in (None, "") else float(slope),
        rescale_intercept=None if intercept in (None, "") else float(intercept),
    )


def _read_native(fp: io.BufferedReader, ds: pydicom.Dataset, rows: int, cols: int) -> np.ndarray | None:
    """Pixels of a native little-endian single-frame file, read straight into numpy.

    ``fp`` stands at the Pixel Data element (dcmread stops there). Returns None
    whenever anything is unusual (bit depths, sign extension, encapsulation) so
    the caller falls back to pydicom's decoder; reading without the GIL is what
    lets the decode threads overlap.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    allocated, stored = _value(ds, 0x00280100), _value(ds, 0x00280101)
    signed = _value(ds, 0x00280103) == 1
    if syntax not in _NATIVE_SYNTAXES or _value(ds, 0x00280002) not in (None, 1):
        return None
    if allocated not in (8, 16, 32) or (signed and stored != allocated):
        return None
    head = fp.read(8)
    if len(head) < 8 or head[:4] != _PIXEL_DATA_TAG:
        return None
    if syntax == ExplicitVRLittleEndian:
        if head[4:6] not in _LONG_VRS:
            return None
        length = int.from_bytes(fp.read(4), "little")
    else:
        length = int.from_bytes(head[4:8], "little")
    dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}").newbyteorder("<")
    if length == 0xFFFFFFFF or length < rows * cols * dtype.itemsize:
        return None
    pixels = np.empty((rows, cols), dtype=dtype)
    if fp.readinto(pixels.view(np.uint8).data) != pixels.nbytes:
        return None
    return pixels


def decode_file(path: Path, refs: Sequence[tuple[int, int | None]], out: np.ndarray) -> list[Decoded]:
    """Read one file once; write each wanted slice/frame into ``out[slot]``."""
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            frames_count = _value(ds, 0x00280008)
            if frames_count in (None, "", 1, "1") and "PerFrameFunctionalGroupsSequence" not in ds:
                rows, cols = int(_value(ds, 0x00280010)), int(_value(ds, 0x00280011))
                pixels = _read_native(fp, ds, rows, cols)
                if pixels is not None:
                    geometry = _single_frame_geometry(ds)
                    for slot, _ in refs:
                        _store(out[slot], pixels, geometry.rescale_slope, geometry.rescale_intercept)
                    return [Decoded(slot=s, path=str(path), geometry=geometry) for s, _ in refs]
            fp.seek(0)
            ds = pydicom.dcmread(fp)
    except (OSError, InvalidDicomError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise SliceReadError(f"{path}: cannot read ({exc}); is the store intact?") from exc
    return _decode_dataset(ds, path, refs, out)


def _decode_dataset(
    ds: pydicom.Dataset, path: Path, refs: Sequence[tuple[int, int | None]], out: np.ndarray
) -> list[Decoded]:
    """The general path: pydicom's decoders (compressed, multi-frame, odd bit depths)."""
    header = header_from_dataset(ds, path)
    if header.samples_per_pixel != 1:
        raise UnsupportedPixelsError(
            f"{path}: {header.samples_per_pixel} samples per pixel; only greyscale CT/MR can be a view"
        )
    try:
        if header.number_of_frames > 1:
            wanted = sorted({frame or 0 for _, frame in refs})
            frames = dict(zip(wanted, pydicom.pixels.iter_pixels(ds, indices=wanted), strict=True))
        else:
            frames = {0: ds.pixel_array}
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise anything
        raise SliceReadError(
            f"{path}: cannot decode pixel data in transfer syntax "
            f"{header.transfer_syntax_uid} ({exc}); install the pylibjpeg/pyjpegls plugin "
            "for it or ask the sender to send uncompressed"
        ) from exc
    results = []
    for slot, frame in refs:
        geometry = _frame_geometry(header, frame)
        _store(out[slot], frames[frame or 0], geometry.rescale_slope, geometry.rescale_intercept)
        results.append(Decoded(slot=slot, path=str(path), geometry=geometry))
    return results


def _decode_detached(
    path: Path, refs: Sequence[tuple[int, int | None]], shape: tuple[int, int]
) -> tuple[list[Decoded], np.ndarray]:
    """Process-pool task: decode into a private array and send it back."""
    local = np.empty((len(refs), *shape), dtype=np.float32)
    decoded = decode_file(path, [(i, frame) for i, (_, frame) in enumerate(refs)], local)
    return [Decoded(slot=refs[d.slot][0], path=d.path, geometry=d.geometry) for d in decoded], local


def _process_pool(workers: int) -> Executor:
    """A pool whose workers fork from a server that has imported this module.

    forkserver, not fork: the node runs threads (scheduler, DICOM server) and
    forking a threaded process can deadlock; the preload makes each worker start
    in milliseconds instead of re-importing numpy and pydicom.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["node.decode"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def decode_files(
    tasks: Sequence[SliceTask], out: np.ndarray, *, workers: int, processes: bool
) -> list[Decoded]:
    """Decode every task's slices into ``out[slot]``; results sorted by slot."""
    if workers <= 1 or len(tasks) <= 1:
        parts = [decode_file(path, refs, out) for path, refs in tasks]
    elif processes:
        parts = []
        with _process_pool(workers) as pool:
            pending = {pool.submit(_decode_detached, path, refs, out.shape[1:]) for path, refs in tasks}
            while pending:  # drop each result as soon as it is copied: memory stays ~1 view
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    part, local = future.result()
                    for index, item in enumerate(part):
                        out[item.slot] = local[index]
                    parts.append(part)
                del done, future, local
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            futures = [pool.submit(decode_file, path, refs, out) for path, refs in tasks]
            parts = [future.result() for future in futures]
    decoded = [item for part in parts for item in part]
    decoded.sort(key=lambda item: item.slot)
    return decoded
