"""How generated text becomes the SR's Findings and Impression."""

from __future__ import annotations

from node.worker import split_report, tidy_sentences


def test_headings_split_findings_from_impression_whatever_the_spacing() -> None:
    findings, impression = split_report(
        "findings : an 8 mm nodule in the right upper lobe . no pleural effusion . "
        "impression : pulmonary nodule , ct follow-up advised ."
    )
    assert findings == "An 8 mm nodule in the right upper lobe. No pleural effusion."
    assert impression == "Pulmonary nodule, CT follow-up advised."


def test_text_without_headings_is_all_findings() -> None:
    assert split_report("Normal study.") == ("Normal study.", "See findings.")
    assert split_report("  ") == ("No findings text was generated.", "See findings.")


def test_sentence_case_and_acronyms() -> None:
    assert (
        tidy_sentences("rectal wall thickening on t2 and dwi .  adc is low .")
        == "Rectal wall thickening on T2 and DWI. ADC is low."
    )
