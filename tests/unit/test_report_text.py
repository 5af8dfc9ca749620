"""How generated text becomes the SR's Findings and Impression."""

from __future__ import annotations

from node.admin import finding_line
from node.narrative import (
    Restatement,
    impression_from_findings,
    restate_measurements,
    split_report,
    tidy_sentences,
)
from node.sr import CodedFinding


def test_headings_split_findings_from_impression_whatever_the_spacing() -> None:
    findings, impression = split_report(
        "findings : an 8 mm nodule in the right upper lobe . no pleural effusion . "
        "impression : pulmonary nodule , ct follow-up advised ."
    )
    assert findings == "An 8 mm nodule in the right upper lobe. No pleural effusion."
    assert impression == "Pulmonary nodule, CT follow-up advised."


def test_text_without_headings_is_all_findings() -> None:
    assert split_report("Normal study.") == ("Normal study.", "")
    assert split_report("  ") == ("No findings text was generated.", "")


def _coded(key: str, display: str, present: bool) -> CodedFinding:
    return CodedFinding(
        key=key,
        display=display,
        code_value="1",
        coding_scheme="SCT",
        code_meaning=display,
        probability=0.9 if present else 0.1,
        present=present,
    )


def test_a_missing_impression_is_made_from_the_coded_calls() -> None:
    nodule = _coded("lung_nodule", "Lung nodule", True)
    effusion = _coded("pleural_effusion", "Pleural effusion", True)
    cardio = _coded("cardiomegaly", "Cardiomegaly", False)
    assert impression_from_findings([nodule, cardio, effusion]) == "1. Lung nodule. 2. Pleural effusion."
    assert impression_from_findings([cardio, _coded("liver_lesion", "Liver lesion", False)]) == (
        "None of the findings assessed (cardiomegaly, liver lesion) is present."
    )
    assert impression_from_findings([]) == "See findings."


def test_sentence_case_and_acronyms() -> None:
    assert (
        tidy_sentences("rectal wall thickening on t2 and dwi .  adc is low .")
        == "Rectal wall thickening on T2 and DWI. ADC is low."
    )


KEYS = ("lung_nodule", "pleural_effusion", "liver_lesion", "lymphadenopathy", "rectal_lesion")


def test_the_impression_gives_each_finding_the_size_the_findings_give_it() -> None:
    """The `msvlm-node demo` study's report as the demo weights (version 6) wrote it."""
    findings = (
        "There is a 12 mm solid nodule in the right lower lobe. There is a large left pleural effusion. "
        "No cardiomegaly. The liver is normal without focal lesion."
    )
    impression, changes = restate_measurements(
        findings, "1. 16 mm pulmonary nodule in the right lower lobe. 2. Large left pleural effusion.", KEYS
    )
    assert impression == "1. 12 mm pulmonary nodule in the right lower lobe. 2. Large left pleural effusion."
    assert changes == [Restatement("lung_nodule", findings_mm="12", impression_mm="16")]


def test_each_finding_keeps_its_own_size_and_agreeing_sizes_are_left_alone() -> None:
    findings = "An 8.5 mm nodule in the left upper lobe. There is a 31 mm lesion in segment 6 of the liver."
    impression = (
        "1. 9 mm pulmonary nodule in the left upper lobe. 2. 31 mm liver lesion. 3. 8.5mm nodule again."
    )
    restated, changes = restate_measurements(findings, impression, KEYS)
    assert (
        restated
        == "1. 8.5 mm pulmonary nodule in the left upper lobe. 2. 31 mm liver lesion. 3. 8.5mm nodule again."
    )
    assert [c.key for c in changes] == ["lung_nodule"]


def test_what_cannot_be_matched_one_to_one_is_left_as_written() -> None:
    cases = [
        # the findings give no size, or two, or deny the finding
        ("A solid nodule in the right upper lobe.", "14 mm pulmonary nodule."),
        ("A 12 x 8 mm nodule in the right upper lobe.", "14 mm pulmonary nodule."),
        ("No pulmonary nodule. A 20 mm liver lesion.", "14 mm pulmonary nodule."),
        # the impression's sentence names two findings, or gives two sizes
        ("A 12 mm nodule in the right upper lobe.", "14 mm pulmonary nodule and liver lesion."),
        ("A 12 mm nodule in the right upper lobe.", "14 mm pulmonary nodule, previously 10 mm."),
        # the impression's size is a threshold, not the nodule's
        ("A 12 mm nodule in the right upper lobe.", "Pulmonary nodule; nodules over 8 mm warrant PET-CT."),
        # the findings' size is not the nodule's
        ("Pulmonary nodule in the right upper lobe, within 5 mm of the fissure.", "9 mm pulmonary nodule."),
        # no impression at all
        ("A 12 mm nodule in the right upper lobe.", ""),
    ]
    for findings, impression in cases:
        assert restate_measurements(findings, impression, KEYS) == (impression, []), (findings, impression)


def test_a_finding_reads_on_one_terminal_line_with_its_site_key_image_and_correction() -> None:
    nodule = {
        "display": "Lung nodule",
        "present": True,
        "probability": 0.988,
        "site": "right lower lobe",
        "site_probability": 0.6,
        "side_from_images": "right",
        "key_image": {"series_number": 4, "instance_number": 2, "sop_instance_uid": "1.2.3"},
        "impression_restated_from_mm": "16",
    }
    assert finding_line(nodule) == (
        "Lung nodule PRESENT p=0.99 [site: right lower lobe, p=0.60; side read from the images] "
        "[key image: series 4, image 2] [impression said 16 mm]"
    )
    assert finding_line({"display": "Cardiomegaly", "present": False, "probability": 0.001}) == (
        "Cardiomegaly absent p=0.00"
    )
    unnumbered = {**nodule, "key_image": {"series_number": None, "instance_number": None}}
    assert "[key image: series ?, image ?]" in finding_line(unnumbered)  # a scanner left them out
    region = {**nodule["key_image"], "region": [192.0, 64.0, 256.0, 128.5]}  # type: ignore[dict-item]
    assert "[key image: series 4, image 2, columns 192-256, rows 64-128.5]" in finding_line(
        {**nodule, "key_image": region}
    )
