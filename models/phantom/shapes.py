"""Analytic solids and their vectorised rasterisation onto an image stack.

Anatomy is a painter's list of solids (ellipsoids, finite elliptic cylinders,
capsules), each optionally cut by half-spaces, each carrying a tissue label;
later solids overwrite earlier ones. Sampling a stack never builds a point
cloud: every local coordinate of a solid is an affine function of the voxel
indices (i, j, k), so it is evaluated as a broadcast sum of three 1-D arrays,
and only inside the solid's bounding box in index space. Terms that do not
depend on an index stay low-dimensional (a z-aligned cylinder costs one 2-D
evaluation for all axial slices), which is what makes 300 x 512 x 512 fast.

Small findings are "soft": their occupancy is averaged over sub-voxel samples
(several positions through the slice thickness and in-plane), giving the
partial-volume look of a small nodule in a thick slice instead of vanishing
between slices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.phantom.geometry import StackGeometry, Vec3

Axes = tuple[Vec3, Vec3, Vec3]
IDENTITY: Axes = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@dataclass(frozen=True)
class Shape:
    """One solid. ``axes`` are the solid's local unit axes in patient space.

    ellipsoid: ``semi`` = semi-axes; cylinder: ``semi`` = (radius_x, radius_y,
    half_length along local z); capsule: ``center`` is one end, local z points
    to the other end, ``semi`` = (radius, radius, length). ``clips`` keep only
    points with ``dot(n, p) <= d``.
    """

    kind: str
    center: Vec3
    semi: Vec3
    axes: Axes
    tissue: int
    clips: tuple[tuple[Vec3, float], ...] = ()
    soft: bool = False


def rotation(z_deg: float = 0.0, y_deg: float = 0.0, x_deg: float = 0.0) -> Axes:
    """Local axes of a solid rotated about x, then y, then z (degrees)."""
    cz, sz = math.cos(math.radians(z_deg)), math.sin(math.radians(z_deg))
    cy, sy = math.cos(math.radians(y_deg)), math.sin(math.radians(y_deg))
    cx, sx = math.cos(math.radians(x_deg)), math.sin(math.radians(x_deg))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    q = rz @ ry @ rx
    return tuple(tuple(float(v) for v in q[:, a]) for a in range(3))  # type: ignore[return-value]


def ellipsoid(
    center: Vec3,
    semi: Vec3,
    tissue: int,
    *,
    axes: Axes = IDENTITY,
    clips: tuple[tuple[Vec3, float], ...] = (),
    soft: bool = False,
) -> Shape:
    """An ellipsoid with semi-axes ``semi`` along ``axes``."""
    return Shape("ellipsoid", center, semi, axes, tissue, clips, soft)


def cylinder(
    center: Vec3,
    radii: tuple[float, float],
    half_length: float,
    tissue: int,
    *,
    axes: Axes = IDENTITY,
    clips: tuple[tuple[Vec3, float], ...] = (),
) -> Shape:
    """A finite elliptic cylinder, by default along z (the body's long axis)."""
    return Shape("cylinder", center, (radii[0], radii[1], half_length), axes, tissue, clips)


def capsule(a: Vec3, b: Vec3, radius: float, tissue: int, *, soft: bool = False) -> Shape:
    """A tube of ``radius`` around the segment a-b with round ends (vessels, airways)."""
    pa, pb = np.asarray(a, float), np.asarray(b, float)
    length = float(np.linalg.norm(pb - pa))
    d = (pb - pa) / length
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    axes = tuple(tuple(float(v) for v in e) for e in (e1, e2, d))
    return Shape("capsule", a, (radius, radius, length), axes, tissue, (), soft)  # type: ignore[arg-type]


def _bounds(shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Conservative axis-aligned bounding box in patient space."""
    c = np.asarray(shape.center, float)
    r = np.asarray(shape.axes, float)
    if shape.kind == "capsule":
        end = c + r[2] * shape.semi[2]
        rad = shape.semi[0]
        return np.minimum(c, end) - rad, np.maximum(c, end) + rad
    half = np.abs(r).T @ np.asarray(shape.semi, float)
    return c - half, c + half


def _index_box(
    shape: Shape, grid: StackGeometry, binv: np.ndarray, pad: int
) -> tuple[int, int, int, int, int, int] | None:
    """The shape's bounding box as (k0, k1, j0, j1, i0, i1) voxel ranges, or None."""
    lo, hi = _bounds(shape)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    idx = binv @ (corners - np.asarray(grid.origin)).T  # rows: i, j, k
    mn = np.floor(idx.min(axis=1)).astype(int) - pad
    mx = np.ceil(idx.max(axis=1)).astype(int) + 1 + pad
    i0, i1 = max(mn[0], 0), min(mx[0], grid.columns)
    j0, j1 = max(mn[1], 0), min(mx[1], grid.rows)
    k0, k1 = max(mn[2], 0), min(mx[2], grid.slices)
    if i0 >= i1 or j0 >= j1 or k0 >= k1:
        return None
    return k0, k1, j0, j1, i0, i1


def _affine(coef: np.ndarray, const: float, ii: np.ndarray, jj: np.ndarray, kk: np.ndarray) -> np.ndarray:
    """const + coef . (i, j, k), broadcast over (k, j, i), skipping zero terms."""
    out: np.ndarray = np.full((1, 1, 1), const, dtype=np.float32)
    if abs(coef[0]) > 1e-9:
        out = out + np.float32(coef[0]) * ii[None, None, :]
    if abs(coef[1]) > 1e-9:
        out = out + np.float32(coef[1]) * jj[None, :, None]
    if abs(coef[2]) > 1e-9:
        out = out + np.float32(coef[2]) * kk[:, None, None]
    return out


def _inside(
    shape: Shape, origin: np.ndarray, basis: np.ndarray, ii: np.ndarray, jj: np.ndarray, kk: np.ndarray
) -> np.ndarray:
    """Boolean occupancy of ``shape`` at voxel indices ii x jj x kk (broadcast shape)."""
    r = np.asarray(shape.axes, float)
    semi = np.asarray(shape.semi, float)
    m = r if shape.kind == "capsule" else r / semi[:, None]
    coefs = m @ basis
    consts = m @ (origin - np.asarray(shape.center, float))
    u = [_affine(coefs[a], float(consts[a]), ii, jj, kk) for a in range(3)]
    if shape.kind == "ellipsoid":
        mask = (u[0] * u[0] + u[1] * u[1]) + u[2] * u[2] <= 1.0
    elif shape.kind == "cylinder":
        mask = (u[0] * u[0] + u[1] * u[1] <= 1.0) & (np.abs(u[2]) <= 1.0)
    elif shape.kind == "capsule":
        axial = u[2] - np.clip(u[2], 0.0, semi[2])
        mask = (u[0] * u[0] + u[1] * u[1]) + axial * axial <= semi[0] * semi[0]
    else:  # pragma: no cover - constructors only make the three kinds
        raise ValueError(f"unknown shape kind {shape.kind!r}")
    for normal, d in shape.clips:
        n = np.asarray(normal, float)
        mask = mask & (_affine(n @ basis, float(n @ origin - d), ii, jj, kk) <= 0.0)
    return mask


@dataclass(frozen=True)
class SoftPatch:
    """Fractional occupancy ``alpha`` of a soft solid inside box (k0, k1, j0, j1, i0, i1)."""

    tissue: int
    box: tuple[int, int, int, int, int, int]
    alpha: np.ndarray


@dataclass(frozen=True)
class Raster:
    """Tissue labels of one stack, shape (slices, rows, columns), plus soft patches."""

    labels: np.ndarray
    soft: tuple[SoftPatch, ...]


def rasterize(shapes: Sequence[Shape], grid: StackGeometry, *, chunk_voxels: int = 4_000_000) -> Raster:
    """Paint ``shapes`` in order onto ``grid``; background is tissue 0."""
    basis = grid.basis()
    binv = np.linalg.inv(basis)
    origin = np.asarray(grid.origin, float)
    labels = np.zeros((grid.slices, grid.rows, grid.columns), dtype=np.uint8)
    hard = [s for s in shapes if not s.soft]
    boxes = [_index_box(s, grid, binv, 0) for s in hard]
    chunk = max(1, chunk_voxels // (grid.rows * grid.columns))
    for c0 in range(0, grid.slices, chunk):
        c1 = min(grid.slices, c0 + chunk)
        for shape, box in zip(hard, boxes, strict=True):
            if box is None:
                continue
            k0, k1 = max(box[0], c0), min(box[1], c1)
            if k0 >= k1:
                continue
            _, _, j0, j1, i0, i1 = box
            ii = np.arange(i0, i1, dtype=np.float32)
            jj = np.arange(j0, j1, dtype=np.float32)
            kk = np.arange(k0, k1, dtype=np.float32)
            mask = _inside(shape, origin, basis, ii, jj, kk)
            view = labels[k0:k1, j0:j1, i0:i1]
            mask = np.broadcast_to(mask, view.shape)
            view[mask] = shape.tissue
    patches = []
    for shape in shapes:
        if shape.soft:
            patch = _soft_patch(shape, grid, origin, basis, binv)
            if patch is not None:
                patches.append(patch)
    return Raster(labels=labels, soft=tuple(patches))


def _soft_patch(
    shape: Shape, grid: StackGeometry, origin: np.ndarray, basis: np.ndarray, binv: np.ndarray
) -> SoftPatch | None:
    """Occupancy averaged over sub-voxel samples (partial-volume effect)."""
    box = _index_box(shape, grid, binv, 1)
    if box is None:
        return None
    k0, k1, j0, j1, i0, i1 = box
    nk = int(min(6, max(2, math.ceil(grid.slice_thickness / grid.pixel_spacing))))
    # The slice profile spans the slice thickness, not only the spacing.
    depth = grid.slice_thickness / max(grid.spacing, 1e-6)
    dks = (np.arange(nk) + 0.5) / nk - 0.5
    acc = np.zeros((k1 - k0, j1 - j0, i1 - i0), dtype=np.float32)
    for dk in dks * depth:
        for dj in (-0.25, 0.25):
            for di in (-0.25, 0.25):
                ii = np.arange(i0, i1, dtype=np.float32) + np.float32(di)
                jj = np.arange(j0, j1, dtype=np.float32) + np.float32(dj)
                kk = np.arange(k0, k1, dtype=np.float32) + np.float32(dk)
                acc += np.broadcast_to(_inside(shape, origin, basis, ii, jj, kk), acc.shape)
    acc /= np.float32(nk * 4)
    if not acc.any():
        return None
    return SoftPatch(tissue=shape.tissue, box=box, alpha=acc)


def compose(raster: Raster, table: np.ndarray, k0: int = 0, k1: int | None = None) -> np.ndarray:
    """Tissue values for slices [k0, k1): table lookup, then soft patches blended on top."""
    k1 = raster.labels.shape[0] if k1 is None else k1
    values = table.astype(np.float32)[raster.labels[k0:k1]]
    for patch in raster.soft:
        pk0, pk1, j0, j1, i0, i1 = patch.box
        a0, a1 = max(pk0, k0), min(pk1, k1)
        if a0 >= a1:
            continue
        alpha = patch.alpha[a0 - pk0 : a1 - pk0]
        view = values[a0 - k0 : a1 - k0, j0:j1, i0:i1]
        view += alpha * (np.float32(table[patch.tissue]) - view)
    return values
