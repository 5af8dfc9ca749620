"""Image stacks in patient coordinates (DICOM LPS, millimetres).

A stack is the whole DICOM image-plane story in one record: where the first
pixel of the first slice is, which way rows and columns run, and the vector
from one slice to the next. The rasteriser samples the analytic anatomy at
exactly these points and the writer copies exactly these numbers into
ImagePositionPatient / ImageOrientationPatient / PixelSpacing, so the pixels
and the geometry tags can never disagree.

LPS: +x towards the patient's left, +y posterior, +z towards the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.phantom.errors import PhantomSpecError

PLANES = ("axial", "coronal", "sagittal", "oblique")

Vec3 = tuple[float, float, float]

# Row direction (along a row, increasing column index) and column direction
# (down a column, increasing row index) of the conventional display of each plane.
_ORIENTATIONS: dict[str, tuple[Vec3, Vec3]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def orientation(plane: str, tilt_deg: float = 30.0) -> tuple[Vec3, Vec3]:
    """Row and column unit vectors for ``plane``.

    "oblique" is an axial plane tilted by ``tilt_deg`` about the left-right
    axis (the classic gantry-tilt / oblique-axial look).
    """
    if plane in _ORIENTATIONS:
        return _ORIENTATIONS[plane]
    if plane == "oblique":
        t = math.radians(tilt_deg)
        return (1.0, 0.0, 0.0), (0.0, math.cos(t), -math.sin(t))
    raise PhantomSpecError(f"unknown plane {plane!r}; known: {', '.join(PLANES)}")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / float(np.linalg.norm(v))


@dataclass(frozen=True)
class StackGeometry:
    """A regular stack of ``slices`` images of ``rows`` x ``columns`` pixels.

    ``origin`` is the centre of the first pixel of the first slice (DICOM IPP);
    ``step`` is the vector from one slice's origin to the next, so instance
    ``k`` (0-based) sits at ``origin + k * step``.
    """

    origin: Vec3
    row: Vec3
    col: Vec3
    step: Vec3
    rows: int
    columns: int
    slices: int
    pixel_spacing: float
    slice_thickness: float

    @property
    def normal(self) -> np.ndarray:
        """row x col: the DICOM slice normal (not necessarily the direction of ``step``)."""
        return np.cross(np.asarray(self.row), np.asarray(self.col))

    @property
    def spacing(self) -> float:
        """Distance between adjacent slice centres in mm."""
        return float(np.linalg.norm(self.step))

    @property
    def orientation(self) -> list[float]:
        """ImageOrientationPatient: row cosines then column cosines."""
        return [*self.row, *self.col]

    def position(self, k: int) -> Vec3:
        """ImagePositionPatient of slice ``k`` (0-based)."""
        p = np.asarray(self.origin) + k * np.asarray(self.step)
        return (float(p[0]), float(p[1]), float(p[2]))

    def basis(self) -> np.ndarray:
        """3x3 matrix whose columns map index steps (i: column, j: row, k: slice) to mm."""
        return np.stack(
            [
                np.asarray(self.row) * self.pixel_spacing,
                np.asarray(self.col) * self.pixel_spacing,
                np.asarray(self.step),
            ],
            axis=1,
        )

    def with_slices(self, first: int, count: int) -> StackGeometry:
        """The sub-stack of ``count`` slices starting at slice ``first``."""
        return StackGeometry(
            origin=self.position(first),
            row=self.row,
            col=self.col,
            step=self.step,
            rows=self.rows,
            columns=self.columns,
            slices=count,
            pixel_spacing=self.pixel_spacing,
            slice_thickness=self.slice_thickness,
        )


def make_stack(
    plane: str,
    *,
    center: Vec3,
    fov_mm: float,
    matrix: int,
    slices: int,
    coverage_mm: float,
    spacing_mm: float | None = None,
    descending: bool = False,
    tilt_deg: float = 30.0,
) -> StackGeometry:
    """A square-FOV stack centred on ``center``.

    Slices are contiguous (thickness = spacing). Without ``spacing_mm`` they
    spread evenly over ``coverage_mm`` along the normal. ``descending`` walks
    against the normal, e.g. a head-to-feet axial CT whose z decreases.
    """
    if matrix < 8 or slices < 1:
        raise PhantomSpecError(f"matrix must be >= 8 and slices >= 1 (got {matrix}, {slices})")
    row_t, col_t = orientation(plane, tilt_deg)
    row, col = _unit(np.asarray(row_t)), _unit(np.asarray(col_t))
    normal = np.cross(row, col)
    pixel = fov_mm / matrix
    spacing = spacing_mm if spacing_mm is not None else coverage_mm / slices
    span = spacing * (slices - 1)
    c = np.asarray(center, dtype=float)
    origin = c - row * (fov_mm - pixel) / 2 - col * (fov_mm - pixel) / 2
    direction = -normal if descending else normal
    origin = origin - direction * span / 2
    step = direction * spacing
    return StackGeometry(
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        row=(float(row[0]), float(row[1]), float(row[2])),
        col=(float(col[0]), float(col[1]), float(col[2])),
        step=(float(step[0]), float(step[1]), float(step[2])),
        rows=matrix,
        columns=matrix,
        slices=slices,
        pixel_spacing=pixel,
        slice_thickness=spacing,
    )
