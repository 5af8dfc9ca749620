"""The SR writer against real validators (dciodvfy, dsrdump) and a read-back with highdicom."""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import CTImageStorage

from node.sr import (
    ABSENT,
    PRESENT,
    SR_MANUFACTURER,
    WRAP_WIDTH,
    AlgorithmInfo,
    CodedFinding,
    DeviceInfo,
    ImageReference,
    ReplacedDocument,
    build_report_sr,
    sr_uids,
    wrap_text,
)
from node.srcheck import SrValidationError, SrValidatorMissingError, validate_sr
from tests.support import dcmtk
from tests.support.sr_fixtures import (
    ALGORITHM,
    DEVICE,
    FINDINGS,
    IMPRESSION_TEXT,
    KEY_IMAGE,
    KEY_REGION,
    PREFIX,
    STUDY,
    build_kwargs,
    ct_evidence,
    evidence_uids,
    read_back,
)

pytestmark = pytest.mark.integration

BASIC = pydicom.uid.BasicTextSRStorage
COMPREHENSIVE = pydicom.uid.ComprehensiveSRStorage
#: dciodvfy (2022) does not list Device UID in Contributing Equipment items; IHE AIR requires it.
#: It does not know our local coding scheme (99MSVLM, the mesorectal node's site), which
#: PS3.16 8 allows and the SR identifies in its Coding Scheme Identification Sequence.
KNOWN_WARNINGS = (
    "(0x0018,0x1002) UI Device UID",
    "Standard Extended SOP Class",
    "Unrecognized defined term <99MSVLM>",
)


def _write(tmp_path: Path, ds: pydicom.Dataset, name: str = "sr.dcm") -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("replaces", [False, True], ids=["new", "replaces"])
@pytest.mark.parametrize("document", ["basic", "comprehensive"])
def test_sr_validates_and_reads_back(tmp_path: Path, document: str, replaces: bool) -> None:
    kwargs = build_kwargs(document, replaces=replaces)
    path = _write(tmp_path, build_report_sr(**kwargs))  # type: ignore[arg-type]

    warnings = validate_sr(path)
    assert all(any(k in w for k in KNOWN_WARNINGS) for w in warnings), warnings

    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (
        ds.SOPClassUID
        == ds.file_meta.MediaStorageSOPClassUID
        == (BASIC if document == "basic" else COMPREHENSIVE)
    )
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        kwargs["series_instance_uid"],
        kwargs["sop_instance_uid"],
    )
    # the SR joins the source study, in a new SR series named after the AI
    source = ct_evidence()[0]
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
    ):
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.Modality == "SR" and ds.SeriesNumber == 9001 and ds.InstanceNumber == 1
    assert ds.SeriesDescription == "MS-VLM AI report (not verified)"
    assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in ct_evidence()}
    # flags, loop safety, creator
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert ds.Manufacturer == SR_MANUFACTURER == "msvlm-node"
    assert ds.InstanceCreatorUID == DEVICE.uid
    assert (ds.ContentDate, ds.ContentTime) == ("20260102", "030405")
    # every source instance, exactly once, grouped study -> series
    expected = [
        (s.StudyInstanceUID, s.SeriesInstanceUID, s.SOPClassUID, s.SOPInstanceUID) for s in ct_evidence()
    ]
    assert evidence_uids(ds) == expected
    assert len(ds.CurrentRequestedProcedureEvidenceSequence) == 1
    assert len(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence) == 2
    assert "PertinentOtherEvidenceSequence" not in ds
    if replaces:
        old = kwargs["replaces"]
        assert isinstance(old, ReplacedDocument)
        pred = ds.PredecessorDocumentsSequence[0]
        assert pred.StudyInstanceUID == old.study_instance_uid
        assert pred.ReferencedSeriesSequence[0].SeriesInstanceUID == old.series_instance_uid
        ref = pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            old.sop_class_uid,
            old.sop_instance_uid,
        )
    else:
        assert "PredecessorDocumentsSequence" not in ds

    # the content a viewer shows
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    back = read_back(ds)
    assert back.continuity == {"root": "SEPARATE", "Findings": "SEPARATE", "Impressions": "SEPARATE"}
    assert back.findings_text == wrap_text(str(kwargs["findings_text"]))
    assert back.impression_text == wrap_text(IMPRESSION_TEXT)
    assert "Small right pleural effusion" in back.findings_text and "\r\n\r\n" in back.findings_text
    assert all(len(line) <= WRAP_WIDTH for line in back.findings_text.split("\r\n"))
    assert max(len(line) for line in back.findings_text.split("\r\n")) > 70  # wrapped, not chopped
    assert back.coded == {
        (f.code_value, f.coding_scheme): (f.code_meaning, f.present, pytest.approx(f.probability, abs=5e-4))
        for f in FINDINGS
    }
    # where each present finding is: the Finding Site with its modifier
    assert back.sites == {
        ("60046008", "SCT"): ("3120008", "24028007"),
        ("30746006", "SCT"): ("mesorectal-node",),
    }
    # the image that shows the nodule best, among the evidence, for a viewer to open
    assert back.key_images == {
        ("786838002", "SCT"): (
            "INFERRED FROM" if document == "comprehensive" else "CONTAINS",
            CTImageStorage,
            KEY_IMAGE.sop_instance_uid,
            (),
        ),
    }
    assert KEY_IMAGE.sop_instance_uid in {uid for *_, uid in expected}
    # and where on it, as a closed rectangle a viewer outlines: Comprehensive SR only, Basic
    # Text SR has no SCOORD
    left, top, right, bottom = KEY_REGION
    corners = ((left, top), (right, top), (right, bottom), (left, bottom), (left, top))
    source = ("SELECTED FROM", CTImageStorage, KEY_IMAGE.sop_instance_uid, ())
    assert back.key_regions == (
        {("786838002", "SCT"): ("INFERRED FROM", "POLYLINE", corners, source)}
        if document == "comprehensive"
        else {}
    )
    assert back.observer == {
        "Observer Type": "Device",
        "Device Observer UID": DEVICE.uid,
        "Device Observer Name": DEVICE.name,
        "Device Observer Manufacturer": "msvlm-node",
        "Device Observer Model Name": "MS-VLM demo 0.3.1",
    }

    # contributing equipment: the node and the algorithm (IHE AIR)
    equipment = {e.PurposeOfReferenceCodeSequence[0].CodeValue: e for e in ds.ContributingEquipmentSequence}
    algorithm = equipment["Newcode1"]
    assert algorithm.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    assert (algorithm.Manufacturer, algorithm.ManufacturerModelName, algorithm.SoftwareVersions) == (
        "msvlm-node",
        ALGORITHM.name,
        ALGORITHM.version,
    )
    assert algorithm.DeviceSerialNumber == ALGORITHM.weights_sha256
    assert algorithm.DeviceUID == ALGORITHM.device_uid
    node = [e for e in ds.ContributingEquipmentSequence if e.get("DeviceUID") == DEVICE.uid]
    assert [(e.Manufacturer, e.PurposeOfReferenceCodeSequence[0].CodeValue) for e in node] == [
        ("msvlm-node", "109102")
    ]
    assert equipment["109101"].Manufacturer == "ACME"  # the scanner, from the evidence (highdicom)
    schemes = {s.CodingSchemeDesignator for s in ds.CodingSchemeIdentificationSequence}
    assert {"99IHE", "99MSVLM"} <= schemes  # the private site code's scheme is identified too


def test_dsrdump_prints_the_tree(tmp_path: Path) -> None:
    path = _write(tmp_path, build_report_sr(**build_kwargs("basic")))  # type: ignore[arg-type]
    dump = dcmtk.run("dsrdump", "+Pl", str(path))
    assert dump.returncode == 0, dump.stderr
    assert 'CODE:(,,"Pneumothorax")=(272519000,SCT,"Absent")' in dump.stdout
    assert '<contains TEXT:(,,"Probability")="0.031">' in dump.stdout
    assert '<has concept mod CODE:(,,"Finding Site")=(3120008,SCT,"Pleura")>' in dump.stdout
    assert '<has concept mod CODE:(,,"Laterality")=(24028007,SCT,"Right")>' in dump.stdout
    assert "Diagnostic Imaging Report" in dump.stdout and "E:" not in dump.stderr


def test_highdicom_reads_comprehensive_sr(tmp_path: Path) -> None:
    path = _write(tmp_path, build_report_sr(**build_kwargs("comprehensive")))  # type: ignore[arg-type]
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    assert len(sr.get_evidence()) == len(ct_evidence())
    codes = hd.sr.utils.find_content_items(sr, value_type=hd.sr.ValueTypeValues.CODE, recursive=True)
    values = {item.name.meaning: item.value for item in codes}
    assert values["Pneumothorax"] == ABSENT and values["Pleural effusion"] == PRESENT


def test_uids_deterministic_per_job_and_attempt() -> None:
    assert sr_uids(PREFIX, 17, 1) == sr_uids(PREFIX, 17, 1)
    series, sop = sr_uids(PREFIX, 17, 1)
    assert series != sop and all(u.startswith(PREFIX) and len(u) <= 64 for u in (series, sop))
    assert pydicom.uid.UID(sop).is_valid and pydicom.uid.UID(series).is_valid
    others = {sr_uids(PREFIX, 17, 2), sr_uids(PREFIX, 18, 1), sr_uids(PREFIX, 1, 71), sr_uids(PREFIX, 11, 7)}
    assert len(others) == 4 and (series, sop) not in others
    assert not {series, sop} & {u for pair in others for u in pair}
    first = build_report_sr(**build_kwargs("basic"))  # type: ignore[arg-type]
    again = build_report_sr(**build_kwargs("basic"))  # type: ignore[arg-type]
    retry = build_report_sr(**build_kwargs("basic", attempt=2))  # type: ignore[arg-type]
    assert first.SOPInstanceUID == again.SOPInstanceUID != retry.SOPInstanceUID
    with pytest.raises(ValueError):
        sr_uids("1.2.3", 1, 1)
    with pytest.raises(ValueError):
        sr_uids(PREFIX, 1, 0)
    with pytest.raises(TypeError):
        sr_uids(PREFIX, True, 1)


def test_wrap_text_keeps_paragraphs_and_lists() -> None:
    text = "word " * 40 + "\n\n\n\n- " + "item " * 30 + "\n\tindented\x00line\n" + "x" * 200
    lines = wrap_text(text).split("\r\n")
    assert all(len(line) <= WRAP_WIDTH for line in lines)
    assert lines.count("") == 1  # four blank lines collapse into one paragraph break
    assert lines[lines.index("") + 1].startswith("- item") and lines[lines.index("") + 2].startswith("  item")
    assert "    indentedline" in lines and "".join(lines[-3:]) == "x" * 200
    assert wrap_text(" \n\t\n") == ""


def test_odd_source_headers_build_valid_sr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A caret-less name, absent Type 2 attributes, an invalid sex and non-ASCII model text."""
    evidence = ct_evidence(per_series=1)
    for ds in evidence:
        ds.PatientName = "ANONYMIZED"
        ds.PatientSex = "U"
        del ds.StudyID, ds.ReferringPhysicianName, ds.AccessionNumber
    kwargs = build_kwargs("basic")
    kwargs.update(
        evidence=evidence,
        findings_text="Nodule \u2265 6 mm, 12 \u00b5Sv.",
        impression_text="Keine akute Pathologie \u00e4\u00f6\u00fc.",
        content_datetime=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1))),
    )
    with caplog.at_level(logging.DEBUG):
        path = _write(tmp_path, build_report_sr(**kwargs))  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG and "ANONYMIZED" in r.getMessage()]
    validate_sr(path)
    ds = pydicom.dcmread(path)
    assert ds.PatientName == "ANONYMIZED" and ds.PatientSex == "" and ds.StudyID == ""
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.TimezoneOffsetFromUTC == "+0100"
    assert read_back(ds).findings_text == "Nodule \u2265 6 mm, 12 \u00b5Sv."


def _bad(**changes: object) -> dict[str, object]:
    kwargs = build_kwargs("basic")
    kwargs.update(changes)
    return kwargs


OTHER_STUDY = ct_evidence(per_series=1, study="1.2.826.0.1.3680043.8.498.71.2000")
UNKNOWN_IOD = ct_evidence(per_series=1)
UNKNOWN_IOD[0].SOPClassUID = "1.2.826.0.1.3680043.8.498.71.99"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (_bad(findings_text=""), ValueError),
        (_bad(findings_text=" \n\t "), ValueError),
        (_bad(impression_text=""), ValueError),
        (_bad(findings_text=None), TypeError),
        (_bad(evidence=[]), ValueError),
        (_bad(evidence=ct_evidence(per_series=1) + OTHER_STUDY), ValueError),
        (_bad(evidence=[*ct_evidence(per_series=1), ct_evidence(per_series=1)[0]]), ValueError),
        (_bad(evidence=["not a dataset"]), TypeError),
        (_bad(evidence=ct_evidence()[0]), TypeError),
        (_bad(evidence=UNKNOWN_IOD), ValueError),
        (_bad(evidence=ct_evidence()[:1]), ValueError),  # the nodule's key image is not among it
        (_bad(findings=[FINDINGS[0], FINDINGS[0]]), ValueError),
        (_bad(findings=[{"key": "x"}]), TypeError),
        (_bad(document="enhanced"), ValueError),
        (_bad(series_instance_uid="1.2.03"), ValueError),
        (_bad(series_number=0), ValueError),
        (_bad(instance_number="1"), TypeError),
        (_bad(series_description=""), ValueError),
        (_bad(device="MSVLM"), TypeError),
        (_bad(content_datetime="20260101"), TypeError),
    ],
    ids=lambda v: "" if isinstance(v, dict) else v.__name__,
)
def test_invalid_input_is_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        build_report_sr(**kwargs)  # type: ignore[arg-type]


def test_replacing_itself_is_refused() -> None:
    kwargs = build_kwargs("basic")
    me = ReplacedDocument(
        study_instance_uid=STUDY,
        series_instance_uid=str(kwargs["series_instance_uid"]),
        sop_class_uid=BASIC,
        sop_instance_uid=str(kwargs["sop_instance_uid"]),
    )
    with pytest.raises(ValueError, match="replace itself"):
        build_report_sr(**{**kwargs, "replaces": me})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "probability, error",
    [
        (-0.01, ValueError),
        (1.5, ValueError),
        (float("nan"), ValueError),
        (True, TypeError),
        ("0.5", TypeError),
    ],
)
def test_probability_outside_unit_interval_is_refused(probability: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        CodedFinding(
            key="k",
            display="K",
            code_value="1",
            coding_scheme="SCT",
            code_meaning="K",
            probability=probability,
            present=True,
        )  # type: ignore[arg-type]


def test_value_objects_validate() -> None:
    with pytest.raises(ValueError):
        ImageReference(sop_class_uid=KEY_IMAGE.sop_class_uid, sop_instance_uid="1.2.03")
    with pytest.raises(ValueError):
        ImageReference(sop_class_uid=KEY_IMAGE.sop_class_uid, sop_instance_uid=STUDY, frame_number=0)
    with pytest.raises(ValueError, match="absent"):
        dataclasses.replace(FINDINGS[0], key_image=KEY_IMAGE)  # an absent finding has no image
    nodule = next(f for f in FINDINGS if f.key_region is not None)
    with pytest.raises(ValueError, match="without its key_image"):
        dataclasses.replace(nodule, key_image=None)
    inverted, negative = (40.0, 16.0, 32.0, 24.0), (-1.0, 16.0, 40.0, 24.0)
    for bad in (inverted, negative, (32.0, 16.0, math.inf, 24.0), (1, 2, 3)):
        with pytest.raises(ValueError, match="key_region"):
            dataclasses.replace(nodule, key_region=bad)
    with pytest.raises(TypeError, match="key_region"):
        dataclasses.replace(nodule, key_region=[32.0, 16.0, 40.0, 24.0])
    with pytest.raises(ValueError, match="loop safety|recognises"):
        DeviceInfo(uid=DEVICE.uid, name="n", manufacturer="ACME", model_name="m", software_version="1")
    with pytest.raises(ValueError):
        DeviceInfo(uid="not-a-uid", name="n", manufacturer="msvlm-node", model_name="m", software_version="1")
    with pytest.raises(ValueError):
        AlgorithmInfo(name="m", version="1", weights_sha256="ABC")
    with pytest.raises(ValueError):
        CodedFinding(
            key="k",
            display="K",
            code_value="1",
            coding_scheme="S" * 17,
            code_meaning="K",
            probability=0.5,
            present=True,
        )
    with pytest.raises(TypeError):
        CodedFinding(
            key="k",
            display="K",
            code_value="1",
            coding_scheme="SCT",
            code_meaning="K",
            probability=0.5,
            present=1,
        )  # type: ignore[arg-type]
    assert (
        AlgorithmInfo(name="m", version="1", weights_sha256="a" * 64).device_uid
        != AlgorithmInfo(name="m", version="1", weights_sha256="b" * 64).device_uid
    )


def test_validator_reports_errors(tmp_path: Path) -> None:
    ds = build_report_sr(**build_kwargs("comprehensive"))  # type: ignore[arg-type]
    del ds.CompletionFlag
    with pytest.raises(SrValidationError) as missing:
        validate_sr(_write(tmp_path, ds, "no-flag.dcm"))
    assert any("dciodvfy: Error" in e and "CompletionFlag" in e for e in missing.value.errors)

    tree = build_report_sr(**build_kwargs("comprehensive"))  # type: ignore[arg-type]
    tree.SOPClassUID = tree.file_meta.MediaStorageSOPClassUID = BASIC  # CODE HAS PROPERTIES: not Basic
    with pytest.raises(SrValidationError) as relationship:
        validate_sr(_write(tmp_path, tree, "bad-tree.dcm"))
    assert any(e.startswith("dsrdump: E:") for e in relationship.value.errors)

    with pytest.raises(SrValidatorMissingError, match="dicom3tools"):
        validate_sr(_write(tmp_path, ds), dciodvfy=tmp_path / "dciodvfy")
    with pytest.raises(SrValidationError, match="does not exist"):
        validate_sr(tmp_path / "absent.dcm")
