"""Every DIMSE status code this node returns, by name.

Handlers return members of :class:`Status`, never bare hex literals: a typo in
a literal (pynetdicom's own storescp once returned 0x0210 where it meant
0xC210) silently turns a failure into something a sender may not retry.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    #: an unexpected error in the node while storing; the sender should retry
    PROCESSING_FAILURE = 0x0110
    #: C-STORE refused: the SOP class is not one we process (e.g. a foreign SR)
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: the storage volume is past its watermark or full; the sender should retry later
    OUT_OF_RESOURCES_DISK = 0xA700
    #: the database could not record the instance; retry later
    OUT_OF_RESOURCES_DATABASE = 0xA701
    #: the file could not be written for a reason other than space; retry later
    OUT_OF_RESOURCES_STORAGE = 0xA702
    #: SOP Class/Instance UID in the dataset differ from the C-STORE request
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: the dataset cannot be parsed (truncated, malformed)
    CANNOT_UNDERSTAND = 0xC000
    #: a UID in the dataset is not a valid DICOM UID
    INVALID_UID = 0xC001
    #: a required attribute (e.g. Pixel Data, Series Instance UID) is missing
    MISSING_ATTRIBUTE = 0xC002
    #: the SOP Instance UID is already stored under another series or study
    CONFLICTING_INSTANCE = 0xC003
