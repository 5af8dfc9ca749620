"""Load one manifest view into a float32 volume the model can eat, checking geometry.

Memory is bounded to one view: the output array is allocated once, each decode
task writes its slice straight into it, and every file is read exactly once
(pixels and geometry from the same parse). Files are decoded in parallel
(:mod:`node.decode`) by a thread pool: the raw reads and numpy's rescale release
the GIL; a process pool is available for decoders that hold it (see
``VolumeSettings.executor``). ``bench/load_series.py`` measures the gain against
a plain sequential pydicom loop.

Geometry is taken from the files, not trusted from the manifest, and checked:
slices are sorted along the stack normal, duplicates are dropped (warning),
gaps wider than ``gap_factor`` x the median spacing and a gantry tilt warn or
fail according to the settings, uneven spacing warns. Every failure is a
:class:`~node.errors.VolumeError` subclass whose message says what is wrong and
what a person can do about it.

Intensities: CT is rescaled to Hounsfield units (RescaleSlope/Intercept, per
frame for Enhanced CT) and clipped to ``ct_clip_hu``; MR has no absolute scale,
so it is mapped with robust percentiles (``mr_percentiles``, estimated on every
4th pixel in-plane) to about 0..1 and clipped when ``mr_clip``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydantic import BaseModel, ConfigDict, Field

from node.decode import Decoded, SliceReadError, UnsupportedPixelsError, decode_files
from node.errors import VolumeError
from node.headers import FrameGeometry
from node.manifest import SliceRef, View
from node.stacks import angle_deg, stack_normal

logger = logging.getLogger(__name__)


class VolumeTooLargeError(VolumeError):
    """The view would need more memory than ``max_volume_bytes``."""


class GeometryError(VolumeError):
    """The slices do not form one regular volume."""


class MixedGeometryError(GeometryError):
    """Slices of one view disagree in orientation or matrix size."""


class DuplicateSliceError(GeometryError):
    """Two slices share a position and ``on_duplicate`` is ``error``."""


class SliceGapError(GeometryError):
    """Slices are missing: a gap wider than ``gap_factor`` x the median spacing."""


class GantryTiltError(GeometryError):
    """The stack steps obliquely to its slice normal and ``on_tilt`` is ``error``."""


class VolumeSettings(BaseModel):
    """The ``[volume]`` table of the node's configuration; every default documented."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: parallel decoders; 0 = the CPUs this process may use (at most 16)
    decode_workers: int = Field(default=0, ge=0)
    #: ``thread``: a thread pool; raw reads, numpy's rescale and partly the
    #: RLE/JPEG-LS decoders release the GIL. ``process``: a forkserver process
    #: pool, for many-core workers fed JPEG 2000 (openjpeg holds the GIL); it
    #: re-imports the main module in its workers, so the program needs an
    #: ``if __name__ == "__main__"`` guard. ``auto``: threads (processes lost to
    #: threads on 2 busy cores: pool start-up and result copies)
    executor: Literal["auto", "thread", "process"] = "auto"
    #: neighbouring slices farther apart than this x the median spacing are a gap
    gap_factor: float = Field(default=1.5, gt=1.0)
    #: a gap is an ``error`` (missing slices: resend) or a ``warn``ing (keep as is)
    on_gap: Literal["error", "warn"] = "error"
    #: spacing off the median by more than this fraction (short of a gap) warns
    uneven_tolerance: float = Field(default=0.1, ge=0)
    #: slices closer than this along the normal are duplicates
    duplicate_tolerance_mm: float = Field(default=0.01, gt=0)
    #: duplicates are dropped (first kept, warning) or an ``error``
    on_duplicate: Literal["drop", "error"] = "drop"
    #: a stepping direction further than this from the normal is a gantry tilt
    max_tilt_deg: float = Field(default=0.5, ge=0)
    #: a tilted stack is kept as acquired (sheared, warning) or an ``error``
    on_tilt: Literal["warn", "error"] = "warn"
    #: slice orientations of one view must agree within this angle
    orientation_tolerance_deg: float = Field(default=1.0, gt=0)
    #: MR intensity percentiles mapped to 0 and 1
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    #: clip normalised MR to [0, 1]
    mr_clip: bool = True
    #: clip CT to this HU range (None: no clipping); -1024 removes padding values
    ct_clip_hu: tuple[float, float] | None = (-1024.0, 3071.0)
    #: refuse views whose float32 volume would exceed this many bytes
    max_volume_bytes: int = Field(default=4 * 1024**3, gt=0)


@dataclass(frozen=True, slots=True, eq=False)
class Volume:
    """One loaded view: ``pixels`` (n, rows, cols) float32, slices sorted along ``normal``.

    ``spacing`` is (between slices, row spacing, column spacing) in mm;
    ``positions`` are the slice positions along the normal, ``origin`` the
    ImagePositionPatient of the first slice.
    """

    pixels: np.ndarray
    modality: str
    spacing: tuple[float, float, float]
    normal: tuple[float, float, float]
    positions: tuple[float, ...]
    origin: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    warnings: tuple[str, ...]
    view_key: str
    #: for each slice, which of the view's slices (`View.slices`) it is: an index the model's
    #: key images are traced back to instances (and frames) through
    sources: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class _Checked:
    """The volume after sorting, de-duplication and checks."""

    pixels: np.ndarray
    positions: tuple[float, ...]
    normal: tuple[float, float, float]
    spacing: float
    first: FrameGeometry
    warnings: list[str]
    sources: tuple[int, ...]


def _resolve(ref: SliceRef, root: Path | None) -> Path:
    path = Path(ref.path)
    return path if path.is_absolute() or root is None else root / path


def _workers(settings: VolumeSettings, tasks: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    wanted = settings.decode_workers or min(cpus or 1, 16)
    return max(1, min(wanted, tasks))


def _decode_all(view: View, root: Path | None, out: np.ndarray, settings: VolumeSettings) -> list[Decoded]:
    by_path: dict[Path, list[tuple[int, int | None]]] = defaultdict(list)
    for slot, ref in enumerate(view.slices):
        by_path[_resolve(ref, root)].append((slot, ref.frame))
    workers = _workers(settings, len(by_path))
    processes = settings.executor == "process"
    return decode_files(list(by_path.items()), out, workers=workers, processes=processes)


# ----------------------------------------------------------------- geometry


def _permute_in_place(out: np.ndarray, order: Sequence[int]) -> None:
    """out[:] = out[order] with one slice of scratch memory (cycle following)."""
    done = [False] * len(order)
    scratch = np.empty_like(out[0])
    for start in range(len(order)):
        if done[start] or order[start] == start:
            done[start] = True
            continue
        scratch[...] = out[start]
        current = start
        while True:
            done[current] = True
            source = order[current]
            if source == start:
                out[current] = scratch
                break
            out[current] = out[source]
            current = source


def _check_geometry(
    decoded: list[Decoded], out: np.ndarray, view: View, settings: VolumeSettings
) -> _Checked:
    """Sort, de-duplicate and check spacing and tilt; returns the kept pixels."""
    warnings: list[str] = []
    first = decoded[0].geometry
    if first.orientation is None or any(d.geometry.position is None for d in decoded):
        raise GeometryError(f"{view.key}: a slice lacks ImagePositionPatient/Orientation")
    normal = stack_normal(first.orientation)
    if normal is None:
        raise GeometryError(f"{view.key}: ImageOrientationPatient is not orthonormal")
    for d in decoded:
        other = stack_normal(d.geometry.orientation) if d.geometry.orientation else None
        if other is None or angle_deg(other, normal) > settings.orientation_tolerance_deg:
            raise MixedGeometryError(
                f"{view.key}: {d.path} has another orientation than the first slice; "
                "the view mixes stacks - regroup the study"
            )
    points = np.array([d.geometry.position for d in decoded], dtype=np.float64)
    positions = points @ np.asarray(normal)
    order = sorted(range(len(decoded)), key=lambda i: (positions[i], i))
    if order != list(range(len(order))):
        _permute_in_place(out, order)
        points, positions = points[order], positions[order]
        decoded = [decoded[i] for i in order]
    sources = [d.slot for d in decoded]
    keep = [0] + [
        i
        for i in range(1, len(positions))
        if positions[i] - positions[i - 1] > settings.duplicate_tolerance_mm
    ]
    if len(keep) < len(positions):
        dropped = len(positions) - len(keep)
        if settings.on_duplicate == "error":
            raise DuplicateSliceError(
                f"{view.key}: {dropped} slice(s) repeat a position already filled; "
                "set volume.on_duplicate = 'drop' to keep the first of each"
            )
        for target, source in enumerate(keep):
            if target != source:
                out[target] = out[source]
        out, points, positions = out[: len(keep)], points[keep], positions[keep]
        sources = [sources[i] for i in keep]
        warnings.append(f"{dropped} duplicate slice(s) at repeated positions dropped")
    steps = np.diff(positions)
    thickness = decoded[0].geometry.slice_thickness
    spacing = float(np.median(steps)) if len(steps) else float(thickness or view.spacing_mm or 0.0)
    if len(steps):
        _check_steps(steps, positions, spacing, view, settings, warnings)
        _check_tilt(points, normal, view, settings, warnings)
    return _Checked(
        pixels=out,
        positions=tuple(float(p) for p in positions),
        normal=normal,
        spacing=spacing,
        first=decoded[keep[0]].geometry if keep else decoded[0].geometry,
        warnings=warnings,
        sources=tuple(sources),
    )


def _check_steps(
    steps: np.ndarray,
    positions: np.ndarray,
    spacing: float,
    view: View,
    settings: VolumeSettings,
    warnings: list[str],
) -> None:
    gaps = np.nonzero(steps > settings.gap_factor * spacing)[0]
    if len(gaps):
        i = int(gaps[0])
        missing = max(1, round(steps[i] / spacing) - 1)
        text = (
            f"{view.key}: {len(gaps)} gap(s) in series {view.series_instance_uid}; first "
            f"{steps[i]:.2f} mm between {positions[i]:.2f} and {positions[i + 1]:.2f} mm, "
            f"{steps[i] / spacing:.1f}x the median spacing {spacing:.2f} mm "
            f"(about {missing} slice(s) missing)"
        )
        if settings.on_gap == "error":
            raise SliceGapError(text + "; resend the series, or set volume.on_gap = 'warn' to accept it")
        warnings.append(text)
    regular = steps[steps <= settings.gap_factor * spacing]
    if len(regular) and np.max(np.abs(regular - spacing)) > settings.uneven_tolerance * spacing:
        warnings.append(
            f"uneven slice spacing: {regular.min():.2f}..{regular.max():.2f} mm "
            f"around a median of {spacing:.2f} mm"
        )


def _check_tilt(
    points: np.ndarray,
    normal: tuple[float, float, float],
    view: View,
    settings: VolumeSettings,
    warnings: list[str],
) -> None:
    step = points[-1] - points[0]
    length = float(np.linalg.norm(step))
    if length == 0:
        return
    tilt = angle_deg(tuple(step / length), normal)
    if tilt > settings.max_tilt_deg:
        text = (
            f"{view.key}: gantry tilt - slices step at {tilt:.1f} deg to their normal, "
            "so the volume is sheared"
        )
        if settings.on_tilt == "error":
            raise GantryTiltError(text + "; reconstruct without tilt, or set volume.on_tilt = 'warn'")
        warnings.append(text)


# ----------------------------------------------------------------- entry point


def _normalise(out: np.ndarray, modality: str, settings: VolumeSettings) -> None:
    if modality == "CT":
        if settings.ct_clip_hu is not None:
            np.clip(out, *settings.ct_clip_hu, out=out)
        return
    sample = out[:, ::4, ::4]
    low, high = (float(v) for v in np.percentile(sample, settings.mr_percentiles))
    scale = 1.0 / (high - low) if high > low else 1.0
    out -= np.float32(low)
    out *= np.float32(scale)
    if settings.mr_clip:
        np.clip(out, 0.0, 1.0, out=out)


def load_view(view: View, root: Path | None = None, settings: VolumeSettings | None = None) -> Volume:
    """Decode ``view``'s slices into a checked, sorted float32 :class:`Volume`.

    ``root`` resolves relative SliceRef paths (the store root). Raises a
    :class:`~node.errors.VolumeError` subclass for anything a person must fix.
    """
    settings = settings or VolumeSettings()
    if not view.slices:
        raise GeometryError(f"{view.key}: the view has no slices")
    first_path = _resolve(view.slices[0], root)
    try:
        probe = pydicom.dcmread(first_path, stop_before_pixels=True)
        rows, cols = int(probe.Rows), int(probe.Columns)
    except Exception as exc:  # noqa: BLE001
        raise SliceReadError(f"{first_path}: cannot read ({exc}); is the store intact?") from exc
    nbytes = len(view.slices) * rows * cols * 4
    if nbytes > settings.max_volume_bytes:
        raise VolumeTooLargeError(
            f"{view.key}: {len(view.slices)} x {rows} x {cols} needs {nbytes / 2**30:.1f} GiB, "
            f"over volume.max_volume_bytes; lower grouping.max_slices_per_view"
        )
    out = np.empty((len(view.slices), rows, cols), dtype=np.float32)
    decoded = _decode_all(view, root, out, settings)
    checked = _check_geometry(decoded, out, view, settings)
    _normalise(checked.pixels, view.modality, settings)
    first = checked.first
    pixel_spacing = first.pixel_spacing or view.pixel_spacing or (1.0, 1.0)
    for text in checked.warnings:
        logger.warning("volume.repaired", extra={"view_key": view.key, "detail": text})
    return Volume(
        pixels=checked.pixels,
        modality=view.modality,
        spacing=(checked.spacing, float(pixel_spacing[0]), float(pixel_spacing[1])),
        normal=checked.normal,
        positions=checked.positions,
        origin=first.position or (0.0, 0.0, 0.0),
        orientation=first.orientation or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        warnings=tuple(checked.warnings),
        view_key=view.key,
        sources=checked.sources,
    )


__all__ = [
    "DuplicateSliceError",
    "GantryTiltError",
    "GeometryError",
    "MixedGeometryError",
    "SliceGapError",
    "SliceReadError",
    "UnsupportedPixelsError",
    "Volume",
    "VolumeSettings",
    "VolumeTooLargeError",
    "load_view",
]
