"""Slice-level labels of focal findings, from a phantom study's answer key and a view's geometry.

Study-level labels ("this CT has a lung nodule") are a weak signal for a slice encoder: at
64x64 a 6 mm nodule is one or two pixels on one or two of a study's ~100 slices, and a ViT
trained only through the study label (multiple-instance learning) did not learn to see it
in hundreds of steps. A phantom's truth.json knows where every focal finding is
(`center_lps_mm` and its size), so for phantom datasets each slice gets its own label:
1 when the slice plane passes through the finding, 0 when the finding is absent from the
study, -1 (not used) on the rim just outside it, for diffuse findings (effusion,
cardiomegaly: no single slice shows them) and for findings the modality cannot have.
Studies without truth.json (real data) get no slice labels and the stage that uses them
is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TRUTH_FILE = "truth.json"
#: findings that sit on a few slices and whose centre and size the answer key records
FOCAL_FINDINGS = ("lung_nodule", "liver_lesion", "lymphadenopathy", "rectal_lesion")
#: a slice counts as showing a finding when its plane is within the finding's half extent
#: plus this fraction of the slice spacing (the slab partial-volumes the edge in)
INSIDE_MARGIN = 0.25
#: beyond that, up to one spacing further, the slice is ambiguous and not labelled
RIM = 1.0


def read_truth_findings(folder: Path) -> list[Mapping[str, Any]] | None:
    """The `findings` entries of `folder/truth.json`, or None when the study has no answer key."""
    path = folder / TRUTH_FILE
    if not path.is_file():
        return None
    findings = json.loads(path.read_text(encoding="utf-8")).get("findings")
    return list(findings) if isinstance(findings, list) else None


def half_extent_mm(key: str, attributes: Mapping[str, Any], normal: Sequence[float]) -> float:
    """Half the finding's extent along the slice normal, from the phantom's shapes.

    Lymph nodes are ellipsoids 1.4x longer along the body axis (z) than their short axis;
    the other focal findings are (near) spheres of diameter `size_mm`.
    """
    if key == "lymphadenopathy":
        short = float(attributes["short_axis_mm"])
        along_z = abs(float(normal[2]))
        return float(np.hypot(0.5 * short * np.sqrt(1.0 - along_z**2), 0.7 * short * along_z))
    return 0.5 * float(attributes["size_mm"])


def slice_labels(
    findings: Sequence[Mapping[str, Any]] | None,
    *,
    normal: Sequence[float],
    positions: Sequence[float],
    spacing: float,
    labels: Sequence[str],
) -> np.ndarray:
    """(n_slices, len(labels)) float32 of 1 / 0 / -1 (see the module docstring).

    `positions` are the slices' positions along `normal` (mm), as the node's volume loader
    reports them; `findings` the answer key's entries (None: no answer key, all -1).
    """
    out = np.full((len(positions), len(labels)), -1.0, dtype=np.float32)
    if not findings:
        return out
    by_key = {str(f["key"]): f for f in findings}
    where = np.asarray(positions, dtype=np.float64)
    direction = np.asarray(normal, dtype=np.float64)
    for column, key in enumerate(labels):
        entry = by_key.get(key)
        if key not in FOCAL_FINDINGS or entry is None:
            continue
        if not entry.get("present"):
            out[:, column] = 0.0
            continue
        attributes = entry["attributes"]
        centre = float(np.asarray(attributes["center_lps_mm"], dtype=np.float64) @ direction)
        distance = np.abs(where - centre)
        inside = half_extent_mm(key, attributes, normal) + INSIDE_MARGIN * spacing
        column_values = np.where(distance <= inside, 1.0, 0.0)
        column_values[(distance > inside) & (distance <= inside + RIM * spacing)] = -1.0
        out[:, column] = column_values
    return out
