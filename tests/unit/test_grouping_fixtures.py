"""Small pydicom-built CT/MR instances for the grouping, header and volume tests.

Not a test module itself (it defines no tests): the builders live here so the
test files share one way of making a slice. Pixel values encode the slice index
(``value = 100 * index + x``) so a test can check the order a loader produced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node.headers import InstanceHeader, header_from_dataset, read_header
from node.manifest import SliceRef, View

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
STUDY = "1.2.826.0.1.3680043.8.498.1"


def uid(*parts: object) -> str:
    """A deterministic UID from the given parts."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def normal_of(orientation: Sequence[float]) -> np.ndarray:
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def pixels_for(index: int, rows: int = 64, cols: int = 64) -> np.ndarray:
    """Stored values of slice ``index``: 100 * index + column, as int16."""
    row = np.arange(cols, dtype=np.int16)[None, :] + np.int16(100 * index)
    return np.repeat(row, rows, axis=0)


def make_slice(
    *,
    series_uid: str,
    index: int,
    modality: str = "CT",
    study_uid: str = STUDY,
    sop_uid: str | None = None,
    series_number: int = 1,
    position: Sequence[float] | None = None,
    orientation: Sequence[float] | None = AXIAL,
    spacing: float = 2.0,
    rows: int = 64,
    cols: int = 64,
    pixel_spacing: tuple[float, float] = (0.8, 0.8),
    thickness: float | None = 2.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "",
    acquisition_time: str | None = "120000",
    series_time: str | None = None,
    sop_class: str | None = None,
    rescale: tuple[float, float] | None = None,
    pixels: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """One single-frame CT/MR instance; position defaults to ``index * spacing`` on the normal."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = sop_class or (CT_IMAGE if modality == "CT" else MR_IMAGE)
    sop_uid = sop_uid or uid(series_uid, index, "sop")
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = uid(study_uid, "for")
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    if acquisition_time is not None:
        ds.AcquisitionTime = acquisition_time
    if series_time is not None:
        ds.SeriesTime = series_time
    if orientation is not None:
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in orientation]
        if position is None:
            position = list(normal_of(orientation) * index * spacing)
    if position is not None:
        ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    if thickness is not None:
        ds.SliceThickness = f"{thickness:g}"
    data = pixels if pixels is not None else pixels_for(index, rows, cols)
    ds.Rows, ds.Columns = data.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if data.dtype == np.int16 else 0
    if rescale is None and modality == "CT":
        rescale = (1.0, -1024.0)
    if rescale is not None:
        ds.RescaleSlope = f"{rescale[0]:g}"
        ds.RescaleIntercept = f"{rescale[1]:g}"
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds


def make_series(
    count: int, *, series_uid: str | None = None, name: str = "s", **kwargs: Any
) -> list[Dataset]:
    """``count`` slices of one series (keyword arguments as in :func:`make_slice`)."""
    series_uid = series_uid or uid(STUDY, name)
    return [make_slice(series_uid=series_uid, index=i, **kwargs) for i in range(count)]


def headers_of(datasets: Iterable[Dataset], root: str = "/nowhere") -> list[InstanceHeader]:
    """Headers as the store would produce them, without touching the disk."""
    return [header_from_dataset(ds, f"{root}/{ds.SOPInstanceUID}.dcm") for ds in datasets]


def write(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    """Write datasets as files named by SOP Instance UID; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def contrast(start: str | None = "120000", agent: str = "IOHEXOL") -> dict[str, Any]:
    """Contrast/bolus attributes for ``extra``."""
    tags: dict[str, Any] = {"ContrastBolusAgent": agent, "ContrastBolusRoute": "IV"}
    if start is not None:
        tags["ContrastBolusStartTime"] = start
    return tags


def mr_params(tr: float | None, te: float | None, ti: float | None = None, **more: Any) -> dict[str, Any]:
    """MR acquisition attributes for ``extra``."""
    tags: dict[str, Any] = dict(more)
    if tr is not None:
        tags["RepetitionTime"] = f"{tr:g}"
    if te is not None:
        tags["EchoTime"] = f"{te:g}"
    if ti is not None:
        tags["InversionTime"] = f"{ti:g}"
    return tags


def enhanced_mr(
    count: int,
    *,
    series_uid: str | None = None,
    b_values: Sequence[float | None] = (None,),
    spacing: float = 2.0,
    orientation: Sequence[float] = AXIAL,
    modality: str = "MR",
    rescale: Sequence[tuple[float, float]] | None = None,
) -> Dataset:
    """An Enhanced MR (or CT) multi-frame instance: ``count`` positions x len(b_values) frames.

    ``rescale`` gives (slope, intercept) per frame in a PixelValueTransformationSequence.
    """
    series_uid = series_uid or uid(STUDY, "enhanced", modality)
    sop_class = ENHANCED_MR if modality == "MR" else ENHANCED_CT
    ds = make_slice(
        series_uid=series_uid,
        index=0,
        modality=modality,
        sop_class=sop_class,
        orientation=None,
        position=None,
        thickness=None,
    )
    for keyword in ("ImagePositionPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    normal = normal_of(orientation)
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:g}" for v in orientation]
    measures = Dataset()
    measures.PixelSpacing = ["0.8", "0.8"]
    measures.SliceThickness = f"{spacing:g}"
    shared.PlaneOrientationSequence = DicomSequence([orient])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames: list[Dataset] = []
    data: list[np.ndarray] = []
    for b_index, b_value in enumerate(b_values):
        for i in range(count):
            item = Dataset()
            plane = Dataset()
            plane.ImagePositionPatient = [f"{v:.6g}" for v in normal * i * spacing]
            item.PlanePositionSequence = DicomSequence([plane])
            if b_value is not None:
                diffusion = Dataset()
                diffusion.DiffusionBValue = b_value
                item.MRDiffusionSequence = DicomSequence([diffusion])
            if rescale is not None:
                transform = Dataset()
                slope, intercept = rescale[len(frames)]
                transform.RescaleSlope = f"{slope:g}"
                transform.RescaleIntercept = f"{intercept:g}"
                item.PixelValueTransformationSequence = DicomSequence([transform])
            frames.append(item)
            data.append(pixels_for(i + 100 * b_index))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(data).tobytes()
    return ds


def manual_view(paths: Sequence[Path], *, modality: str = "CT", key: str = "CT:axial:non_contrast") -> View:
    """A view over ``paths`` in the given order, bypassing grouping (loader tests)."""
    refs = []
    for path in paths:
        header = read_header(path)
        position = header.image_position or (0.0, 0.0, 0.0)
        refs.append(SliceRef(sop_instance_uid=header.sop_instance_uid, path=str(path), position=position[2]))
    return View(
        key=key,
        series_instance_uid="1.2.3",
        stack_key="1.2.3",
        modality=modality,
        plane="axial",
        slice_count=len(refs),
        spacing_mm=0.0,
        slices=refs,
    )
