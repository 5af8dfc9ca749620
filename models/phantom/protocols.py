"""Scanner-side header content: series descriptions, acquisition parameters, timing.

These are the values a real scanner would write and a grouping heuristic might
read (descriptions, ScanningSequence, EchoTime, contrast timing, b-values).
Kept apart from the pixels so the truth of what a series *is* (plane, phase,
sequence) never depends on how it is *labelled*, which is exactly what lets
a spec blank the descriptions and still have a correct answer key.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

CT_PHASE_LABEL = {"non_contrast": "NATIVE", "arterial": "ART", "venous": "PV", "delayed": "DELAYED"}
PLANE_LABEL = {"axial": "AX", "coronal": "COR", "sagittal": "SAG", "oblique": "OBL"}
# Acquisition order of MR sequences in a typical rectal protocol (post-contrast last).
MR_ORDER = ("t2", "t1", "flair", "dwi", "adc", "other", "t1_post")

MR_IMAGE_TYPE = ("ORIGINAL", "PRIMARY", "M", "ND")
DWI_IMAGE_TYPE_B0 = ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND")
DWI_IMAGE_TYPE_TRACE = ("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND")
ADC_IMAGE_TYPE = ("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND")
CT_IMAGE_TYPE = ("ORIGINAL", "PRIMARY", "AXIAL")
LOCALIZER_IMAGE_TYPE = ("ORIGINAL", "PRIMARY", "LOCALIZER")
SCREEN_IMAGE_TYPE = ("DERIVED", "SECONDARY", "OTHER")
REFORMAT_IMAGE_TYPE = ("DERIVED", "SECONDARY", "REFORMATTED")
MIP_IMAGE_TYPE = ("DERIVED", "SECONDARY", "MIP")

_MR_SEQUENCE: dict[str, dict[str, Any]] = {
    "t1": {
        "ScanningSequence": "SE",
        "SequenceVariant": ["SK", "SP", "OSP"],
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "RepetitionTime": 600.0,
        "EchoTime": 12.0,
        "EchoTrainLength": 3,
        "FlipAngle": 150.0,
        "SequenceName": "*tse2d1_3",
    },
    "t2": {
        "ScanningSequence": "SE",
        "SequenceVariant": ["SK", "SP", "OSP"],
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "RepetitionTime": 4500.0,
        "EchoTime": 100.0,
        "EchoTrainLength": 17,
        "FlipAngle": 150.0,
        "SequenceName": "*tse2d1_17",
    },
    "flair": {
        "ScanningSequence": ["SE", "IR"],
        "SequenceVariant": ["SK", "SP", "MP", "OSP"],
        "ScanOptions": "IR",
        "MRAcquisitionType": "2D",
        "RepetitionTime": 9000.0,
        "EchoTime": 90.0,
        "InversionTime": 2500.0,
        "EchoTrainLength": 16,
        "FlipAngle": 150.0,
        "SequenceName": "*tir2d1_16",
    },
    "dwi": {
        "ScanningSequence": "EP",
        "SequenceVariant": ["SK", "SP"],
        "ScanOptions": ["PFP", "FS"],
        "MRAcquisitionType": "2D",
        "RepetitionTime": 5000.0,
        "EchoTime": 70.0,
        "EchoTrainLength": 1,
        "FlipAngle": 90.0,
        "SequenceName": "*ep_b0",
    },
    "t1_post": {
        "ScanningSequence": "GR",
        "SequenceVariant": ["SP", "SS", "OSP"],
        "ScanOptions": "FS",
        "MRAcquisitionType": "3D",
        "RepetitionTime": 4.5,
        "EchoTime": 2.0,
        "EchoTrainLength": 1,
        "FlipAngle": 10.0,
        "SequenceName": "*fl3d1",
    },
    "other": {
        "ScanningSequence": "GR",
        "SequenceVariant": ["SP", "OSP"],
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "RepetitionTime": 150.0,
        "EchoTime": 4.8,
        "EchoTrainLength": 1,
        "FlipAngle": 70.0,
        "SequenceName": "*fl2d1",
    },
}
_MR_SEQUENCE["adc"] = dict(_MR_SEQUENCE["dwi"], SequenceName="*ep_b0_800")

_MR_NAME = {
    "t1": "T1 TSE",
    "t2": "T2 TSE",
    "flair": "T2 FLAIR",
    "t1_post": "T1 VIBE FS POST",
    "other": "T1 GRE",
}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def ct_description(phase: str, plane: str, thickness_mm: float) -> str:
    """E.g. "CHEST ABD ART 1.0 AX"."""
    return f"CHEST ABD {CT_PHASE_LABEL[phase]} {thickness_mm:.1f} {PLANE_LABEL[plane]}"


def mr_description(sequence: str, plane: str, b_values: tuple[int, ...]) -> str:
    """E.g. "T2 TSE SAG", "DWI b0 b800 AX", "DWI b0 b800 AX_ADC"."""
    if sequence in ("dwi", "adc"):
        base = "DWI " + " ".join(f"b{b}" for b in b_values) + f" {PLANE_LABEL[plane]}"
        return base + ("_ADC" if sequence == "adc" else "")
    return f"{_MR_NAME[sequence]} {PLANE_LABEL[plane]}"


def ct_attributes(fov_mm: float, ctdi: float) -> dict[str, Any]:
    """CT image and acquisition attributes common to every reconstructed CT series."""
    return {
        "KVP": 120,
        "DataCollectionDiameter": 500.0,
        "ReconstructionDiameter": fov_mm,
        "GantryDetectorTilt": 0.0,
        "TableHeight": 160.0,
        "RotationDirection": "CW",
        "ExposureTime": 500,
        "XRayTubeCurrent": 180,
        "Exposure": 90,
        "FilterType": "FLAT",
        "ConvolutionKernel": "Br40",
        "CTDIvol": ctdi,
        "CTDIPhantomTypeCodeSequence": [_code("113691", "DCM", "IEC Body Dosimetry Phantom")],
        "RescaleIntercept": -1024.0,
        "RescaleSlope": 1.0,
        "RescaleType": "HU",
        "WindowCenter": 40.0,
        "WindowWidth": 400.0,
        "BitsStored": 12,
    }


def ct_contrast(start_tm: str) -> dict[str, Any]:
    """Contrast/bolus module of an iodinated IV injection."""
    return {
        "ContrastBolusAgent": "IOMEPROL 350",
        "ContrastBolusRoute": "IV",
        "ContrastBolusVolume": 90.0,
        "ContrastBolusStartTime": start_tm,
        "ContrastBolusTotalDose": 31.5,
        "ContrastFlowRate": [4.0],
        "ContrastFlowDuration": [22.5],
        "ContrastBolusIngredient": "IODINE",
        "ContrastBolusIngredientConcentration": 350.0,
    }


def mr_contrast(start_tm: str) -> dict[str, Any]:
    """Contrast/bolus module of a gadolinium injection."""
    return {
        "ContrastBolusAgent": "GADOTERATE MEGLUMINE",
        "ContrastBolusRoute": "IV",
        "ContrastBolusVolume": 15.0,
        "ContrastBolusStartTime": start_tm,
        "ContrastBolusIngredient": "GADOLINIUM",
    }


def mr_attributes(sequence: str, matrix: int) -> dict[str, Any]:
    """MR image module attributes for ``sequence`` on a 3 T scanner."""
    out = dict(_MR_SEQUENCE[sequence])
    out.update(
        {
            "MagneticFieldStrength": 3.0,
            "ImagingFrequency": 123.25,
            "ImagedNucleus": "1H",
            "EchoNumbers": 1,
            "NumberOfAverages": 1.0,
            "PercentSampling": 100.0,
            "PercentPhaseFieldOfView": 100.0,
            "PixelBandwidth": 250.0,
            "ReceiveCoilName": "Body18",
            "TransmitCoilName": "Body",
            "AcquisitionMatrix": [0, matrix, matrix, 0],
            "InPlanePhaseEncodingDirection": "ROW",
            "AngioFlag": "N",
            "BitsStored": 12,
        }
    )
    return out


def ct_phase_times(rng: np.random.Generator) -> tuple[float, dict[str, float]]:
    """(contrast start, {phase: acquisition start}) in seconds after the study start.

    Arterial ~30 s, portal venous ~70 s and delayed >= 180 s after the start
    of the injection; the non-contrast scan precedes the injection.
    """
    start = 300.0 + float(rng.integers(0, 60))
    times = {
        "non_contrast": 90.0 + float(rng.integers(0, 30)),
        "arterial": start + float(rng.integers(25, 36)),
        "venous": start + float(rng.integers(60, 81)),
        "delayed": start + float(rng.integers(180, 301)),
    }
    return start, times
