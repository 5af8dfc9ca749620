"""How generated text becomes the SR's Findings and Impression."""

from __future__ import annotations

from node.sr import CodedFinding
from node.worker import impression_from_findings, split_report, tidy_sentences


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
