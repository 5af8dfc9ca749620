"""Slice geometry and stack splitting: one series -> one or more sorted slice stacks.

A DICOM series is a bookkeeping unit, not a volume. One series may hold a
three-plane localizer, several b-values, several echoes, or several time points
at the same positions; an Enhanced multi-frame instance may hold all of that in
one file. The model needs volumes, so every series is first cut into *stacks*:
slices that share orientation, matrix and acquisition parameters and whose
positions along the stack normal do not repeat.

Splitting is deterministic (same headers -> same stacks and stack keys), because
stack keys end up in the manifest and in the job identity.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.headers import InstanceHeader, Orientation, Vec3

#: Tolerances for a valid ImageOrientationPatient: unit-length direction cosines
#: that are orthogonal to each other (DICOM requires both; exporters round to ~6 digits).
UNIT_TOLERANCE = 1e-2
ORTHOGONALITY_TOLERANCE = 1e-2

AXIS_PLANES = ("sagittal", "coronal", "axial")  # normal along patient x, y, z


@dataclass(frozen=True, slots=True)
class SliceItem:
    """One 2-D slice: a single-frame instance or one frame of a multi-frame one."""

    header: InstanceHeader
    frame: int | None
    position: Vec3
    orientation: Orientation
    normal: Vec3
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    b_value: float | None
    echo: float | None
    echo_time: float | None
    temporal: int | None
    stack_id: str | None
    acquisition_time: float | None

    @property
    def sort_key(self) -> tuple[int, str, int]:
        """Acquisition order tie-breaker: instance number, then UID, then frame."""
        number = self.header.instance_number
        return (
            number if number is not None else 1 << 30,
            self.header.sop_instance_uid,
            self.frame if self.frame is not None else -1,
        )


@dataclass(frozen=True, slots=True)
class Stack:
    """Slices of one series that form one volume, sorted along ``normal``."""

    series_instance_uid: str
    stack_key: str
    items: tuple[SliceItem, ...]
    normal: Vec3
    positions: tuple[float, ...]
    split: str
    warnings: tuple[str, ...] = field(default=())

    @property
    def header(self) -> InstanceHeader:
        """A representative header (the first slice's)."""
        return self.items[0].header

    @property
    def spacing_mm(self) -> float:
        """Median distance between neighbouring slices along the normal (0 for one)."""
        steps = sorted(b - a for a, b in zip(self.positions, self.positions[1:], strict=False))
        return steps[len(steps) // 2] if steps else 0.0

    @property
    def thickness(self) -> float:
        """Slice thickness, else spacing; used to prefer thin-slice duplicates."""
        value = self.items[0].thickness
        return value if value is not None and value > 0 else self.spacing_mm


# ----------------------------------------------------------------------- vectors


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _cross(a: Sequence[float], b: Sequence[float]) -> Vec3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def stack_normal(orientation: Orientation) -> Vec3 | None:
    """Canonical unit normal of an orientation, or None when it is degenerate.

    The normal is the cross product of the row and column cosines, flipped so its
    largest component is positive: then every axial stack is ordered feet->head,
    every coronal one front->back and every sagittal one right->left, whatever
    the scanner's row/column convention.
    """
    row, col = orientation[:3], orientation[3:]
    if abs(math.sqrt(_dot(row, row)) - 1) > UNIT_TOLERANCE:
        return None
    if abs(math.sqrt(_dot(col, col)) - 1) > UNIT_TOLERANCE:
        return None
    if abs(_dot(row, col)) > ORTHOGONALITY_TOLERANCE:
        return None
    normal = _cross(row, col)
    length = math.sqrt(_dot(normal, normal))
    normal = (normal[0] / length, normal[1] / length, normal[2] / length)
    dominant = max(range(3), key=lambda i: abs(normal[i]))
    if normal[dominant] < 0:
        normal = (-normal[0], -normal[1], -normal[2])
    return normal


def classify_plane(normal: Vec3, tolerance_deg: float) -> tuple[str, str]:
    """(plane, evidence): the main axis within ``tolerance_deg`` of the normal, else oblique."""
    axis = max(range(3), key=lambda i: abs(normal[i]))
    angle = math.degrees(math.acos(min(1.0, abs(normal[axis]))))
    shown = ", ".join(f"{v:.3f}" for v in normal)
    axis_name = "xyz"[axis]
    if angle <= tolerance_deg:
        plane = AXIS_PLANES[axis]
        return plane, (
            f"normal ({shown}) is {angle:.1f}° from the {axis_name} axis "
            f"(tolerance {tolerance_deg:g}°) -> {plane}"
        )
    return "oblique", (
        f"normal ({shown}) is {angle:.1f}° from the nearest ({axis_name}) axis, "
        f"beyond the {tolerance_deg:g}° tolerance -> oblique"
    )


def angle_deg(a: Sequence[float], b: Sequence[float]) -> float:
    """Angle between two unit vectors, ignoring their sign."""
    return math.degrees(math.acos(min(1.0, abs(_dot(a, b)))))


# ----------------------------------------------------------------------- items


def expand(header: InstanceHeader) -> tuple[list[SliceItem], int]:
    """The slices of one instance with valid geometry, and how many had none/bad."""
    sources: list[tuple[Any, ...]]
    if header.frames:
        sources = [
            (
                index,
                frame.position,
                frame.orientation,
                frame.pixel_spacing,
                frame.slice_thickness,
                frame.b_value,
                frame.echo_time,
                frame.echo_time,
                frame.temporal_position,
                frame.stack_id,
                frame.acquisition_time,
            )
            for index, frame in enumerate(header.frames)
        ]
    else:
        echo = header.echo_number if header.echo_number is not None else header.echo_time
        sources = [
            (
                None,
                header.image_position,
                header.image_orientation,
                header.pixel_spacing,
                header.slice_thickness,
                header.b_value,
                echo,
                header.echo_time,
                header.temporal_position,
                None,
                header.acquisition_time,
            )
        ]
    items: list[SliceItem] = []
    broken = 0
    for (
        frame,
        position,
        orientation,
        spacing,
        thick,
        b_value,
        echo,
        echo_time,
        temporal,
        sid,
        time,
    ) in sources:
        normal = stack_normal(orientation) if orientation is not None else None
        if position is None or orientation is None or normal is None:
            broken += 1
            continue
        items.append(
            SliceItem(
                header=header,
                frame=frame,
                position=position,
                orientation=orientation,
                normal=normal,
                pixel_spacing=spacing,
                thickness=thick,
                b_value=b_value,
                echo=echo,
                echo_time=echo_time,
                temporal=temporal,
                stack_id=sid,
                acquisition_time=time,
            )
        )
    return items, broken


# ----------------------------------------------------------------------- splitting


def _by(items: list[SliceItem], key: Callable[[SliceItem], Hashable]) -> list[list[SliceItem]]:
    groups: dict[Hashable, list[SliceItem]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return [groups[k] for k in sorted(groups, key=lambda k: repr(k))]


def _orientation_clusters(items: list[SliceItem], tolerance_deg: float) -> list[list[SliceItem]]:
    clusters: list[list[SliceItem]] = []
    for item in sorted(items, key=lambda i: i.sort_key):
        for cluster in clusters:
            rep = cluster[0]
            if (
                angle_deg(rep.normal, item.normal) <= tolerance_deg
                and angle_deg(rep.orientation[:3], item.orientation[:3]) <= tolerance_deg
            ):
                cluster.append(item)
                break
        else:
            clusters.append([item])
    return clusters


def _project(item: SliceItem, normal: Vec3) -> float:
    return _dot(item.position, normal)


def _has_repeats(items: list[SliceItem], normal: Vec3, tol: float) -> bool:
    seen = {round(_project(i, normal) / tol) for i in items}
    return len(seen) < len(items)


def _rounded(value: float | None, step: float) -> float | None:
    return None if value is None else round(value / step) * step


_DISCRIMINATORS: tuple[tuple[str, Callable[[SliceItem], Hashable]], ...] = (
    ("temporal position", lambda i: i.temporal),
    ("acquisition number", lambda i: i.header.acquisition_number),
    ("acquisition time", lambda i: _rounded(i.acquisition_time, 0.5)),
)


def _split_repeats(
    items: list[SliceItem], normal: Vec3, tol: float
) -> tuple[list[tuple[str, list[SliceItem]]], list[str]]:
    """Split slices whose positions repeat (time points, repeats) into labelled groups."""
    if not _has_repeats(items, normal, tol):
        return [("", items)], []
    by_position = _by(items, lambda i: round(_project(i, normal) / tol))
    counts = {len(g) for g in by_position}
    for name, key in _DISCRIMINATORS:
        # a tag separates the repeats only if it yields exactly one group per repeat
        groups = _by(items, key)
        if len(groups) == max(counts) and not any(_has_repeats(g, normal, tol) for g in groups):
            return [(f"{name} {key(g[0])}", g) for g in groups], []
    if len(counts) == 1:  # every position repeated equally often: k time points
        ranked = [sorted(g, key=lambda i: (i.acquisition_time or 0.0, i.sort_key)) for g in by_position]
        repeats = counts.pop()
        return [(f"repeat {r + 1}", [g[r] for g in ranked]) for r in range(repeats)], []
    kept = [sorted(g, key=lambda i: i.sort_key)[0] for g in by_position]
    dropped = len(items) - len(kept)
    return [("", kept)], [f"{dropped} slice(s) at already-occupied positions dropped"]


def split_series(
    series_uid: str,
    items: list[SliceItem],
    *,
    orientation_tolerance_deg: float,
    position_tolerance_mm: float,
) -> list[Stack]:
    """Cut one series' slices into stacks, each sorted along its canonical normal."""
    stacks: list[Stack] = []
    clusters = _orientation_clusters(items, orientation_tolerance_deg)
    for o_index, cluster in enumerate(clusters):
        for group in _by(
            cluster, lambda i: (i.header.rows, i.header.columns, _rounded(i.b_value, 1.0), i.echo, i.stack_id)
        ):
            first = group[0]
            parts = [f"o{o_index}"] if len(clusters) > 1 else []
            reasons = ["orientation"] if len(clusters) > 1 else []
            if first.b_value is not None:
                parts.append(f"b{first.b_value:g}")
                reasons.append(f"b-value {first.b_value:g}")
            if first.echo is not None and len({i.echo for i in cluster}) > 1:
                parts.append(f"e{first.echo:g}")
                reasons.append(f"echo {first.echo:g}")
            if first.stack_id is not None and len({i.stack_id for i in cluster}) > 1:
                parts.append(f"s{first.stack_id}")
                reasons.append(f"stack id {first.stack_id}")
            sub_groups, warnings = _split_repeats(group, first.normal, position_tolerance_mm)
            for r_index, (label, sub) in enumerate(sub_groups):
                key_parts = [*parts, f"t{r_index}"] if label else parts
                why = [*reasons, label] if label else reasons
                ordered = sorted(sub, key=lambda i: (_project(i, first.normal), i.sort_key))
                stacks.append(
                    Stack(
                        series_instance_uid=series_uid,
                        stack_key="|".join([series_uid, *key_parts]),
                        items=tuple(ordered),
                        normal=first.normal,
                        positions=tuple(_project(i, first.normal) for i in ordered),
                        split=("split by " + ", ".join(why)) if why else "whole series",
                        warnings=tuple(warnings),
                    )
                )
    return stacks
