"""The phantom generator: valid DICOM, consistent geometry, truthful pixels and answer key."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from models.phantom import (
    FINDINGS,
    Finding,
    GeneratedStudy,
    PhantomSpec,
    PhantomSpecError,
    StudyTruth,
    findings_for,
    generate_study,
    write_dataset,
    write_study,
)
from models.phantom.anatomy import build_ct, build_mr
from models.phantom.cli import main, parse_finding
from models.phantom.report import ct_report, mr_report
from models.phantom.study import patient_offset

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


# -- helpers ------------------------------------------------------------------------------
def _vec(values: Sequence[object]) -> np.ndarray:
    return np.array([float(v) for v in values])  # type: ignore[arg-type]


def _value(datasets: Sequence[Dataset], point: Sequence[float], radius: int = 0) -> float:
    """Median rescaled pixel value around an LPS point, from the slice nearest to it."""
    p = np.asarray(point, float)

    def distance(ds: Dataset) -> float:
        iop = _vec(ds.ImageOrientationPatient)
        return abs(float((p - _vec(ds.ImagePositionPatient)) @ np.cross(iop[:3], iop[3:])))

    ds = min(datasets, key=distance)
    ipp, iop, ps = _vec(ds.ImagePositionPatient), _vec(ds.ImageOrientationPatient), _vec(ds.PixelSpacing)
    i = int(round(float((p - ipp) @ iop[:3]) / ps[1]))
    j = int(round(float((p - ipp) @ iop[3:]) / ps[0]))
    pixels = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    return float(np.median(pixels[j - radius : j + radius + 1, i - radius : i + radius + 1]))


def _series(study: GeneratedStudy, **match: object):
    for s in study.series:
        if all(getattr(s.truth, k) == v for k, v in match.items()):
            return s
    raise AssertionError(f"no series with {match}")


def _finding_center(truth: StudyTruth, key: str) -> list[float]:
    return next(f.attributes["center_lps_mm"] for f in truth.findings if f.key == key)


def pydicom_files(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*.dcm"))]


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_study() -> GeneratedStudy:
    return generate_study(
        PhantomSpec(
            findings=(
                Finding("lung_nodule", {"size_mm": 12, "lobe": "right upper lobe"}),
                Finding("liver_lesion", {"size_mm": 25}),
                Finding("pleural_effusion", {"side": "left"}),
            ),
            seed=7,
            matrix=64,
            slices=24,
            include_mip=True,
        )
    )


@pytest.fixture(scope="module")
def ct_dir(ct_study: GeneratedStudy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct")
    write_study(ct_study, out)
    return out


@pytest.fixture(scope="module")
def mr_study() -> GeneratedStudy:
    return generate_study(
        PhantomSpec(
            modality="MR",
            planes=("axial", "sagittal"),
            sequences=("t1", "t2", "flair", "dwi", "adc", "t1_post"),
            findings=(Finding("rectal_lesion", {"size_mm": 30, "wall": "posterior"}),),
            seed=11,
            matrix=64,
            slices=16,
            blank_description_series=2,
        )
    )


# -- vocabulary and spec ------------------------------------------------------------------
def test_findings_vocabulary_is_canonical() -> None:
    keys = [f.key for f in FINDINGS]
    assert keys == [
        "lung_nodule",
        "pleural_effusion",
        "cardiomegaly",
        "liver_lesion",
        "lymphadenopathy",
        "rectal_lesion",
    ]
    codes = {f.key: f.code for f in FINDINGS}
    assert codes["pleural_effusion"].value == "60046008"
    assert codes["cardiomegaly"].value == "8186001"
    assert codes["lymphadenopathy"].value == "30746006"
    assert all(f.code.scheme == "SCT" and f.code.meaning for f in FINDINGS)
    assert [f.key for f in findings_for("MR")] == ["lymphadenopathy", "rectal_lesion"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"planes": ("axial", "transverse")},
        {"phases": ("portal",)},
        {"modality": "US"},
        {"findings": (Finding("rectal_lesion"),)},  # MR finding in a CT spec
        {"findings": (Finding("lung_nodule", {"size_mm": 300}),)},
        {"findings": (Finding("lung_nodule", {"lobe": "lingula"}),)},
        {"findings": ("cardiomegaly", "cardiomegaly")},
        {"matrix": 4},
        {"position_jitter_mm": -1.0},
        {"position_jitter_mm": 41.0},
    ],
)
def test_bad_spec_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(PhantomSpecError):
        PhantomSpec(**kwargs)  # type: ignore[arg-type]


def test_unknown_finding_key_is_refused() -> None:
    with pytest.raises(PhantomSpecError):
        Finding("fracture")


# -- files and answer key -----------------------------------------------------------------
def test_written_files_are_valid_dicom_listed_in_truth(ct_dir: Path) -> None:
    truth = StudyTruth.from_json((ct_dir / "truth.json").read_text())
    folders = {p.parent.name for p in ct_dir.glob("*/*.dcm")}
    assert folders == {s.folder for s in truth.series}
    for s in truth.series:
        files = sorted((ct_dir / s.folder).glob("*.dcm"))
        assert len(files) == s.n_instances
        for path in files[:: max(1, len(files) // 3)]:
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPClassUID == s.sop_class_uid
            assert ds.SeriesInstanceUID == s.series_instance_uid
            assert ds.StudyInstanceUID == truth.study_instance_uid
            assert ds.PatientName == "PHANTOM^CT0007"
            assert ds.pixel_array.shape == (s.rows, s.columns)
            assert (ds.get("SeriesDescription") or None) == s.series_description
    sop_uids = [str(ds.SOPInstanceUID) for ds in pydicom_files(ct_dir)]
    assert len(sop_uids) == len(set(sop_uids)) == sum(s.n_instances for s in truth.series)
    report = (ct_dir / "report.txt").read_text()
    assert report.startswith("FINDINGS:") and "IMPRESSION:" in report


def test_truth_roles_labels_and_round_trip(ct_study: GeneratedStudy) -> None:
    truth = ct_study.truth
    assert StudyTruth.from_json(truth.to_json()) == truth
    assert truth.labels == {
        "lung_nodule": 1,
        "pleural_effusion": 1,
        "cardiomegaly": 0,
        "liver_lesion": 1,
        "lymphadenopathy": 0,
    }
    assert {(s.phase, s.plane) for s in truth.views} == {
        (ph, pl)
        for ph in ("non_contrast", "arterial", "venous", "delayed")
        for pl in ("axial", "coronal", "sagittal")
    }
    reasons = sorted(str(s.exclusion_reason) for s in truth.excluded)
    assert reasons == ["derived", "localizer", "oblique", "screen_capture"]
    assert sum(s.series_description is None for s in truth.views) == 1


def test_ct_geometry_tags_are_consistent(ct_study: GeneratedStudy) -> None:
    for series in ct_study.series:
        if series.truth.plane is None:
            continue
        iops = {tuple(float(v) for v in ds.ImageOrientationPatient) for ds in series.datasets}
        assert len(iops) == 1
        iop = np.array(iops.pop())
        row, col = iop[:3], iop[3:]
        assert np.linalg.norm(row) == pytest.approx(1) and np.linalg.norm(col) == pytest.approx(1)
        assert float(row @ col) == pytest.approx(0, abs=1e-9)
        normal = np.cross(row, col)
        positions = np.array([_vec(ds.ImagePositionPatient) for ds in series.datasets])
        steps = np.diff(positions, axis=0)
        along = steps @ normal
        assert series.truth.slice_spacing_mm is not None
        assert np.allclose(np.abs(along), series.truth.slice_spacing_mm, atol=1e-3)
        assert np.all(np.sign(along) == np.sign(along[0]))
        assert np.allclose(steps - np.outer(along, normal), 0, atol=1e-3)
        assert [int(ds.InstanceNumber) for ds in series.datasets] == list(range(1, len(series.datasets) + 1))


def test_ct_hu_per_phase_and_orientation(ct_study: GeneratedStudy) -> None:
    landmarks = ct_study.truth.landmarks
    aorta = {
        ph: _value(_series(ct_study, phase=ph, plane="axial").datasets, landmarks["aorta"], 1)
        for ph in ("non_contrast", "arterial", "venous", "delayed")
    }
    assert 20 < aorta["non_contrast"] < 60
    assert 250 < aorta["arterial"] < 350
    assert 120 < aorta["venous"] < 180
    assert 80 < aorta["delayed"] < 120
    venous = _series(ct_study, phase="venous", plane="coronal").datasets
    assert 95 < _value(venous, landmarks["liver"], 1) < 125
    arterial = _series(ct_study, phase="arterial", plane="axial").datasets
    spleen = landmarks["spleen"]
    assert 100 < _value(arterial, spleen, 1) < 150  # the spleen is on the patient's left (+x)
    assert _value(arterial, [-spleen[0], *spleen[1:]], 1) < 95
    assert _value(arterial, landmarks["right_lung"], 1) < -700


def test_findings_change_pixels_where_planted(ct_study: GeneratedStudy) -> None:
    truth = ct_study.truth
    lesion, liver = _finding_center(truth, "liver_lesion"), truth.landmarks["liver"]
    art = _series(ct_study, phase="arterial", plane="axial").datasets
    ven = _series(ct_study, phase="venous", plane="axial").datasets
    assert _value(art, lesion, 1) - _value(art, liver, 1) > 30  # arterial hyperenhancement
    assert _value(ven, lesion, 1) - _value(ven, liver, 1) < 10  # iso / washout later
    nodule = _finding_center(truth, "lung_nodule")
    for plane in ("axial", "coronal", "sagittal"):
        datasets = _series(ct_study, phase="venous", plane=plane).datasets
        assert _value(datasets, nodule) > _value(datasets, truth.landmarks["right_lung"]) + 150
    effusion = _finding_center(truth, "pleural_effusion")  # the left effusion's centroid
    assert effusion[0] > 40  # patient's left (LPS +x), in the lung's dependent part
    for plane in ("axial", "coronal", "sagittal"):
        datasets = _series(ct_study, phase="venous", plane=plane).datasets
        assert -30 < _value(datasets, effusion) < 60  # fluid, where the lung would be air
    normal = generate_study(
        PhantomSpec(
            seed=7,
            matrix=64,
            slices=24,
            phases=("venous",),
            planes=("axial",),
            include_localizer=False,
            include_dose_report=False,
            include_oblique=False,
            noise=0.0,
        )
    )
    assert _value(normal.series[0].datasets, nodule) < -700
    assert _value(normal.series[0].datasets, truth.landmarks["liver"], 1) == 110.0  # exact without noise
    assert normal.truth.labels == dict.fromkeys(normal.truth.labels, 0)


def test_position_jitter_moves_the_patient_with_its_findings(ct_study: GeneratedStudy) -> None:
    """Landmarks and findings move by one offset; the pixels follow them; no jitter, no move."""
    assert patient_offset(ct_study.spec) == (0.0, 0.0, 0.0)
    moved = generate_study(replace(ct_study.spec, position_jitter_mm=30.0, include_mip=False))
    offset = np.asarray(patient_offset(moved.spec))
    assert 0 < np.abs(offset).max() <= 30.0
    assert np.linalg.norm(offset) > 10.0  # this seed's draw: far enough to move a few pixels
    before, after = ct_study.truth, moved.truth
    for name, point in before.landmarks.items():
        np.testing.assert_allclose(after.landmarks[name], np.asarray(point) + offset, atol=0.06)
    for key in ("lung_nodule", "liver_lesion"):
        start = np.asarray(_finding_center(before, key))
        np.testing.assert_allclose(_finding_center(after, key), start + offset, atol=0.06)
    nodule = _finding_center(after, "lung_nodule")
    axial = _series(moved, phase="venous", plane="axial").datasets
    assert _value(axial, nodule) > _value(axial, after.landmarks["right_lung"]) + 150
    assert _value(axial, after.landmarks["liver"], 1) > 60  # venous liver where the moved liver is
    unmoved = _series(ct_study, phase="venous", plane="axial").datasets
    assert _value(unmoved, nodule) < _value(unmoved, _finding_center(before, "lung_nodule")) - 150


@pytest.mark.parametrize(
    ("build", "keys"),
    [
        (build_ct, ("lung_nodule", "pleural_effusion", "cardiomegaly", "liver_lesion", "lymphadenopathy")),
        (build_mr, ("rectal_lesion", "lymphadenopathy")),
    ],
)
def test_moving_the_patient_moves_every_solid_and_resizes_none(build: object, keys: tuple[str, ...]) -> None:
    """Off the isocentre the same patient is built: each solid's centre and clip planes move by
    the offset, its size does not. An ellipsoid once took the offset into its semi-axes too, so
    a patient 10 mm off had lungs, liver and heart up to 10 mm larger or smaller."""
    assert callable(build)
    offset = np.array([9.0, -7.0, 4.0])
    findings = [Finding(key, {}) for key in keys]
    still = build(findings, np.random.default_rng(3))
    moved = build(findings, np.random.default_rng(3), tuple(offset))
    assert len(still.shapes) == len(moved.shapes) > 20
    for a, b in zip(still.shapes, moved.shapes, strict=True):
        assert (a.kind, a.tissue) == (b.kind, b.tissue)
        np.testing.assert_allclose(b.axes, a.axes, atol=1e-9)
        np.testing.assert_allclose(b.semi, a.semi, atol=1e-9)
        np.testing.assert_allclose(b.center, np.asarray(a.center) + offset, atol=1e-9)
        for (normal, d), (normal_b, d_b) in zip(a.clips, b.clips, strict=True):
            np.testing.assert_allclose(normal_b, normal, atol=1e-9)
            assert d_b == pytest.approx(d + float(np.dot(normal, offset)))


def test_contrast_tags_and_timing(ct_study: GeneratedStudy) -> None:
    def seconds(tm: str) -> float:
        return int(tm[:2]) * 3600 + int(tm[2:4]) * 60 + float(tm[4:])

    assert "ContrastBolusAgent" not in _series(ct_study, phase="non_contrast").datasets[0]
    windows = {"arterial": (25, 35), "venous": (60, 80), "delayed": (180, 400)}
    for phase, (low, high) in windows.items():
        ds = _series(ct_study, phase=phase, plane="axial").datasets[0]
        assert ds.ContrastBolusAgent and ds.ContrastBolusRoute == "IV"
        delay = seconds(ds.AcquisitionTime) - seconds(ds.ContrastBolusStartTime)
        assert low <= delay <= high, (phase, delay)
        assert ds.RescaleIntercept == -1024 and ds.BitsAllocated == 16


def test_mess_series(ct_study: GeneratedStudy, mr_study: GeneratedStudy) -> None:
    topogram = _series(ct_study, exclusion_reason="localizer").datasets
    assert all("LOCALIZER" in ds.ImageType for ds in topogram)
    assert len({tuple(ds.ImageOrientationPatient) for ds in topogram}) == 2
    scout = _series(mr_study, exclusion_reason="localizer").datasets
    assert len({tuple(ds.ImageOrientationPatient) for ds in scout}) == 3
    dose = _series(ct_study, exclusion_reason="screen_capture").datasets[0]
    assert dose.SOPClassUID == SC_STORAGE and list(dose.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert "FrameOfReferenceUID" not in dose and "ImagePositionPatient" not in dose
    assert dose.pixel_array.max() > 200 and np.median(dose.pixel_array) < 50
    for study in (ct_study, mr_study):
        oblique = _series(study, exclusion_reason="oblique").datasets[0]
        assert list(oblique.ImageType) == ["DERIVED", "SECONDARY", "REFORMATTED"]
        iop = _vec(oblique.ImageOrientationPatient)
        tilt = math.degrees(math.acos(abs(float(np.cross(iop[:3], iop[3:])[2]))))
        assert tilt == pytest.approx(30.0, abs=0.01)
    assert list(_series(ct_study, exclusion_reason="derived").datasets[0].ImageType)[:2] == [
        "DERIVED",
        "SECONDARY",
    ]
    blank = [s for s in mr_study.series if s.truth.series_description is None]
    assert len(blank) == 2
    assert all(not ds.get("SeriesDescription") for s in blank for ds in s.datasets)


def test_strip_descriptions_removes_every_description() -> None:
    study = generate_study(
        PhantomSpec(
            modality="MR", planes=("axial",), sequences=("t2",), matrix=32, slices=4, strip_descriptions=True
        )
    )
    assert all("SeriesDescription" not in ds for ds in study.datasets)
    assert all(s.series_description is None for s in study.truth.series)


def test_mr_sequences_and_rectal_lesion(mr_study: GeneratedStudy) -> None:
    truth = mr_study.truth
    lesion, bladder = _finding_center(truth, "rectal_lesion"), truth.landmarks["bladder"]
    dwi = _series(mr_study, sequence="dwi", plane="axial")
    assert dwi.truth.b_values == (0, 800) and dwi.truth.n_stacks == 2
    by_b = {b: [ds for ds in dwi.datasets if float(ds.DiffusionBValue) == b] for b in (0, 800)}
    assert len(by_b[0]) == len(by_b[800]) == 16
    assert [ds.ImagePositionPatient for ds in by_b[0]] == [ds.ImagePositionPatient for ds in by_b[800]]
    assert _value(by_b[0], bladder, 1) > _value(by_b[0], lesion)  # T2 shine-through at b0
    assert _value(by_b[800], lesion) > 2 * _value(by_b[800], bladder, 1)  # restricted
    adc = _series(mr_study, sequence="adc", plane="axial").datasets
    assert "ADC" in adc[0].ImageType
    assert _value(adc, lesion) < 1000 < 2500 < _value(adc, bladder, 1)
    t2 = _series(mr_study, sequence="t2", plane="sagittal").datasets
    assert _value(t2, lesion) < 0.5 * _value(t2, bladder, 1)  # intermediate, not fluid
    post = _series(mr_study, sequence="t1_post", plane="axial").datasets
    pre = _series(mr_study, sequence="t1", plane="axial").datasets
    assert post[0].ContrastBolusAgent and "ContrastBolusAgent" not in pre[0]
    assert _value(post, lesion) > 1.5 * _value(pre, lesion)
    flair = _series(mr_study, sequence="flair", plane="axial").datasets[0]
    assert float(flair.InversionTime) > 0 and "IR" in flair.ScanningSequence
    assert all(ds.SOPClassUID == MR_STORAGE for s in mr_study.series if s.truth.is_view for ds in s.datasets)


def test_enhanced_mr_multiframe(tmp_path: Path) -> None:
    spec = PhantomSpec(
        modality="MR",
        planes=("axial",),
        sequences=("t2", "dwi"),
        matrix=32,
        slices=6,
        enhanced_mr=True,
        include_localizer=False,
        include_oblique=False,
        include_dose_report=False,
    )
    truth = write_study(spec, tmp_path)
    dwi_truth = next(s for s in truth.series if s.sequence == "dwi")
    (path,) = (tmp_path / dwi_truth.folder).glob("*.dcm")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == ENHANCED_MR_STORAGE and int(ds.NumberOfFrames) == 12
    assert ds.pixel_array.shape == (12, 32, 32)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert len(shared.PixelMeasuresSequence[0].PixelSpacing) == 2
    frames = ds.PerFrameFunctionalGroupsSequence
    b_values = [float(f.MRDiffusionSequence[0].DiffusionBValue) for f in frames]
    assert b_values == [0.0] * 6 + [800.0] * 6
    positions = [tuple(f.PlanePositionSequence[0].ImagePositionPatient) for f in frames]
    assert positions[:6] == positions[6:] and len(set(positions)) == 6


# -- determinism --------------------------------------------------------------------------
def test_same_seed_same_uids_and_bytes(tmp_path: Path) -> None:
    spec = PhantomSpec(
        seed=3,
        matrix=32,
        slices=6,
        planes=("axial", "sagittal"),
        phases=("arterial", "venous"),
        findings=(Finding("lymphadenopathy"),),
    )
    streamed = write_study(spec, tmp_path / "a")
    in_memory = write_study(generate_study(spec), tmp_path / "b")
    assert streamed == in_memory
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert files_a == files_b
    for rel in files_a:
        if (tmp_path / "a" / rel).is_file():
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    other = generate_study(PhantomSpec(seed=4, matrix=32, slices=6, planes=("axial",), phases=("arterial",)))
    assert other.truth.study_instance_uid != streamed.study_instance_uid
    again = generate_study(PhantomSpec(seed=4, matrix=32, slices=6, planes=("axial",), phases=("arterial",)))
    assert [_bytes(ds) for ds in again.datasets] == [_bytes(ds) for ds in other.datasets]


# -- reports, dataset, CLI ----------------------------------------------------------------
def test_reports_render_attributes_and_normals() -> None:
    phases = ("arterial", "venous")
    nodule = Finding("lung_nodule", {"size_mm": 8.0, "lobe": "left lower lobe"})
    text, impression = ct_report([nodule], phases, np.random.default_rng(0))
    assert "8 mm" in text and "left lower lobe" in text and "left lower lobe" in impression
    assert "a 8 mm" not in text.lower()
    normal = {ct_report([], phases, np.random.default_rng(s)) for s in range(12)}
    assert len(normal) > 3  # phrasing varies with the seed
    for findings, _ in normal:
        assert "pleural" in findings and "heart" in findings.lower() or "cardiomegaly" in findings
    rectal = Finding("rectal_lesion", {"size_mm": 30.0, "wall": "posterior", "distance_cm": 4.0})
    text, impression = mr_report([rectal], ("t2", "dwi"), "F", np.random.default_rng(1))
    assert "low rectum" in text or "low rectal" in text
    assert "restricted diffusion" in text and "rectal" in impression


def test_write_dataset_index(tmp_path: Path) -> None:
    truths = write_dataset(
        tmp_path,
        n_studies=2,
        seed=1,
        matrix=32,
        slices=4,
        planes=("axial",),
        phases=("venous",),
        sequences=("t2",),
        position_jitter_mm=12.0,
    )
    assert all(truth.spec["position_jitter_mm"] == 12.0 for truth in truths)
    lines = (tmp_path / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line, truth in zip(lines, truths, strict=True):
        row = json.loads(line)
        assert set(row) == {"study", "report", "labels"}
        assert (tmp_path / row["study"] / "truth.json").is_file()
        assert row["labels"] == truth.labels
        assert set(row["labels"]) == {f.key for f in findings_for(truth.modality)}
        assert row["report"].startswith("FINDINGS:")
    assert [t.modality for t in truths] == ["CT", "MR"]


def test_cli_writes_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mr"
    status = main(
        [
            str(out),
            "--modality",
            "MR",
            "--planes",
            "axial",
            "--sequences",
            "t2",
            "dwi",
            "--matrix",
            "32",
            "--slices",
            "4",
            "--findings",
            "rectal_lesion:size_mm=25,wall=left",
            "--seed",
            "2",
            "--position-jitter",
            "15",
        ]
    )
    assert status == 0
    truth = StudyTruth.from_json((out / "truth.json").read_text())
    assert truth.labels["rectal_lesion"] == 1 and truth.patient_id == "PHANTOM-MR0002"
    assert truth.spec["position_jitter_mm"] == 15.0
    assert "wrote" in capsys.readouterr().out
    assert main([str(tmp_path / "bad"), "--findings", "fracture"]) == 2
    assert "error" in capsys.readouterr().err


def test_parse_finding_text() -> None:
    f = parse_finding("lung_nodule:size_mm=6,lobe=right_middle_lobe")
    assert f == Finding("lung_nodule", {"size_mm": 6.0, "lobe": "right middle lobe"})
