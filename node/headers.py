"""What grouping and loading need from one DICOM instance, read once, without pixels.

Grouping a study must not decode a single pixel: it runs on hundreds or thousands
of instances while the study settles. So each instance is read once with
``stop_before_pixels=True`` and flattened into a frozen :class:`InstanceHeader`
whose fields are plain Python values (no pydicom objects), so it can be cached,
compared and logged safely. Enhanced multi-frame objects keep one
:class:`FrameGeometry` per frame, merged from the Shared and Per-Frame Functional
Groups, because their geometry (and, for MR, their b-values) vary by frame.

Malformed values are tolerated field by field (they become ``None``): deciding
whether a missing orientation is fatal is grouping's job, with a reason code,
not the reader's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.errors import GroupingError

logger = logging.getLogger(__name__)

Vec3 = tuple[float, float, float]
Orientation = tuple[float, float, float, float, float, float]


class UnreadableInstanceError(GroupingError):
    """A file is not readable as DICOM (truncated, not DICOM, missing UIDs)."""


@dataclass(frozen=True, slots=True)
class FrameGeometry:
    """Geometry and per-frame values of one frame of an Enhanced multi-frame object.

    Values missing from the frame's own functional groups are taken from the shared
    functional groups, so each frame is self-contained.
    """

    position: Vec3 | None
    orientation: Orientation | None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    b_value: float | None = None
    echo_time: float | None = None
    stack_id: str | None = None
    temporal_position: int | None = None
    acquisition_time: float | None = None


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """Everything grouping and loading need from one instance, without pixel data.

    Times are seconds since midnight (DICOM TM has no date; a study crossing
    midnight is handled where times are compared). Empty strings and empty tuples
    mean "absent" for text and code strings; ``None`` means absent for numbers.
    """

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    transfer_syntax_uid: str = ""
    series_number: int | None = None
    series_description: str = ""
    image_type: tuple[str, ...] = ()
    instance_number: int | None = None
    acquisition_number: int | None = None
    frame_of_reference_uid: str = ""
    rows: int = 0
    columns: int = 0
    samples_per_pixel: int = 1
    photometric_interpretation: str = ""
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    image_orientation: Orientation | None = None
    image_position: Vec3 | None = None
    gantry_tilt: float | None = None
    number_of_frames: int = 1
    frames: tuple[FrameGeometry, ...] = ()
    acquisition_time: float | None = None
    series_time: float | None = None
    content_time: float | None = None
    contrast_agent: str = ""
    contrast_route: str = ""
    contrast_volume: float | None = None
    contrast_start_time: float | None = None
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    scan_options: tuple[str, ...] = ()
    acquisition_contrast: str = ""
    mr_acquisition_type: str = ""
    echo_time: float | None = None
    repetition_time: float | None = None
    inversion_time: float | None = None
    echo_number: int | None = None
    temporal_position: int | None = None
    b_value: float | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None

    @property
    def is_multiframe(self) -> bool:
        """True when the instance carries per-frame geometry (Enhanced CT/MR)."""
        return bool(self.frames)

    @property
    def has_contrast_tags(self) -> bool:
        """True when any contrast/bolus attribute says contrast was given."""
        return bool(
            self.contrast_agent
            or self.contrast_route
            or (self.contrast_volume is not None and self.contrast_volume > 0)
            or self.contrast_start_time is not None
        )


# --------------------------------------------------------------------------- values


def parse_time(value: Any) -> float | None:
    """DICOM TM (``HHMMSS.FFFFFF``, partial, or the old ``HH:MM:SS``) -> seconds."""
    text = str(value).strip().replace(":", "") if value not in (None, "") else ""
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    if hours > 23 or minutes > 59 or not 0 <= seconds < 61:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def _get(ds: Dataset | None, keyword: str) -> Any:
    """The value of ``keyword`` or None, never raising on a malformed element."""
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom raises many kinds on bad values
        return None
    return None if value is None or value == "" else value


def _float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = [float(v) for v in (value if not isinstance(value, str | bytes) else [value])]
    except (TypeError, ValueError):
        return None
    if len(items) != count or not all(math.isfinite(v) for v in items):
        return None
    return tuple(items)


def _vec3(value: Any) -> Vec3 | None:
    return cast("Vec3 | None", _floats(value, 3))


def _orientation(value: Any) -> Orientation | None:
    return cast("Orientation | None", _floats(value, 6))


def _pair(value: Any) -> tuple[float, float] | None:
    return cast("tuple[float, float] | None", _floats(value, 2))


def _or(value: Any, fallback: Any) -> Any:
    """``value`` unless it is None (unlike ``or``, keeps 0 and 0.0)."""
    return fallback if value is None else value


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes):
        value = [value]
    return tuple(str(v).strip().upper() for v in value if str(v).strip())


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _item(ds: Dataset | None, keyword: str) -> Dataset | None:
    """First item of a sequence attribute, or None."""
    if ds is None:
        return None
    seq = _get(ds, keyword)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _first(groups: Iterable[Dataset | None], seq: str, keyword: str) -> Any:
    """``keyword`` from ``seq`` in the first functional group that has it."""
    for group in groups:
        value = _get(item, keyword) if (item := _item(group, seq)) is not None else None
        if value is not None:
            return value
    return None


# ------------------------------------------------------------------- private b-values


def _private_b_value(ds: Dataset) -> float | None:
    """b-value from the two vendor private tags in wide use, creator-checked.

    Only the private creator elements actually present are looked at (iterating
    all 240 possible blocks per group would dominate the header's cost).
    """
    vendors = {0x0019: ("SIEMENS CSA HEADER", 0x0C, None), 0x0043: ("GEMS_PARM_01", 0x39, 1e5)}
    for tag in list(ds.keys()):
        group, element = tag >> 16, tag & 0xFFFF
        if group not in vendors or not 0x10 <= element <= 0xFF:
            continue
        creator_name, offset, modulo = vendors[group]
        creator = ds.get(tag)
        if creator is None or str(creator.value).strip().upper() != creator_name:
            continue
        value_element = ds.get((group << 16) | (element << 8) | offset)
        value = _float(value_element.value if value_element is not None else None)
        if value is not None:
            return value % modulo if modulo else value
    return None


# ------------------------------------------------------------------- multi-frame


def _frame_geometry(shared: Dataset | None, frame: Dataset | None) -> FrameGeometry:
    groups = (frame, shared)
    return FrameGeometry(
        position=_vec3(_first(groups, "PlanePositionSequence", "ImagePositionPatient")),
        orientation=_orientation(_first(groups, "PlaneOrientationSequence", "ImageOrientationPatient")),
        pixel_spacing=_pair(_first(groups, "PixelMeasuresSequence", "PixelSpacing")),
        slice_thickness=_float(_first(groups, "PixelMeasuresSequence", "SliceThickness")),
        rescale_slope=_float(_first(groups, "PixelValueTransformationSequence", "RescaleSlope")),
        rescale_intercept=_float(_first(groups, "PixelValueTransformationSequence", "RescaleIntercept")),
        b_value=_float(_first(groups, "MRDiffusionSequence", "DiffusionBValue")),
        echo_time=_float(_first(groups, "MREchoSequence", "EffectiveEchoTime")),
        stack_id=_text(_first(groups, "FrameContentSequence", "StackID")) or None,
        temporal_position=_int(_first(groups, "FrameContentSequence", "TemporalPositionIndex")),
        acquisition_time=_acq_datetime_time(
            _first(groups, "FrameContentSequence", "FrameAcquisitionDateTime")
        ),
    )


def _acq_datetime_time(value: Any) -> float | None:
    """Seconds since midnight from a DT value ``YYYYMMDDHHMMSS.FFFFFF``."""
    text = _text(value)
    return parse_time(text[8:]) if len(text) > 8 else None


def _frames(ds: Dataset) -> tuple[tuple[FrameGeometry, ...], Dataset | None]:
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    if not per_frame:
        return (), shared
    return tuple(_frame_geometry(shared, item) for item in per_frame), shared


def _enhanced_contrast(ds: Dataset, shared: Dataset | None) -> tuple[str, str]:
    """Agent and route from the Enhanced Contrast/Bolus module and usage groups."""
    agent_item = _item(ds, "ContrastBolusAgentSequence")
    agent = _text(_get(agent_item, "CodeMeaning")) if agent_item is not None else ""
    route_item = _item(agent_item, "ContrastBolusAdministrationRouteSequence")
    route = _text(_get(route_item, "CodeMeaning")) if route_item is not None else ""
    if not agent:
        per_frame = _get(ds, "PerFrameFunctionalGroupsSequence") or []
        groups = [shared, *(per_frame[:1] if per_frame else [])]
        administered = _first(groups, "ContrastBolusUsageSequence", "ContrastBolusAgentAdministered")
        if _text(administered).upper() == "YES":
            agent = "ADMINISTERED"
    return agent, route


# ------------------------------------------------------------------- public API

_NO_FRAME = FrameGeometry(position=None, orientation=None)


def header_from_dataset(ds: Dataset, path: str | Path) -> InstanceHeader:
    """Flatten a dataset (pixels not needed) into an :class:`InstanceHeader`.

    Raises :class:`UnreadableInstanceError` when the identifying UIDs are missing,
    because such an instance cannot be placed in any study or series.
    """
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(_get(ds, keyword))
        if not value:
            raise UnreadableInstanceError(f"{path}: {keyword} is missing; cannot place instance")
        uids[keyword] = value
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = _text(_get(meta, "TransferSyntaxUID")) if meta is not None else ""
    frames, shared = _frames(ds)
    ff = frames[0] if frames else _NO_FRAME
    agent, route = _text(_get(ds, "ContrastBolusAgent")), _text(_get(ds, "ContrastBolusRoute"))
    if frames and not agent:
        agent, route = _enhanced_contrast(ds, shared)
    frame_type = _item(shared, "MRImageFrameTypeSequence")
    if frame_type is None and ds.get("PerFrameFunctionalGroupsSequence"):
        frame_type = _item(ds.PerFrameFunctionalGroupsSequence[0], "MRImageFrameTypeSequence")
    acquisition_contrast = _text(_get(ds, "AcquisitionContrast")) or _text(
        _get(frame_type, "AcquisitionContrast") if frame_type is not None else None
    )
    timing = _item(shared, "MRTimingAndRelatedParametersSequence")  # Enhanced MR
    modifier = _item(shared, "MRModifierSequence")
    b_value = _float(_get(ds, "DiffusionBValue"))
    if b_value is None and not frames and _text(_get(ds, "Modality")).upper() == "MR":
        b_value = _private_b_value(ds)
    return InstanceHeader(
        path=str(path),
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        modality=_text(_get(ds, "Modality")).upper(),
        transfer_syntax_uid=transfer_syntax,
        series_number=_int(_get(ds, "SeriesNumber")),
        series_description=_text(_get(ds, "SeriesDescription")),
        image_type=_strings(_get(ds, "ImageType")),
        instance_number=_int(_get(ds, "InstanceNumber")),
        acquisition_number=_int(_get(ds, "AcquisitionNumber")),
        frame_of_reference_uid=_text(_get(ds, "FrameOfReferenceUID")),
        rows=_int(_get(ds, "Rows")) or 0,
        columns=_int(_get(ds, "Columns")) or 0,
        samples_per_pixel=_int(_get(ds, "SamplesPerPixel")) or 1,
        photometric_interpretation=_text(_get(ds, "PhotometricInterpretation")).upper(),
        pixel_spacing=_or(_pair(_get(ds, "PixelSpacing")), ff.pixel_spacing),
        slice_thickness=_or(_float(_get(ds, "SliceThickness")), ff.slice_thickness),
        image_orientation=_or(_orientation(_get(ds, "ImageOrientationPatient")), ff.orientation),
        image_position=_or(_vec3(_get(ds, "ImagePositionPatient")), ff.position),
        gantry_tilt=_float(_get(ds, "GantryDetectorTilt")),
        number_of_frames=_int(_get(ds, "NumberOfFrames")) or 1,
        frames=frames,
        acquisition_time=_or(
            parse_time(_get(ds, "AcquisitionTime")),
            _or(_acq_datetime_time(_get(ds, "AcquisitionDateTime")), ff.acquisition_time),
        ),
        series_time=parse_time(_get(ds, "SeriesTime")),
        content_time=parse_time(_get(ds, "ContentTime")),
        contrast_agent=agent,
        contrast_route=route,
        contrast_volume=_float(_get(ds, "ContrastBolusVolume")),
        contrast_start_time=parse_time(_get(ds, "ContrastBolusStartTime")),
        scanning_sequence=_strings(_get(ds, "ScanningSequence") or _get(ds, "EchoPulseSequence")),
        sequence_variant=_strings(_get(ds, "SequenceVariant")),
        scan_options=_strings(_get(ds, "ScanOptions")),
        acquisition_contrast=acquisition_contrast.upper(),
        mr_acquisition_type=_text(_get(ds, "MRAcquisitionType")).upper(),
        echo_time=_or(_float(_get(ds, "EchoTime")), ff.echo_time),
        repetition_time=_or(_float(_get(ds, "RepetitionTime")), _float(_get(timing, "RepetitionTime"))),
        inversion_time=_or(_float(_get(ds, "InversionTime")), _float(_get(modifier, "InversionTimes"))),
        echo_number=_int(_get(ds, "EchoNumbers")),
        temporal_position=_or(_int(_get(ds, "TemporalPositionIdentifier")), ff.temporal_position),
        b_value=_or(b_value, ff.b_value),
        rescale_slope=_or(_float(_get(ds, "RescaleSlope")), ff.rescale_slope),
        rescale_intercept=_or(_float(_get(ds, "RescaleIntercept")), ff.rescale_intercept),
    )


def read_header(path: str | Path) -> InstanceHeader:
    """Read one file's header (no pixel data) into an :class:`InstanceHeader`.

    Raises :class:`UnreadableInstanceError` naming the file for anything that is
    not a readable DICOM instance, so a caller can skip or quarantine that file.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableInstanceError(f"{path}: not readable as DICOM ({exc})") from exc
    return header_from_dataset(ds, path)
