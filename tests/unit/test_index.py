"""Header inspection of received bytes: what is refused, with which status."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.filewriter import dcmwrite
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid

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
