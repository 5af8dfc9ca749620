"""The Part 10 header of a received instance, encoded directly.

pynetdicom's ``Event.encoded_dataset(include_meta=True)`` builds a pydicom
``FileMetaDataset`` and runs it through pydicom's writer for every instance:
about 7% of a receiver's Python time at ingest. The header is always the same
seven elements in Explicit VR Little Endian, so it is written here from bytes,
with the same content pynetdicom writes (PS3.10 7.1).
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # long form: 2 reserved bytes and a 32-bit length
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", "replace")  # a bad UID is refused after parsing, not here
    return raw + b"\x00" if len(raw) % 2 else raw


def _short_string(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for one instance."""
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _uid(sop_class_uid)),
            _element(0x0002, 0x0003, b"UI", _uid(sop_instance_uid)),
            _element(0x0002, 0x0010, b"UI", _uid(transfer_syntax_uid)),
            _element(0x0002, 0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
            _element(0x0002, 0x0013, b"SH", _short_string(PYNETDICOM_IMPLEMENTATION_VERSION)),
        )
    )
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE + group_length + body
