"""Turn rendered frames into standard DICOM datasets (classic single-frame IODs).

Everything patient-, study-, equipment- and series-level is assembled here
once, so the CT, MR, localizer, secondary-capture and reformat series all carry
the same patient/study/frame-of-reference modules, and every value passes
through the VR-aware :func:`put` (DS/IS formatted within 16/12 characters)
so pydicom never warns about an over-long number when the suite runs with
warnings as errors. UIDs come from :func:`uid`, a hash of the seed-derived
parts, so the same spec writes byte-identical files.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from models.phantom.geometry import Vec3

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")
SECONDARY_CAPTURE_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")

IMPLEMENTATION_VERSION = "MSVLM_PHANTOM1"


def uid(*parts: object) -> UID:
    """A deterministic UID derived from ``parts`` (pydicom's hashed generator)."""
    return generate_uid(entropy_srcs=["msvlm-phantom", *(str(p) for p in parts)])


IMPLEMENTATION_CLASS_UID = uid("implementation", IMPLEMENTATION_VERSION)


def ds_number(value: float) -> str:
    """A DS string of at most 16 characters, without '-0' or 1e-17 noise."""
    v = round(float(value), 6) + 0.0
    if v == int(v) and abs(v) < 1e12:
        return f"{int(v)}.0" if abs(v) < 1e10 else str(int(v))
    return format_number_as_ds(v)


def tm(seconds: float) -> str:
    """DICOM TM for ``seconds`` after midnight (wraps at 24 h)."""
    ms = int(round(seconds * 1000)) % (24 * 3600 * 1000)
    h, rem = divmod(ms, 3600 * 1000)
    m, rem = divmod(rem, 60 * 1000)
    s, frac = divmod(rem, 1000)
    return f"{h:02d}{m:02d}{s:02d}.{frac:03d}"


def put(ds: Dataset, keyword: str, value: Any) -> None:
    """Set ``keyword`` on ``ds``, formatting DS/IS numbers (and lists of them) for their VR."""
    vr = dictionary_VR(tag_for_keyword(keyword))  # type: ignore[arg-type]
    if vr in ("DS", "IS") and value is not None and value != "":
        fmt = ds_number if vr == "DS" else (lambda v: str(int(v)))
        many = isinstance(value, list | tuple | np.ndarray)
        value = [fmt(v) for v in value] if many else fmt(value)
    setattr(ds, keyword, value)


@dataclass(frozen=True)
class StudyContext:
    """Patient, study, equipment and frame-of-reference values shared by every series."""

    modality: str
    study_uid: str
    frame_of_reference_uid: str
    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    patient_age: str
    study_date: str
    study_start_s: float
    accession_number: str
    study_id: str
    study_description: str
    body_part: str
    protocol_name: str


@dataclass(frozen=True)
class Frame:
    """One image: stored pixel values and, for cross-sectional images, where it lies."""

    pixels: np.ndarray
    position: Vec3 | None = None
    orientation: Sequence[float] | None = None
    pixel_spacing: float | None = None
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesHeader:
    """Series-level values; ``description`` None leaves SeriesDescription out entirely."""

    uid: str
    number: int
    description: str | None
    sop_class_uid: str
    modality: str
    image_type: tuple[str, ...]
    time_s: float
    attributes: Mapping[str, Any] = field(default_factory=dict)
    slice_time_s: float = 0.0


def _common(ctx: StudyContext, header: SeriesHeader, sop_uid: str) -> Dataset:
    """SOP common, patient, general study/series, equipment and frame of reference."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(header.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = UID(header.sop_class_uid)
    ds.SOPInstanceUID = UID(sop_uid)
    series_tm = tm(ctx.study_start_s + header.time_s)
    ds.InstanceCreationDate = ctx.study_date
    ds.InstanceCreationTime = tm(ctx.study_start_s + header.time_s + 30.0)
    ds.StudyDate = ctx.study_date
    ds.SeriesDate = ctx.study_date
    ds.AcquisitionDate = ctx.study_date
    ds.ContentDate = ctx.study_date
    ds.StudyTime = tm(ctx.study_start_s)
    ds.SeriesTime = series_tm
    ds.AccessionNumber = ctx.accession_number
    ds.Modality = header.modality
    ds.Manufacturer = "MSVLM"
    ds.InstitutionName = "Phantom Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM01"
    ds.StudyDescription = ctx.study_description
    if header.description is not None:
        ds.SeriesDescription = header.description
    ds.ManufacturerModelName = "Analytic Phantom"
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.patient_id
    ds.PatientBirthDate = ctx.patient_birth_date
    ds.PatientSex = ctx.patient_sex
    ds.PatientAge = ctx.patient_age
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "models.phantom 1.0"
    ds.ProtocolName = ctx.protocol_name
    ds.BodyPartExamined = ctx.body_part
    ds.StudyInstanceUID = UID(ctx.study_uid)
    ds.SeriesInstanceUID = UID(header.uid)
    ds.StudyID = ctx.study_id
    put(ds, "SeriesNumber", header.number)
    ds.FrameOfReferenceUID = UID(ctx.frame_of_reference_uid)
    ds.PositionReferenceIndicator = ""
    return ds


def _pixels(ds: Dataset, pixels: np.ndarray, bits_stored: int) -> None:
    """Image pixel module for a single-channel uint8/uint16 frame (or stack of frames)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    if pixels.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()


def _clone(template: Dataset) -> Dataset:
    """A new dataset with its own element objects (setting a value on one instance must
    never reach another); immutable values are shared, multi-valued and sequence
    elements and the file meta are deep-copied. Much cheaper than deepcopy."""
    ds = Dataset()
    for elem in template:
        if elem.VR == "SQ" or isinstance(elem.value, MultiValue | list):
            ds.add(copy.deepcopy(elem))
        else:
            ds.add(copy.copy(elem))
    ds.file_meta = copy.deepcopy(template.file_meta)
    return ds


def series_datasets(ctx: StudyContext, header: SeriesHeader, frames: Sequence[Frame]) -> list[Dataset]:
    """One classic single-frame instance per frame, InstanceNumber 1..N in frame order.

    Series-level elements are built once into a template that each instance
    clones (pydicom's per-element validation and deepcopy dominate otherwise:
    a 300-slice series would spend seconds in ``__setattr__``).
    """
    attrs = dict(header.attributes)
    bits_stored = int(attrs.pop("BitsStored", 12))
    template = _common(ctx, header, uid(header.uid, "template"))
    template.ImageType = list(header.image_type)
    put(template, "AcquisitionNumber", 1)
    for keyword, value in attrs.items():
        put(template, keyword, value)
    out: list[Dataset] = []
    for n, frame in enumerate(frames, start=1):
        ds = _clone(template)
        sop_uid = uid(header.uid, "instance", n)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        acq = ctx.study_start_s + header.time_s + header.slice_time_s * (n - 1)
        ds.AcquisitionTime = tm(acq)
        ds.ContentTime = tm(acq + 20.0)
        put(ds, "InstanceNumber", n)
        if frame.position is not None and frame.orientation is not None:
            ds.PatientPosition = "HFS"
            put(ds, "ImagePositionPatient", list(frame.position))
            put(ds, "ImageOrientationPatient", list(frame.orientation))
            normal = np.cross(np.asarray(frame.orientation[:3]), np.asarray(frame.orientation[3:]))
            put(ds, "SliceLocation", float(np.asarray(frame.position) @ normal))
        else:
            ds.PatientOrientation = ""
        if frame.pixel_spacing is not None:
            put(ds, "PixelSpacing", [frame.pixel_spacing, frame.pixel_spacing])
        if frame.slice_thickness is not None:
            put(ds, "SliceThickness", frame.slice_thickness)
        if frame.spacing_between_slices is not None:
            put(ds, "SpacingBetweenSlices", frame.spacing_between_slices)
        for keyword, value in frame.attributes.items():
            put(ds, keyword, list(value) if keyword == "ImageType" else value)
        _pixels(ds, frame.pixels, bits_stored)
        out.append(ds)
    return out


def write_datasets(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    """Write ``datasets`` as folder/NNNN.dcm (Part 10, explicit VR little endian)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets, start=1):
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
