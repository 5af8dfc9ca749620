"""The volume loader: pydicom's example files, compression, multi-frame, geometry checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from node.errors import VolumeError
from node.grouping import GroupingSettings, group_study
from node.headers import read_header
from node.manifest import View
from node.volume import (
    DuplicateSliceError,
    GantryTiltError,
    MixedGeometryError,
    SliceGapError,
    SliceReadError,
    UnsupportedPixelsError,
    Volume,
    VolumeSettings,
    VolumeTooLargeError,
    load_view,
)
from tests.unit.test_grouping_fixtures import (
    SAGITTAL,
    enhanced_mr,
    make_series,
    make_slice,
    manual_view,
    pixels_for,
    uid,
    write,
)

RAW_CT = VolumeSettings(ct_clip_hu=None)


def grouped_view(paths: list[Path], **settings: object) -> View:
    headers = [read_header(p) for p in paths]
    manifest = group_study(headers, GroupingSettings(min_slices=1, **settings))  # type: ignore[arg-type]
    assert manifest.views, manifest.excluded
    return manifest.views[0]


def expected_hu(count: int, rows: int = 64, cols: int = 64) -> np.ndarray:
    return np.stack([pixels_for(i, rows, cols) for i in range(count)]).astype(np.float32) - 1024


def assert_steps_linear(volume: Volume) -> None:
    """MR is rescaled linearly: slice i's first pixel still grows by a constant step."""
    column = volume.pixels[:, 0, 0].astype(np.float64)
    steps = np.diff(column)
    assert np.all(steps > 0) and np.allclose(steps, steps[0], rtol=1e-4)


# --------------------------------------------------------------- outside data


def test_pydicom_ct_small_loads_in_hounsfield_units() -> None:
    path = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    ds = pydicom.dcmread(path)
    volume = load_view(grouped_view([path]), settings=RAW_CT)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert volume.pixels.shape == (1, ds.Rows, ds.Columns)
    assert volume.pixels.dtype == np.float32
    np.testing.assert_array_equal(volume.pixels[0], expected.astype(np.float32))
    assert volume.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert volume.spacing == pytest.approx((float(ds.SliceThickness), *(float(v) for v in ds.PixelSpacing)))
    assert volume.normal == pytest.approx((0.0, 0.0, 1.0))
    assert volume.view_key == "CT:axial:venous"  # ContrastBolusAgent set, no start time


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
    ],
)
def test_pydicom_mr_small_variants_load_identically(name: str) -> None:
    reference_path = Path(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
    reference = load_view(grouped_view([reference_path]))
    ds = pydicom.dcmread(reference_path)
    assert reference.pixels.shape == (1, 64, 64)
    assert reference.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert reference.spacing[1:] == pytest.approx([float(v) for v in ds.PixelSpacing])
    assert reference.pixels.min() >= 0.0 and reference.pixels.max() <= 1.0
    variant = load_view(grouped_view([Path(get_testdata_file(name))]))  # type: ignore[arg-type]
    np.testing.assert_array_equal(variant.pixels, reference.pixels)
    assert variant.origin == reference.origin and variant.spacing == reference.spacing


# --------------------------------------------------------------- series, compression


@pytest.fixture
def ct_series(tmp_path: Path) -> list[Dataset]:
    return make_series(12, name="ct")


def test_series_loads_sorted_in_hu(tmp_path: Path, ct_series: list[Dataset]) -> None:
    paths = write(ct_series, tmp_path)
    shuffled = paths[::3] + paths[1::3] + paths[2::3]
    view = manual_view(shuffled)
    volume = load_view(view, settings=RAW_CT)
    np.testing.assert_array_equal(volume.pixels, expected_hu(12))
    assert volume.positions == pytest.approx([2.0 * i for i in range(12)])
    # each sorted slice knows which of the view's slices it is (a key image is traced back so)
    assert [view.slices[k].path for k in volume.sources] == [str(p) for p in paths]
    assert volume.spacing == (2.0, 0.8, 0.8)
    assert volume.warnings == ()


def test_relative_paths_resolve_against_root(tmp_path: Path, ct_series: list[Dataset]) -> None:
    paths = write(ct_series, tmp_path / "store")
    view = grouped_view(paths)
    relative = view.model_copy(
        update={
            "slices": [
                s.model_copy(update={"path": str(Path(s.path).relative_to(tmp_path))}) for s in view.slices
            ]
        }
    )
    volume = load_view(relative, root=tmp_path, settings=RAW_CT)
    np.testing.assert_array_equal(volume.pixels, expected_hu(12))
    with pytest.raises(SliceReadError, match="cannot read"):
        load_view(relative, root=tmp_path / "elsewhere")


LOSSLESS: list[tuple[str, dict[str, object]]] = [
    (RLELossless, {}),
    (JPEGLSLossless, {}),
    (JPEG2000Lossless, {}),
]


@pytest.mark.parametrize(("syntax", "options"), LOSSLESS, ids=["rle", "jpegls", "j2k"])
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_lossless_compressed_copies_load_identically(
    tmp_path: Path, ct_series: list[Dataset], syntax: str, options: dict, executor: str
) -> None:
    plain = load_view(manual_view(write(ct_series, tmp_path / "plain")), settings=RAW_CT)
    for ds in ct_series:
        ds.compress(syntax, **options)
    paths = write(ct_series, tmp_path / "packed")
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    settings = VolumeSettings(ct_clip_hu=None, executor=executor, decode_workers=2)  # type: ignore[arg-type]
    packed = load_view(manual_view(paths), settings=settings)
    np.testing.assert_array_equal(packed.pixels, plain.pixels)
    assert packed.positions == plain.positions


@pytest.mark.parametrize(
    ("syntax", "options", "max_error"),
    [(JPEGLSNearLossless, {"jls_error": 3}, 3.0), (JPEG2000, {"j2k_cr": [8]}, 4.0)],
    ids=["jpegls-near", "j2k-lossy"],
)
def test_lossy_compressed_copies_load_within_tolerance(
    tmp_path: Path, ct_series: list[Dataset], syntax: str, options: dict, max_error: float
) -> None:
    for ds in ct_series:
        ds.compress(syntax, **options)
    volume = load_view(manual_view(write(ct_series, tmp_path)), settings=RAW_CT)
    error = np.abs(volume.pixels - expected_hu(12))
    assert error.max() <= max_error
    assert 0 < error.mean() <= max_error  # lossy, but bounded


def test_worker_counts_give_identical_volumes(tmp_path: Path, ct_series: list[Dataset]) -> None:
    view = manual_view(write(ct_series, tmp_path))
    one = load_view(view, settings=VolumeSettings(decode_workers=1))
    two = load_view(view, settings=VolumeSettings(decode_workers=2, executor="thread"))
    np.testing.assert_array_equal(one.pixels, two.pixels)


# --------------------------------------------------------------- multi-frame


def test_enhanced_mr_multiframe_loads_chosen_frames(tmp_path: Path) -> None:
    paths = write([enhanced_mr(10, b_values=(0, 1000))], tmp_path)
    view = grouped_view(paths)
    assert view.b_value == 1000 and [s.frame for s in view.slices] == list(range(10, 20))
    volume = load_view(view, settings=VolumeSettings(mr_clip=False))
    assert volume.pixels.shape == (10, 64, 64)
    assert volume.positions == pytest.approx([2.0 * i for i in range(10)])
    assert volume.spacing == (2.0, 0.8, 0.8)
    assert_steps_linear(volume)
    assert volume.pixels.min() == pytest.approx(0.0, abs=0.02)


def test_enhanced_ct_applies_per_frame_rescale(tmp_path: Path) -> None:
    rescale = [(1.0, -1024.0) if i % 2 else (2.0, -2048.0) for i in range(10)]
    paths = write([enhanced_mr(10, modality="CT", rescale=rescale)], tmp_path)
    volume = load_view(grouped_view(paths), settings=RAW_CT)
    expected = np.stack([pixels_for(i) * s + b for i, (s, b) in enumerate(rescale)])
    np.testing.assert_array_equal(volume.pixels, expected.astype(np.float32))


# --------------------------------------------------------------- geometry checks


def test_duplicates_dropped_with_warning_or_error(tmp_path: Path, ct_series: list[Dataset]) -> None:
    again = make_slice(series_uid=ct_series[0].SeriesInstanceUID, index=4, sop_uid=uid("dup"))
    paths = write([*ct_series, again], tmp_path)
    view = manual_view(paths)
    volume = load_view(view, settings=RAW_CT)
    assert volume.pixels.shape[0] == 12
    np.testing.assert_array_equal(volume.pixels, expected_hu(12))
    assert any("duplicate" in w for w in volume.warnings)
    assert volume.sources == tuple(range(12))  # the first of the two at slice 4's place is kept
    with pytest.raises(DuplicateSliceError, match="on_duplicate"):
        load_view(manual_view(paths), settings=VolumeSettings(on_duplicate="error"))


def test_gap_is_an_error_or_a_warning(tmp_path: Path, ct_series: list[Dataset]) -> None:
    paths = write(ct_series[:5] + ct_series[7:], tmp_path)
    with pytest.raises(SliceGapError, match=r"about 2 slice\(s\) missing.*resend") as info:
        load_view(manual_view(paths))
    assert isinstance(info.value, VolumeError)
    volume = load_view(manual_view(paths), settings=VolumeSettings(on_gap="warn"))
    assert volume.pixels.shape[0] == 10 and volume.spacing[0] == 2.0
    assert any("gap" in w for w in volume.warnings)


def test_uneven_spacing_warns(tmp_path: Path) -> None:
    series = make_series(10, name="uneven")
    series[5].ImagePositionPatient = ["0", "0", "10.5"]
    volume = load_view(manual_view(write(series, tmp_path)))
    assert any("uneven" in w for w in volume.warnings)


def test_gantry_tilt_warns_or_fails(tmp_path: Path) -> None:
    step = math.tan(math.radians(20)) * 2.0
    series = [
        make_slice(series_uid=uid("tilt"), index=i, position=(0.0, i * step, i * 2.0)) for i in range(10)
    ]
    view = manual_view(write(series, tmp_path))
    volume = load_view(view)
    assert any("gantry tilt" in w and "20.0" in w for w in volume.warnings)
    assert volume.spacing[0] == pytest.approx(2.0)
    with pytest.raises(GantryTiltError, match="on_tilt"):
        load_view(view, settings=VolumeSettings(on_tilt="error"))


def test_mixed_orientation_and_matrix_fail(tmp_path: Path) -> None:
    series = make_series(6, name="mixed")
    series[3] = make_slice(series_uid=uid("mixed"), index=3, orientation=SAGITTAL, sop_uid=uid("sag"))
    with pytest.raises(MixedGeometryError, match="regroup"):
        load_view(manual_view(write(series, tmp_path / "a")))
    series = make_series(6, name="matrix")
    series[2] = make_slice(series_uid=uid("matrix"), index=2, rows=32, cols=32, sop_uid=uid("small"))
    with pytest.raises(UnsupportedPixelsError):
        load_view(manual_view(write(series, tmp_path / "b")))


def test_memory_limit(tmp_path: Path, ct_series: list[Dataset]) -> None:
    view = manual_view(write(ct_series, tmp_path))
    with pytest.raises(VolumeTooLargeError, match="max_slices_per_view"):
        load_view(view, settings=VolumeSettings(max_volume_bytes=1000))


def test_mr_normalised_and_ct_clipped(tmp_path: Path) -> None:
    mr = make_series(10, name="mr", modality="MR")
    volume = load_view(manual_view(write(mr, tmp_path / "mr"), modality="MR", key="MR:axial:t2"))
    assert volume.pixels.min() == 0.0 and volume.pixels.max() == 1.0
    hot = make_series(10, name="hot", pixels=np.full((64, 64), 9000, dtype=np.int16))
    clipped = load_view(manual_view(write(hot, tmp_path / "ct")))
    assert clipped.pixels.max() == 3071.0
