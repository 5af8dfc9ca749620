"""The report's prose: the generated text split into findings and impression, tidied for
people, and an impression that agrees with the findings it summarises.

The language model writes one text; the SR carries it as a Findings and an Impressions
item. What is done to the text here is done to every report the same way, and each change
to the model's words is recorded with the job's result (`Restatement`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.training.labeller import PATTERNS, mentions

if TYPE_CHECKING:
    from node.sr import CodedFinding

_HEADING = re.compile(r"\b(findings|impression)\s*:\s*", re.IGNORECASE)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")
_ACRONYMS = re.compile(r"\b(ct|mr|mri|dwi|adc|t1|t2|flair|cm|mm)\b", re.IGNORECASE)
_UPPER = {"ct", "mr", "mri", "dwi", "adc", "t1", "t2", "flair"}


def tidy_sentences(text: str) -> str:
    """Report prose as a radiologist writes it: no space before punctuation, sentence case.

    Word-level tokenizers decode "no pleural effusion ." in lower case; the SR
    is read by people.
    """
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    text = _ACRONYMS.sub(
        lambda m: m.group(1).upper() if m.group(1).lower() in _UPPER else m.group(1).lower(), text
    )
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


def split_report(text: str) -> tuple[str, str]:
    """Split generated text into (findings, impression) at its "Findings:"/"Impression:" headings.

    The impression is empty when the model wrote none (`impression_from_findings` stands in).
    """
    sections = {"findings": "", "impression": ""}
    current = "findings"
    position = 0
    for match in _HEADING.finditer(text):
        sections[current] += text[position : match.start()]
        current, position = match.group(1).lower(), match.end()
    sections[current] += text[position:]
    findings = tidy_sentences(sections["findings"]) or "No findings text was generated."
    return findings, tidy_sentences(sections["impression"])


def impression_from_findings(coded: Sequence[CodedFinding]) -> str:
    """The impression when the model ended its report without one: its coded calls, numbered.

    Why: the language model sometimes stops after the findings (1 of 100 held-out phantoms for
    the demo, and the `msvlm-node demo` study), and "see findings" under a positive study
    tells the radiologist nothing; the coded calls are the model's own, and the narrative
    states them (the LM reads the same calls).
    """
    if not coded:
        return "See findings."
    positives = [f.display for f in coded if f.present]
    if positives:
        return " ".join(f"{i}. {display}." for i, display in enumerate(positives, start=1))
    assessed = ", ".join(f.display[:1].lower() + f.display[1:] for f in coded)
    return f"None of the findings assessed ({assessed}) is present."


#: a measurement as reports state it: "12 mm", "8.5 mm", "12mm", "12 x 8 mm" (group 2: the
#: further dimensions)
_MEASUREMENT = re.compile(r"\b(\d+(?:\.\d+)?)((?:\s*[x\u00d7]\s*\d+(?:\.\d+)?)*)\s*mm\b", re.IGNORECASE)
#: a sentence of the findings, or a numbered item or sentence of the impression, as a span:
#: it ends at . ; ! ? followed by a space or the end (not the point of "8.5"), or a line break
_SENTENCE = re.compile(r"[^\n]+?(?:[.;!?](?=\s|$)|$)", re.MULTILINE)


@dataclass(frozen=True)
class Restatement:
    """The impression gave a finding another size than the findings did, and now gives theirs."""

    key: str
    findings_mm: str
    impression_mm: str


def _sentences(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _SENTENCE.finditer(text) if m.group().strip()]


#: how many words after a measurement may name what it measures ("12 mm solid nodule",
#: "29 mm lesion in the left lobe of the liver", "30 mm mass arising from the rectum")
_DESCRIBES_WITHIN_WORDS = 8


def _stated_size(text: str, span: tuple[int, int], key: str, keys: Sequence[str]) -> re.Match[str] | None:
    """The one measurement of a sentence that affirms `key` and no other of `keys`, when the
    words after it name the finding (so it is the finding's size, not a threshold: "nodules
    over 8 mm"); None otherwise, or when it gives none or several ("12 x 8 mm" is left)."""
    sentence = text[span[0] : span[1]]
    lowered = sentence.lower()
    if not mentions(lowered, key) or any(mentions(lowered, k) for k in keys if k != key):
        return None
    found = list(_MEASUREMENT.finditer(sentence))
    if len(found) != 1 or found[0].group(2):
        return None
    after = " ".join(lowered[found[0].end() :].split()[:_DESCRIBES_WITHIN_WORDS])
    return found[0] if mentions(after, key) else None


def restate_measurements(
    findings_text: str, impression_text: str, keys: Iterable[str]
) -> tuple[str, list[Restatement]]:
    """The impression with each finding's size as the findings give it, and what changed.

    Why: the impression summarises the findings, and a report that gives a nodule as 12 mm
    in its findings and 16 mm in its impression contradicts itself (the demo weights wrote
    exactly that on the `msvlm-node demo` study). The findings are where the model describes
    what it sees, sentence by sentence, so their size stands. Only a size the findings state
    once for a finding (in the first sentence that affirms it) and the impression states
    once in a sentence affirming the same finding is changed; anything else is left as
    written.
    """
    changes: list[Restatement] = []
    edits: list[tuple[int, int, str]] = []
    keys = [key for key in keys if key in PATTERNS]  # a finding the labeller cannot read is left
    findings_spans = _sentences(findings_text)
    impression_spans = _sentences(impression_text)
    for key in keys:
        first = next((s for s in findings_spans if mentions(findings_text[s[0] : s[1]].lower(), key)), None)
        stated = None if first is None else _stated_size(findings_text, first, key, keys)
        if stated is None:
            continue
        for span in impression_spans:
            size = _stated_size(impression_text, span, key, keys)
            if size is not None and float(size.group(1)) != float(stated.group(1)):
                edits.append((span[0] + size.start(1), span[0] + size.end(1), stated.group(1)))
                changes.append(Restatement(key, stated.group(1), size.group(1)))
    for start, end, value in sorted(edits, reverse=True):
        impression_text = impression_text[:start] + value + impression_text[end:]
    return impression_text, changes
