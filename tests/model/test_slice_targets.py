"""Per-slice targets for stage 0b: from study labels and the phantom answer key's locations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.phantom import Finding, PhantomSpec
from models.phantom.study import write_study
from models.training.data import (
    SHOWN_PIXELS,
    SHOWN_SNR,
    DatasetError,
    FindingRegion,
    SlicePlane,
    ViewGeometry,
    finding_cuts,
    finding_places,
    finding_regions,
    load_study,
    slice_targets,
)

pytestmark = pytest.mark.model

NAMES = ("lung_nodule", "pleural_effusion", "liver_lesion")
AXIAL = ViewGeometry(positions=tuple(float(z) for z in range(0, 100, 10)), normal=(0.0, 0.0, 1.0))


def _column(targets: np.ndarray, name: str) -> str:
    return "".join({1.0: "X", 0.0: ".", -1.0: "?"}[float(v)] for v in targets[:, NAMES.index(name)])


def test_located_absent_and_diffuse_findings() -> None:
    region = FindingRegion("lung_nodule", (5.0, -3.0, 42.0), 6.0)
    labels = {"lung_nodule": 1, "pleural_effusion": 1, "liver_lesion": 0}
    targets = slice_targets(AXIAL, 10, NAMES, labels, [region]).numpy()
    # 40 mm is 2 mm from the centre; 30 and 50 lie in the partial-volume band (<= 6 + 10 mm)
    assert _column(targets, "lung_nodule") == "...?X?...."
    assert _column(targets, "pleural_effusion") == "X" * 10  # present, nothing says where: everywhere
    assert _column(targets, "liver_lesion") == "." * 10  # absent from the study


def test_a_series_that_does_not_show_a_finding_plainly_is_not_taught_that_it_does() -> None:
    """Within the radius: shown (X) where the series' SNR is at least `SHOWN_SNR` or the key
    does not measure it, unknown (?) where it is lower; beyond it the finding is absent."""
    snr = {"arterial": SHOWN_SNR + 20.0, "venous": SHOWN_SNR - 4.0, "threshold": SHOWN_SNR}
    region = FindingRegion("liver_lesion", (0.0, 0.0, 42.0), 6.0, snr)
    labels = {"liver_lesion": 1}
    columns = {
        series: _column(
            slice_targets(replace(AXIAL, series_instance_uid=series), 10, NAMES, labels, [region]).numpy(),
            "liver_lesion",
        )
        for series in ("arterial", "venous", "threshold", "unmeasured")
    }
    assert columns == {
        "arterial": "...?X?....",
        "venous": "...???....",
        "threshold": "...?X?....",
        "unmeasured": "...?X?....",
    }


def test_an_effusion_shows_on_the_slices_that_cut_it() -> None:
    """`cuts`: a slice that holds enough of it shows it (X), one that grazes it is unknown
    (?), one that cuts none of it is clear (.); a series the key does not list keeps the
    study label on every slice, and an absent effusion stays absent whatever the key says."""
    geometry = replace(AXIAL, series_instance_uid="axial")
    cuts = {
        "pleural_effusion": {
            "axial": [((0.0, 0.0, 40.0), 3), ((9.0, -4.0, 50.0), SHOWN_PIXELS), ((0.0, 0.0, 60.0), 90)],
            "empty": [],
        }
    }
    present = {"pleural_effusion": 1}

    def column(geometry: ViewGeometry, labels: dict[str, int]) -> str:
        return _column(slice_targets(geometry, 10, NAMES, labels, [], cuts).numpy(), "pleural_effusion")

    assert column(geometry, present) == "....?XX..."
    assert column(replace(AXIAL, series_instance_uid="empty"), present) == ".........."
    assert column(replace(AXIAL, series_instance_uid="unlisted"), present) == "XXXXXXXXXX"
    assert column(geometry, {"pleural_effusion": 0}) == ".........."


def test_unlabelled_findings_stay_unknown_and_oblique_normals_project() -> None:
    sagittal = ViewGeometry(positions=AXIAL.positions, normal=(1.0, 0.0, 0.0))
    region = FindingRegion("lung_nodule", (70.0, 0.0, 500.0), 4.0)
    targets = slice_targets(sagittal, 10, NAMES, {"lung_nodule": 1}, [region]).numpy()
    assert _column(targets, "lung_nodule") == "......?X?."
    assert _column(targets, "liver_lesion") == "?" * 10


def test_positions_follow_the_processors_resampling() -> None:
    region = FindingRegion("lung_nodule", (0.0, 0.0, 90.0), 5.0)
    targets = slice_targets(AXIAL, 4, NAMES, {"lung_nodule": 1}, [region]).numpy()  # 0, 30, 60, 90 mm
    assert _column(targets, "lung_nodule") == "..?X"  # the band widens with the new 30 mm spacing


def test_a_broken_answer_key_is_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "truth.json").write_text(
        '{"findings": [{"key": "lung_nodule", "present": true, "attributes": {"center_lps_mm": [1, 2]}}]}'
    )
    with pytest.raises(DatasetError, match="not a phantom answer key"):
        finding_regions(tmp_path)
    assert finding_regions(tmp_path / "elsewhere") == []


def _small_ct(planes: tuple[str, ...], phases: tuple[str, ...], seed: int, finding: Finding) -> PhantomSpec:
    """A 32-pixel, 16-slice CT study of `finding` with image views only."""
    return PhantomSpec(
        modality="CT",
        planes=planes,
        phases=phases,
        seed=seed,
        matrix=32,
        slices=16,
        include_localizer=False,
        include_dose_report=False,
        include_oblique=False,
        findings=(finding,),
    )


def _with_and_without_nodule(folder: Path, *, planes: tuple[str, ...], seed: int, lobe: str) -> None:
    """Two small CT studies in `folder`, "with" a 20 mm nodule in `lobe` and "without" it."""
    spec = _small_ct(planes, ("venous",), seed, Finding("lung_nodule", {"size_mm": 20.0, "lobe": lobe}))
    write_study(spec, folder / "with")
    write_study(replace(spec, findings=()), folder / "without")


def test_targets_match_where_the_phantom_draws_the_nodule(tmp_path: Path) -> None:
    """Every slice marked as showing the nodule is one its pixels change, and no slice marked
    clear of it changes. (A slice only grazed by it stays unknown: here the axial slices
    lie 10.7 and 14.3 mm from the centre of a 10 mm radius, so only the coronal view has one.)"""
    _with_and_without_nodule(tmp_path, planes=("axial", "coronal"), seed=7, lobe="right upper lobe")
    regions = finding_regions(tmp_path / "with")
    assert [(r.key, r.radius_mm) for r in regions] == [("lung_nodule", 10.0)]
    with_views, without_views = load_study(tmp_path / "with"), load_study(tmp_path / "without")
    positives = 0
    for (view, geometry), (plain, _) in zip(with_views, without_views, strict=True):
        targets = slice_targets(geometry, view.pixels.shape[0], NAMES, {"lung_nodule": 1}, regions).numpy()
        changed = np.abs(view.pixels - plain.pixels).reshape(view.pixels.shape[0], -1).max(axis=1) > 50
        marked = targets[:, 0]
        positives += int((marked == 1).sum())
        assert changed[marked == 1].all(), view.view_key
        assert not changed[marked == 0].any(), view.view_key
        assert changed.any(), view.view_key  # the nodule is in every view's coverage
    assert positives >= 1


def test_a_slice_plane_places_a_point_as_fractions_of_the_processors_square() -> None:
    # 40 rows x 80 columns at 2 mm (rows) x 1 mm (columns); the processor pads the rows to 80
    plane = SlicePlane(
        origin=(-40.0, -40.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        pixel_spacing=(2.0, 1.0),
        rows=40,
        columns=80,
    )
    across, down = plane.place((-40.0, -40.0, 17.0))  # the first pixel's centre, any slice
    assert across == pytest.approx(0.5 / 80) and down == pytest.approx((20 + 0.5) / 80)
    across, down = plane.place((-1.0, 38.0, 0.0))  # column 39, row 39: the bottom row's middle
    assert across == pytest.approx(39.5 / 80) and down == pytest.approx((20 + 39.5) / 80)


def test_finding_places_locate_only_what_the_answer_key_locates() -> None:
    plane = SlicePlane((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 1.0), 10, 10)
    geometry = replace(AXIAL, plane=plane)
    regions = [
        FindingRegion("lung_nodule", (2.0, 7.0, 40.0), 6.0),
        FindingRegion("lymphadenopathy", (1.0, 1.0, 1.0), 3.0),  # not in this vocabulary
    ]
    places = finding_places(geometry, NAMES, regions)
    assert places[0].tolist() == pytest.approx([0.25, 0.75])
    assert bool(places[1:].isnan().all())  # effusion and liver lesion: nothing locates them
    assert bool(finding_places(AXIAL, NAMES, regions).isnan().all())  # no plane known


def test_the_place_is_where_the_phantom_draws_the_nodule(tmp_path: Path) -> None:
    """On each slice that shows the nodule, the pixels it changes centre on its place."""
    _with_and_without_nodule(
        tmp_path, planes=("axial", "coronal", "sagittal"), seed=11, lobe="left lower lobe"
    )
    regions = finding_regions(tmp_path / "with")
    checked = 0
    for (view, geometry), (plain, _) in zip(
        load_study(tmp_path / "with"), load_study(tmp_path / "without"), strict=True
    ):
        across, down = finding_places(geometry, NAMES, regions)[0].tolist()
        targets = slice_targets(geometry, view.pixels.shape[0], NAMES, {"lung_nodule": 1}, regions)
        for k in (targets[:, 0] == 1).nonzero().flatten().tolist():
            rows, columns = np.nonzero(np.abs(view.pixels[k] - plain.pixels[k]) > 50)
            side = max(view.pixels.shape[1:])
            assert abs((columns.mean() + 0.5) / side - across) * side < 1.0, view.view_key
            assert abs((rows.mean() + 0.5) / side - down) * side < 1.0, view.view_key
            checked += 1
    assert checked >= 3


def test_a_liver_lesion_is_taught_on_the_arterial_slices_only(tmp_path: Path) -> None:
    """Through the written answer key: the arterial view's slices show the lesion, the
    venous view's slices that cut it stay unknown (SNR about 2 there)."""
    lesion = Finding("liver_lesion", {"size_mm": 30.0, "location": "right lobe"})
    spec = _small_ct(("axial",), ("arterial", "venous"), 3, lesion)
    write_study(spec, tmp_path)
    (region,) = finding_regions(tmp_path)
    assert len(region.snr_by_series) == 2
    columns = {}
    for view, geometry in load_study(tmp_path):
        targets = slice_targets(geometry, view.pixels.shape[0], NAMES, {"liver_lesion": 1}, [region])
        columns[view.view_key] = _column(targets.numpy(), "liver_lesion")
    arterial, venous = (
        next(c for key, c in columns.items() if phase in key) for phase in ("arterial", "venous")
    )
    assert "X" in arterial
    assert "X" not in venous and "?" in venous
    assert [c == "?" for c in venous] == [c != "." for c in arterial]  # the same slices cut it


def test_a_right_effusion_is_taught_on_the_right_sagittal_slices_that_cut_it(tmp_path: Path) -> None:
    """Through the written answer key: every sagittal slice marked as showing a right effusion
    is one the effusion changes, on the patient's right (LPS x < 0), and no slice marked clear
    of it changes."""
    effusion = Finding("pleural_effusion", {"side": "right", "size": "moderate"})
    spec = _small_ct(("sagittal",), ("venous",), 5, effusion)
    write_study(spec, tmp_path / "with")
    write_study(replace(spec, findings=()), tmp_path / "without")
    cuts = finding_cuts(tmp_path / "with")
    assert list(cuts) == ["pleural_effusion"]
    ((view, geometry),), ((plain, _),) = load_study(tmp_path / "with"), load_study(tmp_path / "without")
    targets = slice_targets(geometry, view.pixels.shape[0], NAMES, {"pleural_effusion": 1}, [], cuts).numpy()
    marked = targets[:, NAMES.index("pleural_effusion")]
    changed = np.abs(view.pixels - plain.pixels).reshape(view.pixels.shape[0], -1).max(axis=1) > 50
    positions = np.asarray(geometry.positions)
    assert (marked == 1).sum() >= 2 and (marked == 0).sum() >= 8
    assert changed[marked == 1].all() and not changed[marked == 0].any()
    assert geometry.normal[0] != 0 and (positions[marked == 1] * np.sign(geometry.normal[0]) < 0).all()


def test_a_unilateral_effusion_is_placed_where_its_fluid_lies(tmp_path: Path) -> None:
    """The answer key's centroid of a left effusion places it, within a token of an 8 x 8
    grid, at the middle of the pixels it changes on every slice taught to show it, in each
    plane; its slices still come from the cuts, not from a radius. A bilateral effusion has
    no one place, so nothing places it."""
    effusion = Finding("pleural_effusion", {"side": "left", "size": "large"})
    spec = _small_ct(("axial", "coronal", "sagittal"), ("venous",), 9, effusion)
    write_study(spec, tmp_path / "with")
    write_study(replace(spec, findings=()), tmp_path / "without")
    (region,) = finding_regions(tmp_path / "with")
    assert region.key == "pleural_effusion" and region.radius_mm is None
    cuts = finding_cuts(tmp_path / "with")
    column = NAMES.index("pleural_effusion")
    checked = 0
    for (view, geometry), (plain, _) in zip(
        load_study(tmp_path / "with"), load_study(tmp_path / "without"), strict=True
    ):
        labels = {"pleural_effusion": 1}
        targets = slice_targets(geometry, view.pixels.shape[0], NAMES, labels, [region], cuts)
        assert torch.equal(targets, slice_targets(geometry, view.pixels.shape[0], NAMES, labels, [], cuts))
        across, down = finding_places(geometry, NAMES, [region])[column].tolist()
        side = max(view.pixels.shape[1:])
        for k in (targets[:, column] == 1).nonzero().flatten().tolist():
            rows, columns = np.nonzero(np.abs(view.pixels[k] - plain.pixels[k]) > 50)
            assert abs((columns.mean() + 0.5) / side - across) < 1 / 8, (view.view_key, k)
            assert abs((rows.mean() + 0.5) / side - down) < 1 / 8, (view.view_key, k)
            checked += 1
    assert checked >= 6
    bilateral = replace(spec, findings=(Finding("pleural_effusion", {"side": "bilateral"}),))
    write_study(bilateral, tmp_path / "bilateral")
    assert finding_regions(tmp_path / "bilateral") == []
