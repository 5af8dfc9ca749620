"""`node.filemeta`: the Part 10 header we write matches pydicom's encoding of the same elements."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from node.filemeta import PREAMBLE, file_meta


def _pydicom_header(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return PREAMBLE + buffer.getvalue()


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1"),  # odd lengths: padded
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.56", "1.2.840.10008.1.2"),  # even
        ("1.2.840.10008.5.1.4.1.1.2.1", "2.25.1234567890123456789", "1.2.840.10008.1.2.4.90"),
    ],
)
def test_header_is_what_pydicom_writes(sop_class: str, sop_instance: str, syntax: str) -> None:
    ours = file_meta(sop_class, sop_instance, syntax)
    assert ours == _pydicom_header(sop_class, sop_instance, syntax)
    meta = dcmread(BytesIO(ours), force=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    assert meta.TransferSyntaxUID == syntax
    assert meta.FileMetaInformationGroupLength == len(ours) - len(PREAMBLE) - 12
