"""The report stage's document: a TID 2000 Diagnostic Imaging Report built with highdicom.

One typed builder, :func:`build_report_sr`, validates everything at construction
(TypeError/ValueError), so a bad model output or a wiring mistake fails the job with a
readable error instead of producing an SR that a PACS rejects or a viewer cannot show::

    CONTAINER (18748-4, LN, "Diagnostic Imaging Report")  TID 2000, SEPARATE
      HAS CONCEPT MOD  CODE Language of Content Item and Descendants = en-US   (TID 1204)
      HAS OBS CONTEXT  CODE Observer Type = Device, + Device Observer UID/Name/...  (TID 1002/1004)
      CONTAINS CONTAINER (121070, DCM, "Findings")  SEPARATE
        CONTAINS TEXT (121071, DCM, "Finding")  the narrative, hard-wrapped
        CONTAINS CODE <finding concept> = Present | Absent     one per findings-head output
          HAS CONCEPT MOD CODE (363698007, SCT, "Finding Site") = <structure>   present, with a site
            HAS CONCEPT MOD CODE <Laterality | Topographical modifier> = <value>   when the site has one
          HAS PROPERTIES TEXT (122157, DCM, "Probability") = "0.031"      (Comprehensive SR)
          INFERRED FROM IMAGE (121080, DCM, "Best illustration of finding")   (Comprehensive SR)
          INFERRED FROM SCOORD (111030, DCM, "Image Region") POLYLINE = the region on it
            SELECTED FROM IMAGE (260753009, SCT, "Source")               (Comprehensive SR)
        CONTAINS TEXT (122157, DCM, "Probability") = "0.031"  right after its CODE  (Basic Text SR)
        CONTAINS IMAGE (121080, DCM, "Best illustration of finding")  after it      (Basic Text SR)
      CONTAINS CONTAINER (121072, DCM, "Impressions")  SEPARATE
        CONTAINS TEXT (121073, DCM, "Impression")

Basic Text SR is the default because every PACS and viewer displays it. It has no NUM and
lets only TEXT be the source of HAS PROPERTIES, hence the probability as TEXT and, in Basic
Text, as the sibling that follows its finding (dsrdump rejects CODE HAS PROPERTIES there).

The caller makes the UIDs with :func:`sr_uids`: the same (job, attempt) always gives the same
Series/SOP Instance UIDs, so a re-sent SR replaces the stored one instead of duplicating it.
"""

from __future__ import annotations

import copy
import math
import re
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import RE_VALID_UID, UID, BasicTextSRStorage, ComprehensiveSRStorage, generate_uid
from pydicom.valuerep import DT

#: The SR's Manufacturer. The receiver recognises our own SRs coming back by it (loop safety).
SR_MANUFACTURER = "msvlm-node"
#: Longest narrative line: viewers show TEXT verbatim and few of them wrap it.
WRAP_WIDTH = 90

DOCUMENT_TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
FINDINGS = hd.sr.CodedConcept("121070", "DCM", "Findings")
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
IMPRESSIONS = hd.sr.CodedConcept("121072", "DCM", "Impressions")
IMPRESSION = hd.sr.CodedConcept("121073", "DCM", "Impression")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
FINDING_SITE = hd.sr.CodedConcept("363698007", "SCT", "Finding Site")
#: CID 7003 "Diagnostic Imaging Report Purpose of Reference": the image a finding is inferred
#: from (TID 2002 row 2, INFERRED FROM TID 2001 row 1)
BEST_ILLUSTRATION = hd.sr.CodedConcept("121080", "DCM", "Best illustration of finding")
#: where on that image the model read the finding (the SCOORD that highdicom's TID 1410
#: `ImageRegion` uses; here INFERRED FROM the finding, SELECTED FROM the image)
IMAGE_REGION = hd.sr.CodedConcept("111030", "DCM", "Image Region")
#: CID 240/241 "Present-Absent": SNOMED CT 272519000 replaced the inactive 2667000 for Absent.
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")
LANGUAGE_EN_US = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
#: IHE AI Results (AIR) Rev 1.1, 6.5.3.1: each algorithm behind a result is a Contributing
#: Equipment item with this purpose; DICOM CID 7005 has no standard code for it (yet).
PROCESSING_ALGORITHM = hd.sr.CodedConcept("Newcode1", "99IHE", "Processing Algorithm")
_SCHEME_NAMES = {"99IHE": "IHE temporary codes", "99MSVLM": "msvlm-node local codes"}
_ALGORITHM_UID_NAMESPACE = uuid.UUID("8f0a3c52-0a5e-4c4f-9d8e-6d2b1f5e7a31")

DocumentKind = Literal["basic", "comprehensive"]
_SOP_CLASS: dict[str, UID] = {"basic": BasicTextSRStorage, "comprehensive": ComprehensiveSRStorage}
_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAK = re.compile(r"[\r\n\\]")
_BULLET = re.compile(r"(\s*(?:[-*\u2022]|\d{1,3}[.)])\s+|\s*)")


def _typed(value: object, kind: type | tuple[type, ...], what: str) -> None:
    """TypeError unless ``value`` is a ``kind`` (a bool is no number here)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise TypeError(f"{what} must be {names}, not {type(value).__name__}")


def _text(value: object, what: str, max_len: int = 64) -> str:
    """A one-line string attribute (LO/SH): non-blank, short enough, no backslash or controls."""
    _typed(value, str, what)
    assert isinstance(value, str)
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{what} is {len(value)} characters; at most {max_len} fit its DICOM VR")
    if _CONTROL.search(value) or _LINE_BREAK.search(value):
        raise ValueError(f"{what} must be one line without backslashes or control characters")
    return value


def _uid(value: object, what: str) -> str:
    _typed(value, str, what)
    assert isinstance(value, str)
    if len(value) > 64 or not re.match(RE_VALID_UID, value):
        raise ValueError(f"{what} is not a valid DICOM UID: {value!r}")
    return value


def _positive_int(value: object, what: str) -> int:
    _typed(value, int, what)
    assert isinstance(value, int)
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


#: a coded concept as (CodeValue, CodingSchemeDesignator, CodeMeaning)
CodeTriple = tuple[str, str, str]


def _region(value: object, what: str) -> None:
    """A rectangle in an image's pixels: four finite numbers, left < right, top < bottom, none negative."""
    _typed(value, tuple, what)
    assert isinstance(value, tuple)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if len(value) != 4 or not numbers or not all(math.isfinite(v) for v in value):
        raise ValueError(f"{what} must be four finite numbers (left, top, right, bottom), got {value!r}")
    left, top, right, bottom = value
    if not (0 <= left < right and 0 <= top < bottom):
        raise ValueError(f"{what} must have 0 <= left < right and 0 <= top < bottom, got {value!r}")


def _code(value: object, what: str) -> hd.sr.CodedConcept:
    _typed(value, tuple, what)
    assert isinstance(value, tuple)
    if len(value) != 3:
        raise ValueError(f"{what} must be (code value, coding scheme, code meaning)")
    code_value = _text(value[0], f"{what} code value", max_len=1024)
    scheme = _text(value[1], f"{what} coding scheme", max_len=16)
    return hd.sr.CodedConcept(code_value, scheme, _text(value[2], f"{what} code meaning"))


@dataclass(frozen=True)
class FindingSite:
    """Where a present finding is, as the site head called it: the words (``name``, what the
    narrative says), the anatomic structure and, where the words need one, a modifier as
    (concept name, value), e.g. Upper lobe of lung with (Laterality, Right)."""

    name: str
    structure: CodeTriple
    modifier: tuple[CodeTriple, CodeTriple] | None = None

    def __post_init__(self) -> None:
        _text(self.name, "FindingSite.name")
        _code(self.structure, "FindingSite.structure")
        if self.modifier is not None:
            _typed(self.modifier, tuple, "FindingSite.modifier")
            if len(self.modifier) != 2:
                raise ValueError("FindingSite.modifier must be (concept name, value)")
            _code(self.modifier[0], "FindingSite.modifier name")
            _code(self.modifier[1], "FindingSite.modifier value")

    @property
    def schemes(self) -> set[str]:
        codes_used = [self.structure, *(self.modifier or ())]
        return {scheme for _, scheme, _ in codes_used}

    def item(self) -> hd.sr.CodeContentItem:
        """The Finding Site content item (HAS CONCEPT MOD of its finding), with its modifier."""
        site = hd.sr.CodeContentItem(FINDING_SITE, _code(self.structure, "site"), "HAS CONCEPT MOD")
        if self.modifier is not None:
            name, value = self.modifier
            site.ContentSequence = hd.sr.ContentSequence(
                [hd.sr.CodeContentItem(_code(name, "modifier"), _code(value, "modifier"), "HAS CONCEPT MOD")]
            )
        return site


@dataclass(frozen=True)
class ImageReference:
    """One source image: an instance, and for a multi-frame one its frame (1-based)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None

    def __post_init__(self) -> None:
        _uid(self.sop_class_uid, "ImageReference.sop_class_uid")
        _uid(self.sop_instance_uid, "ImageReference.sop_instance_uid")
        if self.frame_number is not None:
            _positive_int(self.frame_number, "ImageReference.frame_number")

    def item(self, relationship: str) -> hd.sr.ImageContentItem:
        """The finding's "Best illustration of finding": INFERRED FROM its finding in a
        Comprehensive SR (TID 2002), CONTAINS after it in a Basic Text SR, which allows no
        image under a CODE item."""
        return hd.sr.ImageContentItem(
            BEST_ILLUSTRATION,
            referenced_sop_class_uid=self.sop_class_uid,
            referenced_sop_instance_uid=self.sop_instance_uid,
            referenced_frame_numbers=None if self.frame_number is None else [self.frame_number],
            relationship_type=relationship,
        )

    def region_item(self, bounds: tuple[float, float, float, float]) -> hd.sr.ScoordContentItem:
        """The rectangle `bounds` (left, top, right, bottom in pixels) on this image as a closed
        POLYLINE SCOORD, INFERRED FROM the finding and SELECTED FROM the image: a viewer that
        draws SR regions outlines where on the key image the model read it."""
        left, top, right, bottom = bounds
        corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
        item = hd.sr.ScoordContentItem(
            IMAGE_REGION,
            hd.sr.GraphicTypeValues.POLYLINE,
            np.array(corners, dtype=np.float32),
            pixel_origin_interpretation=None if self.frame_number is None else "FRAME",
            relationship_type="INFERRED FROM",
        )
        item.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.SourceImageForRegion(
                    referenced_sop_class_uid=self.sop_class_uid,
                    referenced_sop_instance_uid=self.sop_instance_uid,
                    referenced_frame_numbers=None if self.frame_number is None else [self.frame_number],
                )
            ]
        )
        return item


@dataclass(frozen=True)
class CodedFinding:
    """One output of the findings head: a coded concept, present or absent, P(present) and,
    for a present finding whose model names sites, where it is and, where the model found it on
    an image, that image (`key_image`) and where on it (`key_region`: left, top, right, bottom
    in its pixels, 0, 0 the top left corner of the first pixel; Comprehensive SR only)."""

    key: str
    display: str
    code_value: str
    coding_scheme: str
    code_meaning: str
    probability: float
    present: bool
    site: FindingSite | None = None
    key_image: ImageReference | None = None
    key_region: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        _text(self.key, "CodedFinding.key")
        _text(self.display, "CodedFinding.display")
        _text(self.code_value, "CodedFinding.code_value", max_len=1024)
        _text(self.coding_scheme, "CodedFinding.coding_scheme", max_len=16)
        _text(self.code_meaning, "CodedFinding.code_meaning")
        _typed(self.present, bool, "CodedFinding.present")
        _typed(self.probability, (int, float), "CodedFinding.probability")
        p = self.probability
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"CodedFinding.probability must be within [0, 1], got {p!r} for {self.key!r}")
        if self.site is not None:
            _typed(self.site, FindingSite, "CodedFinding.site")
            if not self.present:
                raise ValueError(f"CodedFinding.site is given for {self.key!r}, which is absent")
        if self.key_image is not None:
            _typed(self.key_image, ImageReference, "CodedFinding.key_image")
            if not self.present:
                raise ValueError(f"CodedFinding.key_image is given for {self.key!r}, which is absent")
        if self.key_region is not None:
            _region(self.key_region, f"CodedFinding.key_region of {self.key!r}")
            if self.key_image is None:
                raise ValueError(f"CodedFinding.key_region is given for {self.key!r} without its key_image")

    @property
    def concept(self) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(self.code_value, self.coding_scheme, self.code_meaning)


@dataclass(frozen=True)
class DeviceInfo:
    """The node, creator of the SR and its device observer. ``uid``: InstanceCreatorUID, Device
    Observer UID, Contributing Equipment Device UID; ``model_name``/``software_version``: General
    Equipment. ``manufacturer`` must be :data:`SR_MANUFACTURER`: the receiver drops SRs carrying
    it, so any other value would let our own reports loop back in as input."""

    uid: str
    name: str
    manufacturer: str
    model_name: str
    software_version: str
    station_name: str | None = None

    def __post_init__(self) -> None:
        _uid(self.uid, "DeviceInfo.uid")
        _text(self.name, "DeviceInfo.name")
        if self.manufacturer != SR_MANUFACTURER:
            raise ValueError(
                f"DeviceInfo.manufacturer must be {SR_MANUFACTURER!r} (the receiver "
                f"recognises our own SRs by it), got {self.manufacturer!r}"
            )
        _text(self.model_name, "DeviceInfo.model_name")
        _text(self.software_version, "DeviceInfo.software_version")
        if self.station_name is not None:
            _text(self.station_name, "DeviceInfo.station_name", max_len=16)


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that wrote the report; the weights hash says exactly which weights."""

    name: str
    version: str
    weights_sha256: str
    #: who made the model (IHE AIR asks for it); the bundled MS-VLM ships with the node
    manufacturer: str = SR_MANUFACTURER

    def __post_init__(self) -> None:
        _text(self.name, "AlgorithmInfo.name")
        _text(self.version, "AlgorithmInfo.version")
        _text(self.manufacturer, "AlgorithmInfo.manufacturer")
        _typed(self.weights_sha256, str, "AlgorithmInfo.weights_sha256")
        if not re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256):
            raise ValueError("AlgorithmInfo.weights_sha256 must be 64 lowercase hex digits")

    @property
    def observer_model_name(self) -> str:
        """Device Observer Model Name: the model's name and version (LO: at most 64)."""
        return f"{self.name} {self.version}"[:64]

    @property
    def device_uid(self) -> str:
        """One UID per (name, version, weights): IHE AIR wants a new Device UID when a model changes."""
        key = f"{self.name}\x00{self.version}\x00{self.weights_sha256}"
        return f"2.25.{uuid.uuid5(_ALGORITHM_UID_NAMESPACE, key).int}"


@dataclass(frozen=True)
class ReplacedDocument:
    """The SR that a superseding job's SR replaces (PredecessorDocumentsSequence)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_class_uid", "sop_instance_uid"):
            _uid(getattr(self, name), f"ReplacedDocument.{name}")


def sr_uids(prefix: str, job_id: int | str, attempt: int) -> tuple[str, str]:
    """(Series, SOP Instance UID) of one attempt of one job: deterministic, so a re-sent SR replaces
    itself in the PACS. One entropy string with separators, because pydicom joins its sources
    without one (job 1 attempt 23 and job 12 attempt 3 would collide)."""
    _typed(prefix, str, "prefix")
    if not prefix.endswith(".") or len(prefix) > 40 or not re.match(RE_VALID_UID, prefix + "1"):
        raise ValueError(f"prefix must be a UID root ending in '.', at most 40 characters: {prefix!r}")
    _typed(job_id, (int, str), "job_id")
    if not str(job_id).strip():
        raise ValueError("job_id must not be empty")
    _positive_int(attempt, "attempt")
    base = f"msvlm-node/sr/{job_id}/{attempt}"
    series = generate_uid(prefix=prefix, entropy_srcs=[base + "/series"])
    sop = generate_uid(prefix=prefix, entropy_srcs=[base + "/instance"])
    return str(series), str(sop)


def wrap_text(text: str, width: int = WRAP_WIDTH) -> str:
    """Hard-wrap at ``width`` keeping paragraphs, line breaks and list items; CR LF between lines.
    Tabs become spaces, other control characters go (viewers draw them as garbage), blank-line
    runs become one, and a word longer than ``width`` is split so that no line exceeds it."""
    _typed(text, str, "text")
    cleaned = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4))
    out: list[str] = []
    for line in (raw.rstrip() for raw in cleaned.split("\n")):
        if not line.strip():
            if out and out[-1]:
                out.append("")
            continue
        lead = _BULLET.match(line)
        indent = " " * len(lead.group(1)) if lead else ""
        out.extend(
            textwrap.wrap(
                line, width=width, subsequent_indent=indent, break_long_words=True, break_on_hyphens=False
            )
        )
    while out and not out[-1]:
        out.pop()
    return "\r\n".join(out)


def _evidence_header(evidence: Sequence[Dataset]) -> Dataset:
    """Check the evidence; return a copy of the first instance that highdicom reads safely.

    highdicom reads Type 2 patient/study attributes by attribute access (AttributeError where a
    scanner left one out), rejects a sex outside M/F/O and logs a caret-less Patient's Name at
    WARNING (patient data above DEBUG). So: fill absent ones empty, blank a bad sex, mask the name.
    """
    if isinstance(evidence, str | bytes) or not isinstance(evidence, Sequence):
        raise TypeError("evidence must be a sequence of pydicom Datasets")
    if not evidence:
        raise ValueError("evidence must list at least one source instance")
    seen: set[str] = set()
    for index, ds in enumerate(evidence):
        _typed(ds, Dataset, f"evidence[{index}]")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
            _uid(ds.get(keyword, ""), f"evidence[{index}].{keyword}")
        if ds.StudyInstanceUID != evidence[0].StudyInstanceUID:
            raise ValueError(f"evidence[{index}] belongs to another study: an SR joins exactly one study")
        if ds.SOPInstanceUID in seen:
            raise ValueError(f"evidence[{index}] repeats SOP Instance {ds.SOPInstanceUID}")
        seen.add(ds.SOPInstanceUID)
    header = copy.deepcopy(evidence[0])
    for keyword in _TYPE2:
        if header.get(keyword) is None:
            setattr(header, keyword, "")
    if header.PatientSex not in ("M", "F", "O", ""):
        header.PatientSex = ""
    header.PatientName = "MASKED^"
    return header


def _content(
    findings_text: str,
    impression_text: str,
    findings: Sequence[CodedFinding],
    device: DeviceInfo,
    algorithm: AlgorithmInfo,
    nested: bool,
) -> hd.sr.ContainerContentItem:
    """The TID 2000 tree. Every container is SEPARATE: with CONTINUOUS, viewers join the
    children into running prose and the coded findings run into the narrative."""
    findings_items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(FINDING, wrap_text(findings_text), relationship_type="CONTAINS")
    ]
    for finding in findings:
        code = hd.sr.CodeContentItem(
            finding.concept, PRESENT if finding.present else ABSENT, relationship_type="CONTAINS"
        )
        value = f"{finding.probability:.3f}"
        findings_items.append(code)
        children: list[hd.sr.ContentItem] = [finding.site.item()] if finding.site is not None else []
        if nested:
            children.append(hd.sr.TextContentItem(PROBABILITY, value, "HAS PROPERTIES"))
            if finding.key_image is not None:
                children.append(finding.key_image.item("INFERRED FROM"))
                if finding.key_region is not None:
                    children.append(finding.key_image.region_item(finding.key_region))
        if children:
            code.ContentSequence = hd.sr.ContentSequence(children)
        if not nested:
            findings_items.append(hd.sr.TextContentItem(PROBABILITY, value, "CONTAINS"))
            if finding.key_image is not None:
                findings_items.append(finding.key_image.item("CONTAINS"))
    findings_section = hd.sr.ContainerContentItem(
        FINDINGS, is_content_continuous=False, relationship_type="CONTAINS"
    )
    findings_section.ContentSequence = hd.sr.ContentSequence(findings_items)
    impressions_section = hd.sr.ContainerContentItem(
        IMPRESSIONS, is_content_continuous=False, relationship_type="CONTAINS"
    )
    impressions_section.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(IMPRESSION, wrap_text(impression_text), relationship_type="CONTAINS")]
    )
    observer = hd.sr.ObserverContext(
        codes.cid270.Device,
        hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device.uid,
            name=device.name,
            manufacturer_name=device.manufacturer,
            model_name=algorithm.observer_model_name,
        ),
    )
    root = hd.sr.ContainerContentItem(DOCUMENT_TITLE, is_content_continuous=False, template_id="2000")
    root.ContentSequence = hd.sr.ContentSequence(
        [
            *hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE_EN_US),
            *hd.sr.ObservationContext(observer_device_context=observer),
            findings_section,
            impressions_section,
        ]
    )
    return root


def _algorithm_equipment(algorithm: AlgorithmInfo, when: datetime) -> Dataset:
    """The IHE AIR Contributing Equipment item of the model.

    Built by hand because highdicom's ContributingEquipment accepts only CID 7005 purposes.
    The weights' SHA-256 (64 hex digits) is the DeviceSerialNumber: LO holds exactly 64
    characters, and like a serial number it tells two builds of the same model apart.
    """
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.Manufacturer = algorithm.manufacturer
    item.ManufacturerModelName = algorithm.name
    item.SoftwareVersions = algorithm.version
    item.DeviceSerialNumber = algorithm.weights_sha256
    item.DeviceUID = algorithm.device_uid
    item.ContributionDateTime = DT(when)
    item.ContributionDescription = (
        f"{algorithm.name} {algorithm.version} wrote the report text and "
        f"coded findings; weights SHA-256 {algorithm.weights_sha256}"
    )
    return item


def build_report_sr(
    *,
    evidence: Sequence[Dataset],
    findings_text: str,
    impression_text: str,
    findings: Sequence[CodedFinding],
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    device: DeviceInfo,
    algorithm: AlgorithmInfo,
    document: DocumentKind,
    series_description: str,
    institution_name: str | None = None,
    replaces: ReplacedDocument | None = None,
    content_datetime: datetime | None = None,
) -> Dataset:
    """The model's report as a Basic Text or Comprehensive SR that joins the source study.

    ``evidence`` are the source instances' headers (``stop_before_pixels``): patient and study
    come from the first; all must be of one study; every one is listed in
    CurrentRequestedProcedureEvidenceSequence, grouped by series. The document is COMPLETE,
    UNVERIFIED and PRELIMINARY (no radiologist has signed it) and is written as a Part 10
    file in Explicit VR Little Endian by ``ds.save_as(path, enforce_file_format=True)``.
    """
    header = _evidence_header(evidence)
    for what, value in (("findings_text", findings_text), ("impression_text", impression_text)):
        if not wrap_text(value):
            raise ValueError(f"{what} must not be empty")
    if isinstance(findings, str | bytes) or not isinstance(findings, Sequence):
        raise TypeError("findings must be a sequence of CodedFinding")
    for index, finding in enumerate(findings):
        _typed(finding, CodedFinding, f"findings[{index}]")
    if len({f.key for f in findings}) != len(findings):
        raise ValueError("findings repeat a key: each output of the findings head appears once")
    if len({(f.code_value, f.coding_scheme) for f in findings}) != len(findings):
        raise ValueError("findings repeat a concept: each coded finding appears once")
    _uid(series_instance_uid, "series_instance_uid"), _uid(sop_instance_uid, "sop_instance_uid")
    _positive_int(series_number, "series_number"), _positive_int(instance_number, "instance_number")
    _typed(device, DeviceInfo, "device")
    _typed(algorithm, AlgorithmInfo, "algorithm")
    if document not in _SOP_CLASS:
        raise ValueError(f"document must be one of {sorted(_SOP_CLASS)}, got {document!r}")
    _text(series_description, "series_description")
    if institution_name is not None:
        _text(institution_name, "institution_name")
    _typed(replaces, (ReplacedDocument, type(None)), "replaces")
    if replaces is not None and replaces.sop_instance_uid == sop_instance_uid:
        raise ValueError("an SR cannot replace itself: replaces.sop_instance_uid is this SR's UID")
    content_datetime = datetime.now() if content_datetime is None else content_datetime
    _typed(content_datetime, datetime, "content_datetime")

    ours = [
        findings_text,
        impression_text,
        series_description,
        institution_name or "",
        device.name,
        algorithm.name,
        algorithm.version,
        *(f.code_meaning for f in findings),
        *(f.site.name for f in findings if f.site is not None),
    ]
    # UTF-8 when our text needs it: the copied patient/study values are decoded str and re-encode.
    charset = header.get("SpecificCharacterSet") if all(s.isascii() for s in ours) else "ISO_IR 192"
    used = {f.coding_scheme for f in findings} | {s for f in findings if f.site for s in f.site.schemes}
    schemes = sorted({"99IHE", *(scheme for scheme in used if scheme.startswith("99"))})
    node_equipment = hd.ContributingEquipment(
        manufacturer=SR_MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=device.model_name,
        software_versions=device.software_version,
        station_name=device.station_name,
        institution_name=institution_name,
        contribution_datetime=content_datetime,
        contribution_description="Ran the model on the source study and wrote this report",
    )
    node_equipment.DeviceUID = device.uid
    previous = None
    if replaces is not None:
        predecessor = Dataset()
        predecessor.StudyInstanceUID = replaces.study_instance_uid
        predecessor.SeriesInstanceUID = replaces.series_instance_uid
        predecessor.SOPClassUID = replaces.sop_class_uid
        predecessor.SOPInstanceUID = replaces.sop_instance_uid
        previous = [predecessor]

    # highdicom has no Basic Text SR class; the tree holds only value types and relationships
    # that Basic Text allows, so it is built as Comprehensive and given the Basic SOP Class.
    content = _content(
        findings_text, impression_text, findings, device, algorithm, nested=document == "comprehensive"
    )
    try:
        sr = hd.sr.ComprehensiveSR(
            evidence=[header, *evidence[1:]],
            content=content,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            is_complete=True,
            is_final=False,
            is_verified=False,  # COMPLETE, PRELIMINARY, UNVERIFIED
            manufacturer=SR_MANUFACTURER,
            manufacturer_model_name=device.model_name,
            software_versions=device.software_version,
            institution_name=institution_name,
            previous_versions=previous,
            contributing_equipment=[node_equipment],
            series_description=series_description,
            specific_character_set=charset,
            content_date=content_datetime.date(),
            content_time=content_datetime.time(),
            series_date=content_datetime.date(),
            series_time=content_datetime.time(),
            coding_schemes=[
                CodingSchemeIdentificationItem(designator=s, name=_SCHEME_NAMES.get(s, s)) for s in schemes
            ],
        )
    except KeyError as exc:  # highdicom looks up the IOD of the first instance's SOP Class
        raise ValueError(
            f"evidence[0] has SOP Class {evidence[0].SOPClassUID}, not a standard IOD "
            "that patient/study can be copied from"
        ) from exc
    out = Dataset(sr)  # a plain Dataset: callers need no highdicom class, and Basic has none
    out.preamble = sr.preamble
    out.file_meta = sr.file_meta
    out.PatientName = copy.deepcopy(evidence[0].get("PatientName", ""))  # unmask (_evidence_header)
    out.SOPClassUID = out.file_meta.MediaStorageSOPClassUID = _SOP_CLASS[document]
    out.InstanceCreatorUID = device.uid
    if device.station_name is not None:
        out.StationName = device.station_name
    if content_datetime.tzinfo is not None:
        out.TimezoneOffsetFromUTC = content_datetime.strftime("%z")
    out.ContributingEquipmentSequence.append(_algorithm_equipment(algorithm, content_datetime))
    return out
