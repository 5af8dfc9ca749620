"""Header inspection of received bytes: what is refused, with which status."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from node.index import RejectedInstance, inspect_encoded
from node.statuses import Status
from tests.support.dicom import ct_slice


def _encode(ds) -> bytes:  # type: ignore[no-untyped-def]
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _inspect(data: bytes, ds):  # type: ignore[no-untyped-def]
    return inspect_encoded(
        data,
        requested_sop_class=ds.SOPClassUID,
        requested_sop_instance=ds.SOPInstanceUID,
        transfer_syntax=ds.file_meta.TransferSyntaxUID,
    )


def test_good_instance_yields_the_indexed_facts() -> None:
    ds = ct_slice(study=generate_uid(), series=generate_uid(), index=3)
    info = _inspect(_encode(ds), ds)
    assert info.series_instance_uid == ds.SeriesInstanceUID
    assert info.instance_number == 4
    assert info.series["modality"] == "CT"
    assert [float(v) for v in info.series["image_orientation"].split("\\")] == [1, 0, 0, 0, 1, 0]
    assert info.own_output is False


def test_truncated_pixel_data_is_refused() -> None:
    ds = ct_slice(study=generate_uid(), series=generate_uid(), index=0)
    with pytest.raises(RejectedInstance, match="truncated") as caught:
        _inspect(_encode(ds)[:-100], ds)
    assert caught.value.status == Status.CANNOT_UNDERSTAND


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_encapsulated_pixel_data_complete_and_truncated(syntax: str) -> None:
    ds = ct_slice(study=generate_uid(), series=generate_uid(), index=0)
    ds.compress(syntax)
    data = _encode(ds)
    assert _inspect(data, ds).transfer_syntax_uid == syntax
    with pytest.raises(RejectedInstance) as caught:
        _inspect(data[:-50], ds)
    assert caught.value.status == Status.CANNOT_UNDERSTAND


def test_missing_pixel_data_and_mismatched_uids() -> None:
    ds = ct_slice(study=generate_uid(), series=generate_uid(), index=0)
    del ds.PixelData
    with pytest.raises(RejectedInstance) as caught:
        _inspect(_encode(ds), ds)
    assert caught.value.status == Status.MISSING_ATTRIBUTE
    other = ct_slice(study=generate_uid(), series=generate_uid(), index=1)
    with pytest.raises(RejectedInstance) as caught:
        inspect_encoded(
            _encode(other),
            requested_sop_class=other.SOPClassUID,
            requested_sop_instance=generate_uid(),
            transfer_syntax=other.file_meta.TransferSyntaxUID,
        )
    assert caught.value.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_garbage_is_cannot_understand(tmp_path: Path) -> None:
    with pytest.raises(RejectedInstance) as caught:
        inspect_encoded(
            b"\x00" * 128 + b"DICM" + b"\x02\x00\x10",
            requested_sop_class="1.2",
            requested_sop_instance="1.3",
            transfer_syntax="1.2.840.10008.1.2.1",
        )
    assert caught.value.status == Status.CANNOT_UNDERSTAND


def _as_pydicom_reads(ds) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The study and series facts as pydicom's converted values give them (the index's
    reference: it reads ASCII values from the raw bytes and must agree)."""
    from pydicom.multival import MultiValue

    def text(keyword: str, limit: int) -> str | None:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        joined = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
        return joined[:limit] or None

    def number(keyword: str, kind: type) -> object:
        value = ds.get(keyword)
        try:
            return None if value in (None, "") else kind(value)
        except (TypeError, ValueError):
            return None

    return {
        "patient_name": text("PatientName", 324),
        "study_description": text("StudyDescription", 64),
        "series_description": text("SeriesDescription", 64),
        "image_type": text("ImageType", 128),
        "image_orientation": text("ImageOrientationPatient", 128),
        "body_part": text("BodyPartExamined", 16),
        "contrast_agent": text("ContrastBolusAgent", 64),
        "series_time": text("SeriesTime", 16),
        "slice_thickness": number("SliceThickness", float),
        "echo_time": number("EchoTime", float),
        "series_number": number("SeriesNumber", int),
        "instance_number": number("InstanceNumber", int),
    }


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize(
    "charset,name",
    [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "山田^太郎=やまだ^たろう"), (None, "Doe^John ")],
)
def test_header_values_read_from_raw_bytes_agree_with_pydicom(
    syntax: str, charset: str | None, name: str
) -> None:
    """Padding, leading spaces, multiple values, empty and odd numbers, other character
    sets and every transfer syntax: the index stores what pydicom would have given it."""
    ds = ct_slice(study=generate_uid(), series=generate_uid(), index=0)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = " Chest  CT "  # leading spaces are kept, trailing padding is not
    ds.SeriesDescription = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL "]
    ds.ImageOrientationPatient = [" 1", "0.0", "0", "0", "1.000", "-0"]
    ds.BodyPartExamined = "CHEST"
    ds.SeriesTime = "101500.25"
    ds.SliceThickness = " 2.50"
    ds.EchoTime = "1e1"
    ds.SeriesNumber = " 7"
    ds.InstanceNumber = "12"
    ds.file_meta.TransferSyntaxUID = syntax
    data = _encode(ds)  # in the transfer syntax's encoding (pixel bytes left as they are)
    info = _inspect(data, ds)
    from pydicom import dcmread

    expected = _as_pydicom_reads(dcmread(BytesIO(data), stop_before_pixels=True))
    found = {**info.study, **info.series, "instance_number": info.instance_number}
    assert {key: found[key] for key in expected} == expected
    assert found["patient_name"] == name.rstrip()  # non-ASCII names are still decoded by pydicom
    assert found["slice_thickness"] == 2.5 and found["series_number"] == 7
