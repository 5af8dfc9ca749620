"""Inputs for the SR builder (synthetic CT evidence, device, model, findings) and a reader
that turns a written SR back into plain values, the way a consumer would."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from node.sr import (
    AlgorithmInfo,
    CodedFinding,
    DeviceInfo,
    FindingSite,
    ImageReference,
    ReplacedDocument,
    sr_uids,
)
from tests.support.dicom import ct_slice

PREFIX = "1.2.826.0.1.3680043.8.498.71."
STUDY = "1.2.826.0.1.3680043.8.498.71.1000"
SERIES = ("1.2.826.0.1.3680043.8.498.71.1001", "1.2.826.0.1.3680043.8.498.71.1002")
WHEN = datetime(2026, 1, 2, 3, 4, 5)
DEVICE = DeviceInfo(
    uid="1.2.826.0.1.3680043.8.498.71.7",
    name="MSVLM@ci",
    manufacturer="msvlm-node",
    model_name="msvlm-node",
    software_version="0.1.0",
    station_name="MSVLM",
)
#: the nodule's key image: the second series' first slice (`ct_evidence` makes the same UID)
KEY_IMAGE = ImageReference(
    sop_class_uid=CTImageStorage, sop_instance_uid=generate_uid(entropy_srcs=[STUDY, SERIES[1], "0"])
)
#: where on it: the square of the patch token that shows the nodule (columns 32-40, rows 16-24)
KEY_REGION = (32.0, 16.0, 40.0, 24.0)
ALGORITHM = AlgorithmInfo(name="MS-VLM demo", version="0.3.1", weights_sha256="0123456789abcdef" * 4)
FINDINGS = (
    CodedFinding(
        key="pneumothorax",
        display="Pneumothorax",
        code_value="36118008",
        coding_scheme="SCT",
        code_meaning="Pneumothorax",
        probability=0.031,
        present=False,
    ),
    CodedFinding(
        key="effusion",
        display="Pleural effusion",
        code_value="60046008",
        coding_scheme="SCT",
        code_meaning="Pleural effusion",
        probability=0.912,
        present=True,
        site=FindingSite(
            name="right",
            structure=("3120008", "SCT", "Pleura"),
            modifier=(("272741003", "SCT", "Laterality"), ("24028007", "SCT", "Right")),
        ),
    ),
    CodedFinding(
        key="nodule",
        display="Lung nodule",
        code_value="786838002",
        coding_scheme="SCT",
        code_meaning="Pulmonary nodule",
        probability=0.5,
        present=True,
        key_image=KEY_IMAGE,
        key_region=KEY_REGION,
    ),
    CodedFinding(
        key="nodes",
        display="Lymphadenopathy",
        code_value="30746006",
        coding_scheme="SCT",
        code_meaning="Lymphadenopathy",
        probability=0.7,
        present=True,
        site=FindingSite(
            name="mesorectal", structure=("mesorectal-node", "99MSVLM", "Mesorectal lymph node")
        ),
    ),
)
FINDINGS_TEXT = (
    "Small right pleural effusion with adjacent compressive atelectasis of the right lower lobe, "
    "unchanged in configuration across the axial and coronal reconstructions.\n\n"
    "No pneumothorax. A 6 mm solid nodule in the left upper lobe (series 2, image 41).\n"
    "- Heart size normal.\n"
    "- No mediastinal lymphadenopathy by size criteria on this non-contrast examination of the chest."
)
IMPRESSION_TEXT = (
    "1. Small right pleural effusion.\n2. 6 mm left upper lobe nodule; follow-up CT in 12 months."
)


def ct_evidence(
    *, per_series: int = 3, study: str = STUDY, series: tuple[str, ...] = SERIES
) -> list[Dataset]:
    """Headers of a few CT slices in two series, with the patient/study a scanner would send."""
    headers = []
    for number, series_uid in enumerate(series, start=2):
        for index in range(per_series):
            ds = ct_slice(study=study, series=series_uid, index=index, rows=4)
            del ds.PixelData
            ds.SeriesNumber = number
            ds.PatientName = "DOE^JANE^Q"
            ds.PatientID = "MRN-0042"
            ds.IssuerOfPatientID = "GENERAL"
            ds.PatientBirthDate = "19700304"
            ds.PatientSex = "F"
            ds.PatientAge = "055Y"
            ds.AccessionNumber = "ACC-9001"
            ds.StudyID = "S42"
            ds.StudyTime = "081500"
            ds.StudyDescription = "CT CHEST WO CONTRAST"
            ds.ReferringPhysicianName = "HOUSE^GREGORY"
            ds.Manufacturer = "ACME"
            ds.ManufacturerModelName = "Scanner 9000"
            headers.append(ds)
    return headers


def build_kwargs(
    document: str = "basic", *, replaces: bool = False, job_id: int = 17, attempt: int = 1
) -> dict[str, object]:
    """Keyword arguments for ``build_report_sr`` as the worker would pass them."""
    series_uid, sop_uid = sr_uids(PREFIX, job_id, attempt)
    replaced = None
    if replaces:
        old_series, old_sop = sr_uids(PREFIX, job_id - 1, 1)
        replaced = ReplacedDocument(
            study_instance_uid=STUDY,
            series_instance_uid=old_series,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11",
            sop_instance_uid=old_sop,
        )
    return dict(
        evidence=ct_evidence(),
        findings_text=FINDINGS_TEXT,
        impression_text=IMPRESSION_TEXT,
        findings=list(FINDINGS),
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        series_number=9001,
        instance_number=1,
        device=DEVICE,
        algorithm=ALGORITHM,
        document=document,
        series_description="MS-VLM AI report (not verified)",
        institution_name="General Hospital",
        replaces=replaced,
        content_datetime=WHEN,
    )


#: an IMAGE item read back: relationship, SOP class, SOP instance, frames
ImageRead = tuple[str, str, str, tuple[int, ...]]


@dataclass
class ReadBack:
    """What a consumer gets out of the content tree."""

    findings_text: str = ""
    impression_text: str = ""
    #: (code value, scheme) -> (code meaning, present, probability)
    coded: dict[tuple[str, str], tuple[str, bool, float]] = field(default_factory=dict)
    #: (code value, scheme) of a finding -> its Finding Site's code values: structure, then any modifier's
    sites: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    #: (code value, scheme) of a finding -> its "Best illustration of finding": relationship
    #: (INFERRED FROM under it, or CONTAINS after it in Basic Text), SOP class, SOP instance, frames
    key_images: dict[tuple[str, str], ImageRead] = field(default_factory=dict)
    #: (code value, scheme) of a finding -> the region on its key image: relationship, graphic
    #: type, points, and what it is SELECTED FROM (as `key_images` gives an image)
    key_regions: dict[tuple[str, str], tuple[str, str, tuple[tuple[float, float], ...], ImageRead]] = field(
        default_factory=dict
    )
    observer: dict[str, str] = field(default_factory=dict)
    continuity: dict[str, str] = field(default_factory=dict)


def _image(item: Dataset) -> ImageRead:
    ref = item.ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber", []) or []
    return (
        item.RelationshipType,
        ref.ReferencedSOPClassUID,
        ref.ReferencedSOPInstanceUID,
        tuple(int(f) for f in (frames if isinstance(frames, list | tuple) else [frames])),
    )


def read_back(ds: Dataset) -> ReadBack:
    """Parse the TID 2000 tree with highdicom: nested probability (Comprehensive) or the
    TEXT that follows its CODE (Basic Text)."""
    out = ReadBack(continuity={"root": ds.ContinuityOfContent})
    for item in hd.sr.ContentSequence.from_sequence(ds.ContentSequence):
        meaning = item.name.meaning
        if item.relationship_type == hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT:
            out.observer[meaning] = str(item.value.meaning if item.value_type.value == "CODE" else item.value)
        if item.value_type.value != "CONTAINER":
            continue
        out.continuity[meaning] = item.ContinuityOfContent
        last: tuple[str, str] | None = None
        for child in item.ContentSequence:
            name = child.name
            if name.value == "121071":
                out.findings_text = child.value
            elif name.value == "121073":
                out.impression_text = child.value
            elif child.value_type.value == "CODE":
                last = (name.value, name.scheme_designator)
                present = {"52101004": True, "272519000": False}[child.value.value]
                nested = [
                    c
                    for c in child.get("ContentSequence", [])
                    if c.ConceptNameCodeSequence[0].CodeValue == "122157"
                ]
                probability = float(nested[0].TextValue) if nested else float("nan")
                out.coded[last] = (name.meaning, present, probability)
                for site in child.get("ContentSequence", []):
                    if site.ConceptNameCodeSequence[0].CodeValue == "363698007":
                        assert site.RelationshipType == "HAS CONCEPT MOD"
                        modifiers = [
                            m.ConceptCodeSequence[0].CodeValue for m in site.get("ContentSequence", [])
                        ]
                        out.sites[last] = (site.ConceptCodeSequence[0].CodeValue, *modifiers)
                    if site.ConceptNameCodeSequence[0].CodeValue == "121080":
                        out.key_images[last] = _image(site)
                    if site.ConceptNameCodeSequence[0].CodeValue == "111030":
                        (source,) = site.ContentSequence
                        points = [float(v) for v in site.GraphicData]
                        out.key_regions[last] = (
                            site.RelationshipType,
                            site.GraphicType,
                            tuple(zip(points[::2], points[1::2], strict=True)),
                            _image(source),
                        )
            elif name.value == "121080" and last is not None:
                out.key_images[last] = _image(child)
            elif name.value == "122157" and last is not None:
                meaning_, present, _ = out.coded[last]
                out.coded[last] = (meaning_, present, float(child.value))
    return out


def evidence_uids(ds: Dataset) -> list[tuple[str, str, str, str]]:
    """(study, series, SOP class, SOP instance) listed in CurrentRequestedProcedureEvidenceSequence."""
    return [
        (
            study.StudyInstanceUID,
            series.SeriesInstanceUID,
            ref.ReferencedSOPClassUID,
            ref.ReferencedSOPInstanceUID,
        )
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]
