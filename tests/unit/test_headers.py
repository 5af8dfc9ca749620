"""InstanceHeader: what is read from one file, and how bad files fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from node.errors import GroupingError
from node.headers import (
    InstanceHeader,
    UnreadableInstanceError,
    header_from_dataset,
    parse_time,
    read_header,
)
from tests.unit.test_grouping_fixtures import contrast, enhanced_mr, make_slice, mr_params, uid, write


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("120000", 43200.0),
        ("120030.5", 43230.5),
        ("1200", 43200.0),
        ("12:00:30", 43230.0),
        ("", None),
        ("25", None),
        ("ab", None),
        (None, None),
    ],
)
def test_parse_time(text: str | None, seconds: float | None) -> None:
    assert parse_time(text) == seconds


def test_ct_small_header() -> None:
    header = read_header(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    assert isinstance(header, InstanceHeader)
    assert header.modality == "CT" and (header.rows, header.columns) == (128, 128)
    assert header.image_orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert header.image_position == pytest.approx((-158.135803, -179.035797, -75.699997))
    assert header.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert header.rescale_slope == 1.0 and header.rescale_intercept == -1024.0
    assert header.contrast_agent == "ISOVUE300/100" and header.has_contrast_tags
    assert header.acquisition_time == 11 * 3600 + 29 * 60 + 36
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert header.frames == () and header.number_of_frames == 1


def test_mr_small_header() -> None:
    header = read_header(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
    assert header.modality == "MR"
    assert header.echo_time is not None and header.repetition_time is not None
    assert header.scanning_sequence  # e.g. ("SE",)


def test_unreadable_files_raise_a_grouping_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(UnreadableInstanceError, match="junk.dcm"):
        read_header(junk)
    with pytest.raises(UnreadableInstanceError):
        read_header(tmp_path / "missing.dcm")
    ds = make_slice(series_uid=uid("x"), index=0)
    del ds.SOPInstanceUID
    with pytest.raises(GroupingError, match="SOPInstanceUID"):
        header_from_dataset(ds, "mem")


def test_malformed_values_become_none() -> None:
    ds = make_slice(series_uid=uid("bad"), index=0)
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1"]  # five values
    ds.SeriesNumber = None
    header = header_from_dataset(ds, "mem")
    assert header.image_orientation is None and header.series_number is None


def test_mr_and_contrast_fields(tmp_path: Path) -> None:
    ds = make_slice(
        series_uid=uid("mr"),
        index=0,
        modality="MR",
        extra={
            **mr_params(9000, 90, 2500),
            **contrast("101500"),
            "ContrastBolusVolume": "15",
            "DiffusionBValue": 800,
        },
    )
    header = read_header(write([ds], tmp_path)[0])
    assert (header.repetition_time, header.echo_time, header.inversion_time) == (9000, 90, 2500)
    assert header.contrast_start_time == 10 * 3600 + 15 * 60 and header.contrast_volume == 15
    assert header.b_value == 800


def test_siemens_private_b_value() -> None:
    ds = make_slice(series_uid=uid("siemens"), index=0, modality="MR")
    block = ds.private_block(0x0019, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x0C, "IS", 1000)
    assert header_from_dataset(ds, "mem").b_value == 1000
    other = make_slice(series_uid=uid("other"), index=0, modality="MR")
    other.private_block(0x0019, "SOMEONE ELSE", create=True).add_new(0x0C, "IS", 5)
    assert header_from_dataset(other, "mem").b_value is None


def test_enhanced_multiframe_geometry() -> None:
    ds: Dataset = enhanced_mr(4, b_values=(0, 1000))
    header = header_from_dataset(ds, "mem")
    assert header.number_of_frames == 8 and len(header.frames) == 8
    assert [f.b_value for f in header.frames] == [0, 0, 0, 0, 1000, 1000, 1000, 1000]
    assert [f.position for f in header.frames[:4]] == [(0, 0, 2.0 * i) for i in range(4)]
    assert all(f.orientation == (1, 0, 0, 0, 1, 0) for f in header.frames)
    assert header.frames[0].pixel_spacing == (0.8, 0.8)
    assert header.image_orientation == (1, 0, 0, 0, 1, 0)  # taken from the frames
