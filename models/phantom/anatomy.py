"""Analytic anatomy in patient coordinates (LPS, mm), with findings planted.

Two bodies: a chest/abdomen for CT and a pelvis for MR. Each is a painter's
list of solids (see :mod:`models.phantom.shapes`); the order is the anatomy
(cavity fat over the muscle wall, lungs over the fat, heart over the lungs,
vessels and spine over everything). A seed-driven size factor and small
jitters make every study a slightly different patient, while findings keep
their exact requested size so the ground truth stays true.

The returned findings carry the attributes actually planted, including the
centre in patient coordinates, so a test can look exactly where a nodule is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.phantom.findings import Finding, resolve
from models.phantom.geometry import Vec3
from models.phantom.shapes import (
    Axes,
    Shape,
    capsule,
    cylinder,
    ellipsoid,
    rotation,
)
from models.phantom.tissues import Tissue as T

LOBE_CENTERS: dict[str, Vec3] = {
    "right upper lobe": (-78.0, -5.0, 165.0),
    "right middle lobe": (-95.0, -35.0, 60.0),
    "right lower lobe": (-85.0, 45.0, 40.0),
    "left upper lobe": (80.0, -10.0, 160.0),
    "left lower lobe": (85.0, 45.0, 45.0),
}
LIVER_LESION_CENTERS: dict[str, Vec3] = {"right lobe": (-80.0, 0.0, -50.0), "left lobe": (0.0, -30.0, -45.0)}
CARDIOMEGALY_SCALE = {"mild": 1.25, "moderate": 1.38, "severe": 1.52}
EFFUSION_DEPTH_MM = {"small": 25.0, "moderate": 45.0, "large": 70.0}
WALL_DIRECTIONS: dict[str, Vec3] = {
    "anterior": (0.0, -1.0, 0.0),
    "posterior": (0.0, 1.0, 0.0),
    "left": (1.0, 0.0, 0.0),
    "right": (-1.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class Anatomy:
    """A body ready to rasterise, and where each plane should look at it."""

    modality: str
    shapes: tuple[Shape, ...]
    center: Vec3
    fov_mm: dict[str, float]
    coverage_mm: dict[str, float]
    findings: tuple[Finding, ...]
    sex: str
    landmarks: dict[str, list[float]]


class _Body:
    """Collects solids with one uniform size factor applied to positions and organs, then
    the patient's position (its offset from the isocentre) added to every point."""

    def __init__(self, scale: float, position: Vec3) -> None:
        self.s = scale
        self.position = position
        self.shapes: list[Shape] = []

    def p(self, x: float, y: float, z: float) -> Vec3:
        dx, dy, dz = self.position
        return (x * self.s + dx, y * self.s + dy, z * self.s + dz)

    def v(self, point: Sequence[float] | np.ndarray) -> Vec3:
        return self.p(float(point[0]), float(point[1]), float(point[2]))

    def planes(self, clips: tuple[tuple[Vec3, float], ...]) -> tuple[tuple[Vec3, float], ...]:
        """Clip planes (normal, offset from the origin) moved like the body."""
        return tuple((n, d * self.s + float(np.dot(n, self.position))) for n, d in clips)

    def landmarks(self, points: dict[str, Vec3]) -> dict[str, list[float]]:
        """Named points (unscaled) that lie well inside one tissue, in world mm."""
        return {name: _round3(self.v(q)) for name, q in points.items()}

    def ell(
        self,
        c: Sequence[float] | np.ndarray,
        semi: Sequence[float],
        t: T,
        axes: Axes | None = None,
        clips: tuple[tuple[Vec3, float], ...] = (),
    ) -> None:
        scaled = self.planes(clips)
        size = (semi[0] * self.s, semi[1] * self.s, semi[2] * self.s)  # scaled, never moved
        self.shapes.append(ellipsoid(self.v(c), size, int(t), axes=axes or rotation(), clips=scaled))

    def cyl(
        self,
        c: Sequence[float],
        radii: tuple[float, float],
        half: float,
        t: T,
        clips: tuple[tuple[Vec3, float], ...] = (),
    ) -> None:
        scaled = self.planes(clips)
        self.shapes.append(
            cylinder(self.v(c), (radii[0] * self.s, radii[1] * self.s), half * self.s, int(t), clips=scaled)
        )

    def cap(self, a: Sequence[float], b: Sequence[float], r: float, t: T) -> None:
        self.shapes.append(capsule(self.v(a), self.v(b), r * self.s, int(t)))

    def cap_world(self, a: np.ndarray, b: np.ndarray, r: float, t: T) -> None:
        """A tube whose end points are already in world mm."""
        self.shapes.append(capsule(_vec3(a), _vec3(b), r * self.s, int(t)))

    def soft_ell(
        self, c_world: Sequence[float] | np.ndarray, semi: Vec3, t: T, axes: Axes | None = None
    ) -> None:
        """A finding: centre already in world mm, size exact (not scaled)."""
        self.shapes.append(ellipsoid(_vec3(c_world), semi, int(t), axes=axes or rotation(), soft=True))


def _vec3(point: Sequence[float] | np.ndarray) -> Vec3:
    return (float(point[0]), float(point[1]), float(point[2]))


def _jitter(rng: np.random.Generator, amount: float) -> np.ndarray:
    return rng.uniform(-amount, amount, size=3)


def _lung_base_centroid(c: Vec3, semi: Vec3, *, y_from: float, z_to: float) -> np.ndarray:
    """Centroid (body mm) of the part of an axis-aligned ellipsoid behind `y_from` and below
    `z_to`: where a unilateral effusion lies, so that the answer key can say where in each
    slice to look for it (`center_lps_mm`). A convex solid, so the centroid lies inside it.
    Found on a 64-point grid per axis: exact enough (under a millimetre) and deterministic."""
    axis = (np.arange(64) + 0.5) / 32 - 1.0
    u, v, w = np.meshgrid(axis, axis, axis, indexing="ij")
    points = np.stack([u, v, w], axis=-1) * np.asarray(semi) + np.asarray(c)
    inside = (u**2 + v**2 + w**2 <= 1.0) & (points[..., 1] >= y_from) & (points[..., 2] <= z_to)
    return np.asarray(points[inside].mean(axis=0))


def _round3(v: np.ndarray | Sequence[float]) -> list[float]:
    return [round(float(x), 1) for x in v]


def build_ct(
    findings: Sequence[Finding], rng: np.random.Generator, position: Vec3 = (0.0, 0.0, 0.0)
) -> Anatomy:
    """Chest and abdomen: body wall, ribs, lungs, heart, vessels, liver, spine, findings."""
    resolved = {f.key: resolve(f, "CT") for f in findings}
    b = _Body(float(rng.uniform(0.94, 1.06)), position)
    planted: list[Finding] = []
    b.cyl((0, 0, -15), (170, 125), 215, T.FAT)
    b.cyl((0, 0, -15), (160, 115), 215, T.MUSCLE)
    for z in range(-30, 181, 26):  # rib hoops, open anteriorly (costal cartilage gap)
        b.cyl((0, 0, z), (154, 109), 4, T.CORTEX, clips=(((0.0, -1.0, 0.0), 70.0),))
    b.cyl((0, 0, -15), (146, 100), 215, T.FAT)
    b.cap((0, -104, 60), (0, -104, 150), 8, T.CORTEX)  # sternum
    for sgn in (-1, 1):
        b.cyl((35 * sgn, 92, -15), (26, 18), 215, T.MUSCLE)  # paraspinal muscles
    lungs = {
        "right": ((-78.0, 5.0, 95.0), (53.0, 72.0, 115.0)),
        "left": ((80.0, 5.0, 98.0), (52.0, 72.0, 110.0)),
    }
    for c, semi in lungs.values():
        b.ell(c, semi, T.LUNG)
    effusion = resolved.get("pleural_effusion")
    effusion_level: dict[str, float] = {}
    if effusion is not None:
        side = str(effusion.attributes["side"])
        depth = EFFUSION_DEPTH_MM[str(effusion.attributes["size"])]
        for name in ("right", "left") if side == "bilateral" else (side,):
            c, semi = lungs[name]
            y0 = c[1] + semi[1] - depth
            effusion_level[name] = b.p(0.0, y0, 0.0)[1]
            b.ell(c, semi, T.EFFUSION, clips=(((0.0, -1.0, 0.0), -y0), ((0.0, 0.0, 1.0), c[2] + 20)))
        planted_attributes = {**effusion.attributes, "depth_mm": depth}
        if side != "bilateral":
            c, semi = lungs[side]
            centre = _lung_base_centroid(c, semi, y_from=c[1] + semi[1] - depth, z_to=c[2] + 20)
            planted_attributes["center_lps_mm"] = _round3(b.v(centre))
        planted.append(Finding("pleural_effusion", planted_attributes))
    b.cap((0, -12, 200), (0, -8, 125), 9, T.AIRWAY)
    b.cap((0, -8, 125), (-38, -2, 105), 6, T.AIRWAY)
    b.cap((0, -8, 125), (36, -2, 100), 6, T.AIRWAY)
    b.ell((-55, -3, -45), (85, 76, 80), T.LIVER)
    cardio = resolved.get("cardiomegaly")
    f = CARDIOMEGALY_SCALE[str(cardio.attributes["severity"])] if cardio else 1.0
    heart_c = np.array([15.0, -25.0 + (f - 1.0) * 30.0, 38.0])
    heart_axes = rotation(z_deg=-35.0, x_deg=15.0)
    b.ell(heart_c, (66 * f, 48 * f, 56 * f), T.MYOCARDIUM, axes=heart_axes)
    chambers = (
        ((20, 8, -8), (28, 22, 32), T.BLOOD_ART),
        ((-22, -10, -5), (24, 16, 28), T.BLOOD_RIGHT),
        ((10, 28, 22), (22, 14, 18), T.BLOOD_ART),
        ((-34, 10, 14), (20, 18, 22), T.BLOOD_RIGHT),
    )
    for ch_offset, ch_semi, tissue in chambers:
        local = np.asarray(ch_offset, float) * f
        world = heart_c + np.asarray(heart_axes).T @ local
        b.ell(world, (ch_semi[0] * f, ch_semi[1] * f, ch_semi[2] * f), tissue, axes=heart_axes)
    if cardio is not None:
        planted.append(Finding("cardiomegaly", {**cardio.attributes, "scale": f}))
    b.cap((20, -52, 55), (18, -40, 95), 12, T.BLOOD_RIGHT)  # pulmonary trunk
    aorta = [
        ((-5, -25, 45), 15),
        ((-5, -28, 120), 13),
        ((18, 0, 138), 12),
        ((22, 28, 125), 12),
        ((20, 24, -40), 11),
        ((10, 24, -230), 10),
    ]
    for (start, _), (end, radius) in zip(aorta[:-1], aorta[1:], strict=True):
        b.cap(start, end, radius, T.BLOOD_ART)
    b.cap((-25, 22, -230), (-25, 22, -10), 11, T.BLOOD_VEN)  # IVC
    b.cap((-25, 22, -10), (-30, -5, 15), 12, T.BLOOD_VEN)
    b.cap((-30, 5, -60), (0, 12, -90), 8, T.BLOOD_VEN)  # portal vein
    b.ell((70, -30, -40), (34, 28, 38), T.STOMACH)
    b.ell((88, 40, -50), (26, 34, 50), T.SPLEEN, axes=rotation(z_deg=30.0))
    b.ell((-65, 55, -115), (26, 22, 52), T.KIDNEY)
    b.ell((65, 55, -100), (26, 22, 52), T.KIDNEY)
    for z in range(190, -231, -34):  # vertebrae: body, disc below, arch, spinous process
        b.cyl((0, 55, z), (20, 17), 13.5, T.BONE)
        b.cyl((0, 55, z - 17), (20, 17), 3.5, T.DISC)
        b.cyl((0, 85, z), (17, 13), 11, T.CORTEX)
        b.cap((0, 96, z), (0, 112, z - 8), 5, T.CORTEX)
    b.cyl((0, 84, -15), (9, 8), 215, T.CSF)

    nodule = resolved.get("lung_nodule")
    if nodule is not None:
        lobe = str(nodule.attributes["lobe"])
        rn = float(nodule.attributes["size_mm"]) / 2
        cn = np.asarray(b.v(LOBE_CENTERS[lobe])) + _jitter(rng, 6.0)
        level = effusion_level.get("right" if lobe.startswith("right") else "left")
        if level is not None and "lower" in lobe:  # keep the nodule in aerated lung
            cn[1] = min(cn[1], level - rn - 5)
        b.soft_ell(cn, (rn, rn, rn), T.NODULE)
        planted.append(Finding("lung_nodule", {**nodule.attributes, "center_lps_mm": _round3(cn)}))
    lesion = resolved.get("liver_lesion")
    if lesion is not None:
        rl = float(lesion.attributes["size_mm"]) / 2
        cl = np.asarray(b.v(LIVER_LESION_CENTERS[str(lesion.attributes["location"])]))
        cl = cl + _jitter(rng, 5.0)
        b.soft_ell(cl, (rl, rl * 0.9, rl), T.LIVER_LESION)
        planted.append(Finding("liver_lesion", {**lesion.attributes, "center_lps_mm": _round3(cl)}))
    nodes = resolved.get("lymphadenopathy")
    if nodes is not None:
        station = str(nodes.attributes["station"])
        if station == "mediastinal":  # subcarinal, with a right paratracheal neighbour
            base, offset = (0.0, 8.0, 108.0), (-18.0, -14.0, 22.0)
        else:  # left para-aortic, with a neighbour below it
            base, offset = (45.0, 20.0, -125.0), (0.0, 0.0, -30.0)
        planted.append(_plant_nodes(b, nodes, np.asarray(b.v(base)), np.asarray(offset), rng))
    return Anatomy(
        modality="CT",
        shapes=tuple(b.shapes),
        center=(0.0, 0.0, -15.0),
        fov_mm={"axial": 380.0, "coronal": 460.0, "sagittal": 460.0, "oblique": 400.0},
        coverage_mm={"axial": 410.0, "coronal": 250.0, "sagittal": 340.0, "oblique": 300.0},
        findings=tuple(planted),
        sex=str(rng.choice(["M", "F"])),
        landmarks=b.landmarks(
            {
                "aorta": (16.8, 24.0, -100.0),
                "liver": (-30.0, 40.0, -60.0),
                "spleen": (88.0, 40.0, -50.0),
                "spine": (0.0, 55.0, -82.0),
                "right_lung": (-90.0, 0.0, 120.0),
            }
        ),
    )


def _plant_nodes(
    b: _Body, nodes: Finding, base: np.ndarray, offset: np.ndarray, rng: np.random.Generator
) -> Finding:
    """An enlarged node (short axis as requested, long axis 1.4x along z) and a smaller
    neighbour at ``offset`` from it."""
    short = float(nodes.attributes["short_axis_mm"])
    c = base + _jitter(rng, 3.0)
    b.soft_ell(c, (short / 2, short / 2, short * 0.7), T.LYMPH_NODE)
    second = c + offset * b.s
    b.soft_ell(second, (short * 0.32, short * 0.32, short * 0.45), T.LYMPH_NODE)
    return Finding("lymphadenopathy", {**nodes.attributes, "center_lps_mm": _round3(c)})


def _rectum_path(b: _Body) -> list[np.ndarray]:
    """Rectal centre line from the anal verge up to the sigmoid (scaled points)."""
    pts = [(0.0, 60.0, -135.0), (0.0, 48.0, -60.0), (0.0, 55.0, -10.0), (-25.0, 20.0, 30.0)]
    return [np.asarray(b.p(*q)) for q in pts]


def _along(path: list[np.ndarray], distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Point and unit direction at arc length ``distance`` along a polyline."""
    for a, e in zip(path[:-1], path[1:], strict=True):
        seg = float(np.linalg.norm(e - a))
        if distance <= seg:
            d = (e - a) / seg
            return a + d * distance, d
        distance -= seg
    d = (path[-1] - path[-2]) / float(np.linalg.norm(path[-1] - path[-2]))
    return path[-1], d


def build_mr(
    findings: Sequence[Finding], rng: np.random.Generator, position: Vec3 = (0.0, 0.0, 0.0)
) -> Anatomy:
    """Pelvis: body, muscles, pelvic bones, bladder, prostate/uterus, rectum, vessels, findings."""
    resolved = {f.key: resolve(f, "MR") for f in findings}
    b = _Body(float(rng.uniform(0.95, 1.05)), position)
    sex = str(rng.choice(["M", "F"]))
    planted: list[Finding] = []
    b.cyl((0, 5, -30), (175, 120), 110, T.FAT)
    for side in (-1, 1):  # gluteus maximus, iliopsoas, obturator internus, rectus abdominis
        b.ell((80 * side, 75, -55), (70, 38, 75), T.MUSCLE, axes=rotation(z_deg=-25.0 * side))
        b.ell((72 * side, -5, 10), (28, 26, 95), T.MUSCLE)
        b.ell((78 * side, 15, -85), (16, 42, 38), T.MUSCLE)
        b.ell((38 * side, -100, 10), (32, 9, 90), T.MUSCLE)
        b.ell((100 * side, -20, -120), (55, 60, 40), T.MUSCLE)  # proximal thigh
    for side in (-1, 1):
        bones: list[tuple[str, tuple[float, ...]]] = [
            ("ell", (105 * side, 15, 45, 18, 55, 40)),
            ("cap", (92 * side, 0, -75, 128 * side, 8, -135, 16)),
            ("cap", (10 * side, -70, -90, 75 * side, -30, -80, 10)),
            ("cap", (70 * side, 20, -80, 55 * side, 45, -125, 12)),
        ]
        for kind, v in bones:  # dark cortex first, fatty marrow inside it
            if kind == "ell":
                axes = rotation(z_deg=25.0 * side)
                b.ell(v[:3], v[3:], T.CORTEX, axes=axes)
                b.ell(v[:3], (v[3] - 3, v[4] - 3, v[5] - 3), T.MARROW, axes=axes)
            else:
                b.cap(v[:3], v[3:6], v[6] + 2, T.CORTEX)
                b.cap(v[:3], v[3:6], v[6], T.MARROW)
        b.ell((92 * side, 0, -75), (26, 26, 26), T.CORTEX)
        b.ell((92 * side, 0, -75), (23, 23, 23), T.MARROW)
        b.cap((55 * side, 30, 40), (75 * side, -20, -60), 5, T.BLOOD_ART)  # external iliac
        b.cap((62 * side, 38, 40), (82 * side, -10, -60), 7, T.BLOOD_VEN)
    sacrum_axes = rotation(x_deg=-25.0)
    b.ell((0, 90, 20), (45, 16, 55), T.CORTEX, axes=sacrum_axes)
    b.ell((0, 90, 20), (42, 13, 52), T.MARROW, axes=sacrum_axes)
    if sex == "M":
        b.ell((0, -10, -100), (22, 17, 20), T.GLAND)
    else:
        b.ell((0, 5, -20), (28, 22, 45), T.GLAND, axes=rotation(x_deg=-40.0))
    b.ell((0, -38, -55), (42, 28, 34), T.URINE)
    path = _rectum_path(b)
    for a, e in zip(path[:-1], path[1:], strict=True):
        b.cap_world(a, e, 17, T.RECTAL_WALL)
    for a, e in zip(path[:-1], path[1:], strict=True):
        b.cap_world(a, e, 11, T.RECTAL_LUMEN)

    lesion = resolved.get("rectal_lesion")
    if lesion is not None:
        size = float(lesion.attributes["size_mm"])
        point, direction = _along(path, float(lesion.attributes["distance_cm"]) * 10.0)
        wall = np.asarray(WALL_DIRECTIONS[str(lesion.attributes["wall"])])
        radial = wall - direction * float(wall @ direction)
        radial /= np.linalg.norm(radial)
        c = point + radial * 13.0 * b.s
        cross = np.cross(direction, radial)
        axes = (_vec3(radial), _vec3(cross), _vec3(direction))
        b.soft_ell(c, (9.0, size * 0.4, size / 2), T.RECTAL_LESION, axes=axes)
        planted.append(Finding("rectal_lesion", {**lesion.attributes, "center_lps_mm": _round3(c)}))
    nodes = resolved.get("lymphadenopathy")
    if nodes is not None:
        short = float(nodes.attributes["short_axis_mm"])
        if nodes.attributes["station"] == "mesorectal":
            point, _ = _along(path, 60.0)
            base = point + np.array([0.8, 0.6, 0.0]) * (17 * b.s + short / 2 + 4)
        else:
            base = np.asarray(b.p(-60.0, 25.0, -45.0))
        offset = np.array([0.0, 0.0, -(short * 1.15 + 3.0)])
        planted.append(_plant_nodes(b, nodes, base, offset, rng))
    return Anatomy(
        modality="MR",
        shapes=tuple(b.shapes),
        center=(0.0, 5.0, -30.0),
        fov_mm={"axial": 380.0, "coronal": 400.0, "sagittal": 320.0, "oblique": 380.0},
        coverage_mm={"axial": 210.0, "coronal": 230.0, "sagittal": 340.0, "oblique": 180.0},
        findings=tuple(planted),
        sex=sex,
        landmarks=b.landmarks(
            {
                "bladder": (0.0, -38.0, -55.0),
                "left_femoral_head": (92.0, 0.0, -75.0),
                "right_femoral_head": (-92.0, 0.0, -75.0),
            }
        ),
    )
