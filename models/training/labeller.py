"""A small rule-based, negation-aware labeller: report text -> {finding key: 0/1}.

Used for clinical efficacy (findings named in a generated report against the truth) and
to label reference reports that come without labels. It reads sentence by sentence: a
finding is present when one of its mention patterns occurs in a sentence without a
negation cue ("no", "without", "negative for", ...) before the mention in that sentence.
"No pleural effusion." and "The lungs are clear without nodules." are therefore absent,
and a statement that never mentions the finding ("The pleural spaces are clear.") is absent
too. Patterns cover the phantom report vocabulary and common synonyms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: finding key -> regular expressions of a mention (matched on lower-cased sentences).
PATTERNS: Mapping[str, tuple[str, ...]] = {
    "lung_nodule": (r"\bnodules?\b(?!.*\blymph\b)", r"\bpulmonary (?:mass|lesion)s?\b"),
    "pleural_effusion": (r"\bpleural effusions?\b", r"\beffusions?\b"),
    "cardiomegaly": (r"\bcardiomegaly\b", r"\bheart is (?:\w+ly )?enlarged\b", r"\benlarged heart\b"),
    "liver_lesion": (
        r"\b(?:liver|hepatic) (?:lesion|mass|tumou?r)s?\b",
        r"\blesions? (?:[\w ]+ )?(?:of|in) the (?:[\w ]+ )?liver\b",
        r"\blesion\b.*\bliver\b",
    ),
    "lymphadenopathy": (
        r"\blymphadenopathy\b",
        r"\benlarged (?:[\w ]+ )?lymph nodes?\b",
        r"\blymph nodes? (?:[\w ]+ )?enlarged\b",
        r"\benlarged (?:[\w ]+ )?nodes?\b",
    ),
    "rectal_lesion": (
        r"\brectal (?:mass|lesion|tumou?r|cancer)\b",
        r"\bmass\b.*\brectum\b",
        r"\brectum\b.*\bmass\b",
    ),
}

NEGATION_CUES = (
    r"\bno\b",
    r"\bnot\b",
    r"\bwithout\b",
    r"\bnegative for\b",
    r"\bfree of\b",
    r"\babsence of\b",
    r"\bresolved\b",
)

_SENTENCE_SPLIT = re.compile(r"[.;:\n]+|\s\d+\s*\.\s")
_COMPILED = {key: tuple(re.compile(p) for p in patterns) for key, patterns in PATTERNS.items()}
_NEGATIONS = tuple(re.compile(c) for c in NEGATION_CUES)


def sentences(text: str) -> list[str]:
    """Lower-cased sentences (split at . ; : and line breaks), blanks dropped."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.lower()) if s.strip()]


_CLAUSE_BREAK = re.compile(r",|\bbut\b|\bhowever\b|\bwhile\b")


def _negated(sentence: str, start: int) -> bool:
    """A negation cue earlier in the same clause (clauses end at commas, "but", "however")."""
    prefix = sentence[:start]
    breaks = [m.end() for m in _CLAUSE_BREAK.finditer(prefix)]
    clause = prefix[breaks[-1] :] if breaks else prefix
    return any(cue.search(clause) for cue in _NEGATIONS)


def mentions(sentence: str, key: str) -> bool | None:
    """True: affirmed mention of `key` in the sentence; False: only negated; None: not mentioned."""
    found = None
    for pattern in _COMPILED[key]:
        for match in pattern.finditer(sentence):
            if not _negated(sentence, match.start()):
                return True
            found = False
    return found


def extract_findings(text: str, keys: Iterable[str] | None = None) -> dict[str, int]:
    """{key: 1 if affirmed anywhere in the text else 0} for `keys` (default: every known key)."""
    wanted = list(keys) if keys is not None else list(PATTERNS)
    unknown = sorted(set(wanted) - set(PATTERNS))
    if unknown:
        raise KeyError(f"no labelling rules for {unknown}")
    parts = sentences(text)
    return {key: int(any(mentions(s, key) for s in parts)) for key in wanted}


def stated_site(text: str, key: str, sites: Iterable[str]) -> str | None:
    """The site (one of `sites`, e.g. the five lung lobes) that the text gives for finding `key`.

    Read from the first sentence that affirms the finding: the longest of `sites` named in it
    ("bilateral" before "left", "right upper lobe" before "right"); None when the text does not
    affirm the finding or names no site there.
    """
    ordered = sorted(sites, key=len, reverse=True)
    for sentence in sentences(text):
        if mentions(sentence, key):
            for site in ordered:
                if re.search(rf"\b{re.escape(site.lower())}\b", sentence):
                    return site
            return None
    return None
