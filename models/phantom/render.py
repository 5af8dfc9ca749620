"""From rasterised tissue labels to stored pixel values, with noise.

CT: HU + Gaussian noise, stored as uint16 = HU + 1024 (RescaleIntercept
-1024), clipped to 12 bits. MR: magnitude images with Rician noise (the
magnitude of a complex signal plus complex Gaussian noise, so the background is
not zero-mean), stored as uint16. Work proceeds in slabs of slices so a
300 x 512 x 512 series never holds more than a few float32 slabs at once.

Also the two projection-like series: the CT topogram (a line integral of
attenuation through the non-contrast body) and the MR three-plane localizer.
"""

from __future__ import annotations

import numpy as np

from models.phantom.anatomy import Anatomy
from models.phantom.dicom import Frame
from models.phantom.geometry import StackGeometry, make_stack
from models.phantom.shapes import Raster, compose, rasterize
from models.phantom.tissues import ct_table, mr_table

CT_OFFSET = 1024.0
MAX_STORED = 4095.0


def stored_volume(
    raster: Raster,
    table: np.ndarray,
    *,
    sigma: float,
    rng: np.random.Generator,
    offset: float = 0.0,
    rician: bool = False,
    slab_voxels: int = 1 << 18,
) -> np.ndarray:
    """uint16 volume (slices, rows, columns) of ``table`` values plus noise plus ``offset``.

    Slabs are small (about 1 MB of float32) so the few passes over each slab
    (lookup, noise, clip, cast) run from cache; that is most of the cost of a
    300 x 512 x 512 series.
    """
    k_total, rows, cols = raster.labels.shape
    out = np.empty((k_total, rows, cols), dtype=np.uint16)
    slab = max(1, slab_voxels // (rows * cols))
    # Gaussian noise is additive, so the offset can ride in the lookup table;
    # Rician noise is not, so it is added after the magnitude.
    shifted = table if rician else table + np.float32(offset)
    late = np.float32((offset if rician else 0.0) + 0.5)  # +0.5 then floor == round half up
    scale = np.float32(sigma)
    for k0 in range(0, k_total, slab):
        k1 = min(k_total, k0 + slab)
        v = compose(raster, shifted, k0, k1)
        if sigma > 0:
            noise = rng.standard_normal(v.shape, dtype=np.float32)
            noise *= scale
            v += noise
            if rician:
                noise = rng.standard_normal(v.shape, dtype=np.float32)
                noise *= scale
                v *= v
                noise *= noise
                v += noise
                np.sqrt(v, out=v)
        v += late
        np.clip(v, 0.0, MAX_STORED, out=v)
        np.copyto(out[k0:k1], v, casting="unsafe")
    return out


def stack_frames(
    volume: np.ndarray,
    grid: StackGeometry,
    attributes: dict[str, object] | None = None,
    spacing_between_slices: bool = False,
) -> list[Frame]:
    """One :class:`Frame` per slice of ``volume``, positioned by ``grid``."""
    return [
        Frame(
            pixels=volume[k],
            position=grid.position(k),
            orientation=grid.orientation,
            pixel_spacing=grid.pixel_spacing,
            slice_thickness=grid.slice_thickness,
            spacing_between_slices=grid.spacing if spacing_between_slices else None,
            attributes=dict(attributes or {}),
        )
        for k in range(volume.shape[0])
    ]


def window(volume: np.ndarray) -> tuple[float, float]:
    """(center, width) covering the bulk of an MR volume's signal."""
    hi = float(np.percentile(volume[:: max(1, volume.shape[0] // 8)], 99.5))
    hi = max(hi, 10.0)
    return round(hi / 2.0, 1), round(hi, 1)


def ct_topogram(anatomy: Anatomy, view: str, matrix: int) -> Frame:
    """A CT localizer: attenuation summed through the body (AP or lateral projection)."""
    plane, depth_mm = ("coronal", 280.0) if view == "ap" else ("sagittal", 380.0)
    size = int(min(512, max(64, matrix)))
    fov = 520.0
    center = (0.0, 0.0, anatomy.center[2])
    depth = 48
    volume_grid = make_stack(
        plane, center=center, fov_mm=fov, matrix=size, slices=depth, coverage_mm=depth_mm
    )
    raster = rasterize(anatomy.shapes, volume_grid)
    hu = compose(raster, ct_table("non_contrast"))
    mu = np.clip(hu + 1000.0, 0.0, None) / 1000.0  # relative to water
    water_mm = mu.sum(axis=0) * volume_grid.spacing
    pixels = np.clip(water_mm / 450.0 * 3500.0, 0, MAX_STORED).astype(np.uint16)
    image_grid = make_stack(plane, center=center, fov_mm=fov, matrix=size, slices=1, coverage_mm=1.0)
    return Frame(
        pixels=pixels,
        position=image_grid.position(0),
        orientation=image_grid.orientation,
        pixel_spacing=image_grid.pixel_spacing,
        slice_thickness=0.6,  # the detector collimation a topogram reports
    )


def mr_localizer(anatomy: Anatomy, matrix: int, rng: np.random.Generator, sigma: float) -> list[Frame]:
    """A three-plane MR localizer: three sagittal, three coronal, three axial images."""
    frames: list[Frame] = []
    table = mr_table("t1")
    for plane in ("sagittal", "coronal", "axial"):
        grid = make_stack(
            plane,
            center=anatomy.center,
            fov_mm=anatomy.fov_mm[plane] + 40.0,
            matrix=min(matrix, 256),
            slices=3,
            coverage_mm=90.0,
        )
        grid = StackGeometry(
            grid.origin,
            grid.row,
            grid.col,
            grid.step,
            grid.rows,
            grid.columns,
            grid.slices,
            grid.pixel_spacing,
            8.0,
        )
        volume = stored_volume(rasterize(anatomy.shapes, grid), table, sigma=sigma, rng=rng, rician=True)
        frames.extend(stack_frames(volume, grid))
    return frames


def mip_volume(volume: np.ndarray, grid: StackGeometry, slab: int) -> tuple[np.ndarray, StackGeometry]:
    """Maximum-intensity projection over consecutive slabs of ``slab`` slices."""
    n = max(1, volume.shape[0] // slab)
    mip = volume[: n * slab].reshape(n, slab, *volume.shape[1:]).max(axis=1)
    first = np.asarray(grid.origin) + np.asarray(grid.step) * (slab - 1) / 2.0
    step = np.asarray(grid.step) * slab
    out_grid = StackGeometry(
        origin=(float(first[0]), float(first[1]), float(first[2])),
        row=grid.row,
        col=grid.col,
        step=(float(step[0]), float(step[1]), float(step[2])),
        rows=grid.rows,
        columns=grid.columns,
        slices=n,
        pixel_spacing=grid.pixel_spacing,
        slice_thickness=grid.spacing * slab,
    )
    return mip, out_grid
