"""Group (and load) phantom CT and MR studies and check every series against truth.json.

The phantom writes what a scanner would, plus an answer key: which series are
views (plane, phase or sequence, b-values) and which are excluded and why. The
same checks run with every SeriesDescription stripped, since descriptions are
only the last resort of the grouping rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.phantom import PhantomSpec, generate_study, write_study
from node.grouping import GroupingSettings, group_study
from node.headers import read_header
from node.manifest import ExclusionReason, Manifest
from node.volume import load_view

#: truth.json's exclusion reasons -> the codes grouping may give (a dose report
#: is a screen capture to the phantom; grouping names it more precisely)
REASONS = {
    "localizer": {ExclusionReason.LOCALIZER},
    "screen_capture": {ExclusionReason.SCREEN_CAPTURE, ExclusionReason.DOSE_REPORT},
    "derived": {ExclusionReason.DERIVED},
    "oblique": {ExclusionReason.OBLIQUE},
}
CT_PHASES = ("non_contrast", "arterial", "venous", "delayed")
MR_SEQUENCES = ("t1", "t1_post", "t2", "flair", "dwi", "adc", "other")
CASES = [
    ("CT", False, False),
    ("CT", True, False),
    ("MR", False, False),
    ("MR", True, False),
    ("MR", True, True),
]


def _spec(modality: str, strip: bool, enhanced: bool) -> PhantomSpec:
    return PhantomSpec(
        modality=modality,
        planes=("axial", "coronal", "sagittal"),
        phases=CT_PHASES,
        sequences=MR_SEQUENCES,
        seed=0,
        matrix=64,
        slices=32,
        include_localizer=True,
        include_dose_report=True,
        include_oblique=True,
        include_mip=True,
        strip_descriptions=strip,
        enhanced_mr=enhanced,
    )


@pytest.fixture(
    scope="module",
    params=CASES,
    ids=lambda c: f"{c[0]}{'-stripped' if c[1] else ''}{'-enhanced' if c[2] else ''}",
)
def study(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Manifest, dict[str, Any], Path]:
    modality, strip, enhanced = request.param
    folder = tmp_path_factory.mktemp(f"phantom-{modality}")
    write_study(generate_study(_spec(modality, strip, enhanced)), folder)
    truth = json.loads((folder / "truth.json").read_text())
    headers = [read_header(p) for p in sorted(folder.rglob("*.dcm"))]
    if strip:
        assert not any(h.series_description for h in headers)
    return group_study(headers, GroupingSettings()), truth, folder


def test_every_series_matches_truth(study: tuple[Manifest, dict[str, Any], Path]) -> None:
    manifest, truth, _ = study
    views = {v.series_instance_uid: v for v in manifest.views}
    exclusions: dict[str, list[ExclusionReason]] = {}
    for item in manifest.excluded:
        exclusions.setdefault(item.series_instance_uid, []).append(item.reason_code)
    for series in truth["series"]:
        uid, name = series["series_instance_uid"], series["folder"]
        if series["role"] == "view":
            assert uid in views, (name, exclusions.get(uid))
            view = views[uid]
            assert view.plane == series["plane"], name
            assert view.modality == series["modality"], name
            if series["modality"] == "CT":
                assert view.phase == series["phase"], (name, view.evidence)
            else:
                assert view.sequence == series["sequence"], (name, view.evidence)
            assert view.slice_count == series["slices_per_stack"], name
            if series["b_values"]:
                assert view.b_value in series["b_values"], name
                # the other b-values are stacks of the same series, dropped as duplicates
                assert exclusions[uid] == [ExclusionReason.DUPLICATE_VIEW] * (len(series["b_values"]) - 1)
            else:
                assert uid not in exclusions, name
        else:
            assert uid not in views, name
            assert set(exclusions[uid]) <= REASONS[series["exclusion_reason"]], (name, exclusions[uid])
    assert len(manifest.views) == len([s for s in truth["series"] if s["role"] == "view"])
    accounted = set(views) | set(exclusions)
    assert accounted == {s["series_instance_uid"] for s in truth["series"]}


def test_labels_come_from_headers_not_descriptions(
    study: tuple[Manifest, dict[str, Any], Path],
) -> None:
    manifest, _, _ = study
    for view in manifest.views:
        label = view.evidence.get("phase") or view.evidence["sequence"]
        assert "description" not in label, (view.key, label)
        assert not view.warnings, (view.key, view.warnings)


def test_every_view_loads_with_truth_geometry(study: tuple[Manifest, dict[str, Any], Path]) -> None:
    manifest, truth, _ = study
    by_uid = {s["series_instance_uid"]: s for s in truth["series"]}
    for view in manifest.views:
        series = by_uid[view.series_instance_uid]
        volume = load_view(view)
        assert volume.pixels.shape == (series["slices_per_stack"], series["rows"], series["columns"])
        assert np.isfinite(volume.pixels).all()
        assert volume.spacing[0] == pytest.approx(series["slice_spacing_mm"], rel=1e-3), view.key
        assert volume.spacing[1] == pytest.approx(series["pixel_spacing_mm"], rel=1e-3), view.key
        assert volume.warnings == (), (view.key, volume.warnings)
        assert list(volume.positions) == sorted(volume.positions)
