"""What the receiver negotiates: SOP classes and transfer syntaxes.

Images are stored exactly as received, so every transfer syntax we accept must
be one the volume loader can decode later (pydicom + pylibjpeg/pyjpegls).
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

CT_MR_IMAGE_STORAGE: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}

#: stored so a whole study can be routed to us, then excluded by grouping with a reason
SECONDARY_CAPTURE_STORAGE: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}

#: accepted in negotiation only so our own SRs coming back are recognised (loop
#: safety); any SR another system wrote is refused with a specific status
SR_STORAGE: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
}

#: the SOP class of the SR we write, by ``report.document``
SR_DOCUMENT_SOP_CLASS: dict[str, str] = {
    "basic": "1.2.840.10008.5.1.4.1.1.88.11",
    "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33",
}

ACCEPTED_SOP_CLASSES: dict[str, str] = {
    **CT_MR_IMAGE_STORAGE,
    **SECONDARY_CAPTURE_STORAGE,
    **SR_STORAGE,
}

ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
)

#: Manufacturer written into every SR we create; an SR carrying it is ours
OWN_MANUFACTURER = "msvlm-node"
