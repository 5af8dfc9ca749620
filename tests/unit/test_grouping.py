"""Grouping rules on small pydicom-built studies: planes, phases, MR classes, exclusions."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from node.errors import GroupingError
from node.grouping import (
    DEFAULT_WANTED_VIEWS,
    EmptyStudyError,
    GroupingSettings,
    MixedStudyError,
    group_study,
)
from node.manifest import ExclusionReason, Manifest
from node.stacks import classify_plane, stack_normal
from tests.unit.test_grouping_fixtures import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    SECONDARY_CAPTURE,
    contrast,
    enhanced_mr,
    headers_of,
    make_series,
    make_slice,
    mr_params,
    uid,
)

SETTINGS = GroupingSettings()


def group(*series: list, settings: GroupingSettings = SETTINGS) -> Manifest:
    datasets = [ds for s in series for ds in s]
    return group_study(headers_of(datasets), settings)


def keys(manifest: Manifest) -> list[str]:
    return [v.key for v in manifest.views]


def reasons(manifest: Manifest) -> dict[str, ExclusionReason]:
    return {e.series_instance_uid: e.reason_code for e in manifest.excluded}


def tilted(degrees: float) -> tuple[float, ...]:
    """Axial orientation rotated about the x axis by ``degrees``."""
    a = math.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a))


# ------------------------------------------------------------------ planes


@pytest.mark.parametrize(
    ("orientation", "plane"),
    [
        (AXIAL, "axial"),
        (CORONAL, "coronal"),
        (SAGITTAL, "sagittal"),
        ((0.0, 1.0, 0.0, 1.0, 0.0, 0.0), "axial"),
    ],  # flipped normal is still axial
)
def test_plane_from_orientation(orientation: tuple[float, ...], plane: str) -> None:
    manifest = group(make_series(10, orientation=orientation))
    assert [v.plane for v in manifest.views] == [plane]
    assert manifest.views[0].evidence["plane"].endswith(plane)


def test_plane_tolerance_and_oblique() -> None:
    normal = stack_normal(tilted(15))  # type: ignore[arg-type]
    assert normal is not None
    assert classify_plane(normal, 20.0)[0] == "axial"
    assert classify_plane(normal, 10.0)[0] == "oblique"
    manifest = group(make_series(10, orientation=tilted(35)))
    assert manifest.views == []
    assert manifest.excluded[0].reason_code is ExclusionReason.OBLIQUE
    assert "CT:oblique:" in manifest.excluded[0].reason
    loose = GroupingSettings(wanted_views=("CT:*:*",))
    assert keys(group(make_series(10, orientation=tilted(35)), settings=loose)) == ["CT:oblique:non_contrast"]


def test_slices_sorted_along_normal_and_subsampled() -> None:
    series = make_series(30, spacing=1.5)
    shuffled = series[::2] + series[1::2]
    manifest = group(shuffled, settings=GroupingSettings(max_slices_per_view=10))
    view = manifest.views[0]
    positions = [s.position for s in view.slices]
    assert positions == sorted(positions)
    assert view.slice_count == 10 and positions[0] == 0.0 and positions[-1] == pytest.approx(43.5)
    assert any("subsampled" in w for w in view.warnings)
    # feet-first sorting also when the rows are flipped (normal points the other way)
    flipped = make_series(10, orientation=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    view = group(flipped).views[0]
    assert [s.position for s in view.slices] == sorted(s.position for s in view.slices)


# ------------------------------------------------------------------ CT phases


def test_ct_phase_from_timing() -> None:
    start = contrast("120000")
    manifest = group(
        make_series(10, name="nc", series_number=1, acquisition_time="115800", extra=start),
        make_series(10, name="a", series_number=2, acquisition_time="120030", extra=start),
        make_series(10, name="v", series_number=3, acquisition_time="120110", extra=start),
        make_series(10, name="d", series_number=4, acquisition_time="120500", extra=start),
        # no tags at all, but acquired before the study's injection time
        make_series(10, name="nc2", series_number=5, acquisition_time="115000", orientation=CORONAL),
    )
    assert keys(manifest) == [
        "CT:axial:non_contrast",
        "CT:axial:arterial",
        "CT:axial:venous",
        "CT:axial:delayed",
        "CT:coronal:non_contrast",
    ]
    assert all(v.evidence["phase"].startswith("timing") for v in manifest.views)
    assert "30 s after" in manifest.views[1].evidence["phase"]


def test_ct_phase_timing_wins_over_description() -> None:
    manifest = group(make_series(10, acquisition_time="120110", description="ART", extra=contrast("120000")))
    assert keys(manifest) == ["CT:axial:venous"]


def test_ct_phase_timing_thresholds_configurable() -> None:
    series = make_series(10, acquisition_time="120050", extra=contrast("120000"))
    assert keys(group(series)) == ["CT:axial:venous"]
    late = GroupingSettings(arterial_max_delay_s=60, venous_max_delay_s=150)
    assert keys(group(series, settings=late)) == ["CT:axial:arterial"]
    with pytest.raises(ValidationError):
        GroupingSettings(arterial_max_delay_s=60, venous_max_delay_s=50)


def test_ct_phase_from_order_without_start_time() -> None:
    tags = contrast(start=None)
    manifest = group(
        make_series(10, name="nc", series_number=1, acquisition_time="115500"),
        make_series(10, name="a", series_number=2, acquisition_time="120030", extra=tags),
        # coronal reformat of the arterial acquisition: same AcquisitionTime
        make_series(
            10, name="ac", series_number=3, acquisition_time="120031", extra=tags, orientation=CORONAL
        ),
        make_series(10, name="v", series_number=4, acquisition_time="120130", extra=tags),
    )
    assert keys(manifest) == [
        "CT:axial:non_contrast",
        "CT:axial:arterial",
        "CT:axial:venous",
        "CT:coronal:arterial",
    ]
    evidence = {v.key: v.evidence["phase"] for v in manifest.views}
    assert evidence["CT:axial:venous"].startswith("order")
    assert "2 of 2" in evidence["CT:axial:venous"]
    assert evidence["CT:axial:non_contrast"].startswith("contrast tags: none")


def test_ct_single_post_contrast_without_timing_is_venous_with_warning() -> None:
    manifest = group(make_series(10, extra=contrast(start=None)))
    assert keys(manifest) == ["CT:axial:venous"]
    assert manifest.views[0].warnings


def test_ct_phase_from_description_only_as_last_resort() -> None:
    manifest = group(
        make_series(10, name="1", series_number=1, description="ABD W/O"),
        make_series(10, name="2", series_number=2, description="Arterial 1.0 B30f"),
        make_series(10, name="3", series_number=3, description="PV 1.0"),
        make_series(10, name="4", series_number=4, description="DELAY 5 min"),
        make_series(10, name="5", series_number=5, description="PARTIAL", orientation=CORONAL),
    )
    assert keys(manifest) == [
        "CT:axial:non_contrast",
        "CT:axial:arterial",
        "CT:axial:venous",
        "CT:axial:delayed",
        "CT:coronal:non_contrast",
    ]
    assert manifest.views[1].evidence["phase"].startswith("description (last resort")
    assert manifest.views[-1].evidence["phase"].startswith("assumed")  # PARTIAL is not ART
    # the same descriptions lose to contrast tags present in the study
    tagged = group(
        make_series(10, name="1", series_number=1, description="ARTERIAL"),
        make_series(10, name="2", series_number=2, description="W/O", extra=contrast(None)),
    )
    assert keys(tagged) == ["CT:axial:non_contrast", "CT:axial:venous"]


def test_ct_unknown_phase_when_not_assumed() -> None:
    settings = GroupingSettings(assume_non_contrast=False)
    manifest = group(make_series(10), settings=settings)
    assert manifest.views == []
    assert manifest.excluded[0].reason_code is ExclusionReason.UNWANTED_VIEW
    assert "CT:axial:unknown" in manifest.excluded[0].reason


# ------------------------------------------------------------------ MR classes


MR_CASES = [
    ("t1", mr_params(500, 10)),
    ("t1", mr_params(2000, 3, 900, ScanningSequence=["GR", "IR"], SequenceVariant=["MP"])),
    ("t2", mr_params(4000, 100)),
    ("flair", mr_params(9000, 120, 2500, ScanningSequence=["SE", "IR"])),
    ("other", mr_params(3000, 20)),  # proton density
    ("other", mr_params(4000, 60, 150)),  # STIR
    ("other", mr_params(150, 4.8, ScanningSequence="GR", MRAcquisitionType="2D")),  # in/opp
    ("t1", mr_params(4.5, 2, ScanningSequence="GR", MRAcquisitionType="3D")),  # VIBE
    ("t1_post", {**mr_params(500, 10), **contrast(None, agent="GADOBUTROL")}),
]


@pytest.mark.parametrize(("sequence", "tags"), MR_CASES)
def test_mr_sequence_from_parameters(sequence: str, tags: dict) -> None:
    wanted = GroupingSettings(wanted_views=("MR:*:*",))
    manifest = group(make_series(10, modality="MR", extra=tags, description="T2 FLAIR"), settings=wanted)
    assert [v.sequence for v in manifest.views] == [sequence]
    assert manifest.views[0].phase is None
    assert "description" not in manifest.views[0].evidence["sequence"]


def test_mr_dwi_b_values_split_and_adc_kept_when_derived_excluded() -> None:
    series_uid = uid("dwi")
    b0 = make_series(
        10,
        modality="MR",
        series_uid=series_uid,
        name="b0",
        extra={**mr_params(5000, 80), "DiffusionBValue": 0},
    )
    b1000 = [
        make_slice(
            series_uid=series_uid,
            index=i,
            modality="MR",
            sop_uid=uid("b1000", i),
            extra={**mr_params(5000, 80), "DiffusionBValue": 1000},
        )
        for i in range(10)
    ]
    adc = make_series(
        10, modality="MR", name="adc", series_number=9, image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")
    )
    reformat = make_series(
        10,
        modality="MR",
        name="mpr",
        series_number=10,
        image_type=("DERIVED", "SECONDARY", "MPR"),
        extra=mr_params(4000, 90),
    )
    manifest = group(b0 + b1000, adc, reformat, settings=GroupingSettings(exclude_derived=True))
    assert keys(manifest) == ["MR:axial:dwi", "MR:axial:adc"]
    assert manifest.views[0].b_value == 1000
    assert "b-value 1000" in manifest.views[0].evidence["stack"]
    dropped = [e for e in manifest.excluded if e.reason_code is ExclusionReason.DUPLICATE_VIEW]
    assert len(dropped) == 1 and "b0" in (dropped[0].stack_key or "")
    assert reasons(manifest)[reformat[0].SeriesInstanceUID] is ExclusionReason.DERIVED


def test_mr_description_only_without_parameters() -> None:
    manifest = group(
        make_series(10, modality="MR", name="1", series_number=1, description="AX FLAIR"),
        make_series(10, modality="MR", name="2", series_number=2, description="t1_mprage_post"),
        make_series(
            10, modality="MR", name="3", series_number=3, description="localiser?", orientation=CORONAL
        ),
        settings=GroupingSettings(wanted_views=("MR:*:*",)),
    )
    assert [v.sequence for v in manifest.views] == ["flair", "t1_post", "other"]
    assert manifest.views[0].evidence["sequence"].startswith("description (last resort")


def test_mr_t1_post_from_study_contrast_start() -> None:
    pre = make_series(
        10, modality="MR", name="pre", series_number=1, acquisition_time="100000", extra=mr_params(500, 10)
    )
    post = make_series(
        10, modality="MR", name="post", series_number=2, acquisition_time="101500", extra=mr_params(500, 10)
    )
    flagged = make_series(
        10,
        modality="MR",
        name="c",
        series_number=3,
        orientation=CORONAL,
        acquisition_time="101000",
        extra={**mr_params(500, 10), **contrast("100500")},
    )
    manifest = group(pre, post, flagged)
    assert keys(manifest) == ["MR:axial:t1", "MR:axial:t1_post", "MR:coronal:t1_post"]


def test_enhanced_mr_frames_split_by_b_value() -> None:
    ds = enhanced_mr(12, b_values=(0, 1000))
    manifest = group([ds], settings=GroupingSettings(preferred_b_value=0))
    assert keys(manifest) == ["MR:axial:dwi"]
    view = manifest.views[0]
    assert view.b_value == 0 and view.slice_count == 12
    assert [s.frame for s in view.slices] == list(range(12))
    assert manifest.excluded[0].reason_code is ExclusionReason.DUPLICATE_VIEW


# ------------------------------------------------------------------ exclusions


def test_exclusion_reasons() -> None:
    loc_type = make_series(3, name="loc1", series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    three_plane = [
        make_slice(
            series_uid=uid("loc3"),
            index=i,
            orientation=o,
            sop_uid=uid("loc3", i, n),
            position=(0.0, 0.0, float(i)),
        )
        for n, o in enumerate((AXIAL, CORONAL, SAGITTAL))
        for i in range(3)
    ]
    dose_sc = make_series(
        1, name="dose", sop_class=SECONDARY_CAPTURE, orientation=None, description="Dose Report"
    )
    dose_type = make_series(1, name="dose2", image_type=("DERIVED", "SECONDARY", "DOSE INFO"))
    screen = make_series(2, name="sc", image_type=("DERIVED", "SECONDARY", "SCREEN SHOT"))
    no_geometry = make_series(1, name="nogeo", orientation=None)
    pet = make_series(10, name="pet", modality="PT")
    short = make_series(5, name="short")
    missing_ipp = make_series(10, name="noipp")
    del missing_ipp[3].ImagePositionPatient
    skewed = make_series(10, name="skew", orientation=(1.0, 0.0, 0.0, 0.3, 1.0, 0.0))
    derived = make_series(
        10, name="mpr", image_type=("DERIVED", "SECONDARY", "MPR"), orientation=CORONAL, series_number=7
    )
    good = make_series(10, name="good", series_number=8)
    series = [
        loc_type,
        three_plane,
        dose_sc,
        dose_type,
        screen,
        no_geometry,
        pet,
        short,
        missing_ipp,
        skewed,
        derived,
        good,
    ]
    manifest = group(*series, settings=GroupingSettings(exclude_derived=True))
    got = reasons(manifest)
    expected = {
        "loc1": ExclusionReason.LOCALIZER,
        "loc3": ExclusionReason.LOCALIZER,
        "dose": ExclusionReason.DOSE_REPORT,
        "dose2": ExclusionReason.DOSE_REPORT,
        "sc": ExclusionReason.SCREEN_CAPTURE,
        "nogeo": ExclusionReason.SCREEN_CAPTURE,
        "pet": ExclusionReason.UNSUPPORTED_MODALITY,
        "short": ExclusionReason.TOO_FEW_SLICES,
        "noipp": ExclusionReason.BROKEN_GEOMETRY,
        "skew": ExclusionReason.BROKEN_GEOMETRY,
        "mpr": ExclusionReason.DERIVED,
    }
    by_name = {
        s[0].SeriesInstanceUID: name
        for name, s in zip(
            ["loc1", "loc3", "dose", "dose2", "sc", "nogeo", "pet", "short", "noipp", "skew", "mpr", "good"],
            series,
            strict=True,
        )
    }
    assert {by_name[u]: r for u, r in got.items()} == expected
    assert keys(manifest) == ["CT:axial:non_contrast"]
    assert all(e.reason for e in manifest.excluded)
    # derived images are views by default (CT reformats are often the only coronal)
    assert "CT:coronal:non_contrast" in keys(group(derived, good))


def test_duplicate_views_prefer_thin_slices_and_max_views() -> None:
    thick = make_series(10, name="thick", series_number=2, spacing=5.0, thickness=5.0)
    thin = make_series(30, name="thin", series_number=3, spacing=1.0, thickness=1.0)
    coronal = make_series(10, name="cor", series_number=4, orientation=CORONAL)
    manifest = group(thick, thin, coronal)
    assert manifest.views[0].series_instance_uid == thin[0].SeriesInstanceUID
    dropped = manifest.excluded[0]
    assert dropped.reason_code is ExclusionReason.DUPLICATE_VIEW
    assert "thinner slices (1 mm vs 5 mm)" in dropped.reason
    limited = group(thick, thin, coronal, settings=GroupingSettings(max_views=1))
    assert keys(limited) == ["CT:axial:non_contrast"]
    assert ExclusionReason.MAX_VIEWS in {e.reason_code for e in limited.excluded}


# ------------------------------------------------------------------ stacks


def test_two_orientations_in_one_series_become_two_stacks() -> None:
    series_uid = uid("two")
    slices = [
        make_slice(series_uid=series_uid, index=i, orientation=o, sop_uid=uid("two", n, i))
        for n, o in enumerate((AXIAL, SAGITTAL))
        for i in range(10)
    ]
    manifest = group(slices)
    assert keys(manifest) == ["CT:axial:non_contrast", "CT:sagittal:non_contrast"]
    assert {v.series_instance_uid for v in manifest.views} == {series_uid}
    assert len({v.stack_key for v in manifest.views}) == 2
    assert all("orientation" in v.evidence["stack"] for v in manifest.views)


@pytest.mark.parametrize("tagged", [True, False])
def test_repeated_positions_are_time_points(tagged: bool) -> None:
    series_uid = uid("dyn")
    slices = [
        make_slice(
            series_uid=series_uid,
            index=i,
            sop_uid=uid("dyn", t, i),
            extra={"AcquisitionNumber": t + 1} if tagged else None,
            acquisition_time="120000",
        )
        for t in range(2)
        for i in range(10)
    ]
    manifest = group(slices, settings=GroupingSettings(wanted_views=("CT:*:*",)))
    stacks = [v.stack_key for v in manifest.views] + [e.stack_key for e in manifest.excluded]
    assert len(stacks) == 2 and all(s and s.startswith(series_uid) for s in stacks)
    view = manifest.views[0]
    assert view.slice_count == 10
    assert ("acquisition number" if tagged else "repeat 1") in view.evidence["stack"]


def test_stray_duplicate_slice_dropped_with_warning() -> None:
    series = make_series(10, name="dup")
    extra = make_slice(series_uid=series[0].SeriesInstanceUID, index=4, sop_uid=uid("again"))
    manifest = group([*series, extra])
    view = manifest.views[0]
    assert view.slice_count == 10
    assert any("dropped" in w for w in view.warnings)


def test_every_series_is_accounted_for() -> None:
    study = [
        make_series(10, name=str(n), series_number=n, orientation=o)
        for n, o in enumerate((AXIAL, CORONAL, SAGITTAL, tilted(40)))
    ]
    study.append(make_series(2, name="short", series_number=9))
    manifest = group(*study)
    seen = {v.series_instance_uid for v in manifest.views} | {
        e.series_instance_uid for e in manifest.excluded
    }
    assert seen == {s[0].SeriesInstanceUID for s in study}


# ------------------------------------------------------------------ manifest & errors


def test_manifest_json_round_trip_and_strictness() -> None:
    manifest = group(
        make_series(10, name="a", extra=contrast("120000"), acquisition_time="120020"),
        make_series(3, name="b"),
    )
    text = manifest.to_json()
    again = Manifest.from_json(text)
    assert again == manifest
    assert again.fingerprint() == manifest.fingerprint()
    assert again.input_series() == (manifest.views[0].series_instance_uid,)
    with pytest.raises(ValidationError):
        Manifest.from_json(text.replace('"views"', '"views_typo"', 1))
    with pytest.raises(ValidationError):
        manifest.views[0].key = "MR:axial:t1"  # type: ignore[misc]


def test_grouping_is_deterministic() -> None:
    series = [make_series(10, name=str(i), series_number=i) for i in range(3)]
    first = group(*series)
    second = group(*reversed(series))
    assert first.to_json() == second.to_json()


def test_study_level_errors() -> None:
    with pytest.raises(EmptyStudyError):
        group_study([], SETTINGS)
    other = make_series(10, name="x", study_uid=uid("another study"))
    with pytest.raises(MixedStudyError) as info:
        group(make_series(10), other)
    assert isinstance(info.value, GroupingError)


def test_settings_are_strict_and_documented_defaults() -> None:
    with pytest.raises(ValidationError):
        GroupingSettings(max_view=3)  # type: ignore[call-arg]
    assert SETTINGS.wanted_views == DEFAULT_WANTED_VIEWS
    assert SETTINGS.min_slices == 8 and SETTINGS.plane_tolerance_deg == 20.0
    assert GroupingSettings.model_validate(SETTINGS.model_dump()) == SETTINGS
