"""Small synthetic DICOM files built with pydicom inside the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def ct_slice(
    *, study: str, series: str, index: int, rows: int = 64, sop: str | None = None, seed: int = 0
) -> Dataset:
    """One axial CT slice with the geometry and identity a scanner would send."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    sop = sop or generate_uid(entropy_srcs=[study, series, str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study, "for"])
    ds.PatientName = "TEST^SYNTHETIC"
    ds.PatientID = "SYN0001"
    ds.StudyDate = "20260101"
    ds.Modality = "CT"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.SeriesDescription = "SYNTHETIC AX"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100, -100, -float(index) * 2.5]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.5
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    rng = np.random.default_rng(seed + index)
    ds.PixelData = rng.integers(-1000, 1000, size=(rows, rows), dtype=np.int16).tobytes()
    return ds


def write_ct_series(
    directory: Path,
    count: int,
    *,
    rows: int = 64,
    study: str | None = None,
    series: str | None = None,
    seed: int = 0,
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    study = study or generate_uid(entropy_srcs=["study", str(seed)])
    series = series or generate_uid(entropy_srcs=["series", str(seed)])
    paths = []
    for i in range(count):
        ds = ct_slice(study=study, series=series, index=i, rows=rows, seed=seed)
        path = directory / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL value
    return raw[144 + group_length :]
