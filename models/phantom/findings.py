"""The canonical finding vocabulary and the per-study finding request.

One vocabulary, ordered, is shared by the phantom (what it plants), the model's
findings head (one logit per entry, in this order) and the SR writer (which
code to emit). Keeping it in one tuple means a new finding is added in exactly
one place and every consumer sees the same order.

A :class:`Finding` is what a spec asks for ("an 8 mm nodule in the right upper
lobe"); :func:`resolve` validates it against its definition and fills in
defaults, so the anatomy and the report never see an unknown attribute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from models.phantom.errors import PhantomSpecError

MODALITIES = ("CT", "MR")

LOBES = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
)
EFFUSION_SIDES = ("right", "left", "bilateral")
EFFUSION_SIZES = ("small", "moderate", "large")
SEVERITIES = ("mild", "moderate", "severe")
LIVER_LOBES = ("right lobe", "left lobe")
CT_NODE_STATIONS = ("mediastinal", "retroperitoneal")
MR_NODE_STATIONS = ("mesorectal", "pelvic sidewall")
RECTAL_WALLS = ("anterior", "posterior", "left", "right")


class Code(NamedTuple):
    """A coded concept as DICOM SR wants it: (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class FindingDefinition:
    """One entry of the vocabulary.

    ``modalities`` lists where the phantom can plant it (and where the label is
    defined); ``attributes`` maps each accepted attribute to its allowed values
    (a tuple of strings) or its numeric range ``(low, high)`` as floats, and
    ``defaults`` gives the value used when a spec leaves it out.
    """

    key: str
    display: str
    modalities: tuple[str, ...]
    code: Code
    attributes: Mapping[str, tuple[Any, ...]]
    defaults: Mapping[str, Any]

    def applies_to(self, modality: str) -> bool:
        """Whether this finding is defined (planted, labelled) for ``modality``."""
        return modality.upper() in self.modalities


# SNOMED CT codes. Confident: pleural effusion 60046008, lymphadenopathy 30746006
# (both also in DICOM PS3.16), rectal mass 248523006 (PS3.16 "Rectal mass").
# Cardiomegaly 8186001 is the SNOMED CT "Cardiomegaly (disorder)" concept; note
# DICOM PS3.16 (CID 12248/12249) lists the older 287272002 for the same meaning.
# Less sure: 786838002 "Pulmonary nodule" (recent SNOMED CT release; the older,
# DICOM-listed alternative is 427359005 "Solitary nodule of lung") and
# 300331000 "Lesion of liver".
FINDINGS: tuple[FindingDefinition, ...] = (
    FindingDefinition(
        key="lung_nodule",
        display="Lung nodule",
        modalities=("CT",),
        code=Code("786838002", "SCT", "Pulmonary nodule"),
        attributes=MappingProxyType({"size_mm": (3.0, 30.0), "lobe": LOBES}),
        defaults=MappingProxyType({"size_mm": 8.0, "lobe": "right upper lobe"}),
    ),
    FindingDefinition(
        key="pleural_effusion",
        display="Pleural effusion",
        modalities=("CT",),
        code=Code("60046008", "SCT", "Pleural effusion"),
        attributes=MappingProxyType({"side": EFFUSION_SIDES, "size": EFFUSION_SIZES}),
        defaults=MappingProxyType({"side": "right", "size": "moderate"}),
    ),
    FindingDefinition(
        key="cardiomegaly",
        display="Cardiomegaly",
        modalities=("CT",),
        code=Code("8186001", "SCT", "Cardiomegaly"),
        attributes=MappingProxyType({"severity": SEVERITIES}),
        defaults=MappingProxyType({"severity": "moderate"}),
    ),
    FindingDefinition(
        key="liver_lesion",
        display="Liver lesion",
        modalities=("CT",),
        code=Code("300331000", "SCT", "Lesion of liver"),
        attributes=MappingProxyType({"size_mm": (8.0, 50.0), "location": LIVER_LOBES}),
        defaults=MappingProxyType({"size_mm": 20.0, "location": "right lobe"}),
    ),
    FindingDefinition(
        key="lymphadenopathy",
        display="Lymphadenopathy",
        modalities=("CT", "MR"),
        code=Code("30746006", "SCT", "Lymphadenopathy"),
        attributes=MappingProxyType(
            {"short_axis_mm": (8.0, 35.0), "station": CT_NODE_STATIONS + MR_NODE_STATIONS}
        ),
        defaults=MappingProxyType({"short_axis_mm": 15.0}),  # station default depends on modality
    ),
    FindingDefinition(
        key="rectal_lesion",
        display="Rectal lesion",
        modalities=("MR",),
        code=Code("248523006", "SCT", "Rectal mass"),
        attributes=MappingProxyType(
            {"size_mm": (10.0, 60.0), "wall": RECTAL_WALLS, "distance_cm": (2.0, 14.0)}
        ),
        defaults=MappingProxyType({"size_mm": 30.0, "wall": "posterior", "distance_cm": 8.0}),
    ),
)

FINDINGS_BY_KEY: Mapping[str, FindingDefinition] = MappingProxyType({f.key: f for f in FINDINGS})

#: the attribute that says where a focal or sided finding is (the words a report uses for it);
#: cardiomegaly has none
SITE_ATTRIBUTES: Mapping[str, str] = MappingProxyType(
    {
        "lung_nodule": "lobe",
        "pleural_effusion": "side",
        "liver_lesion": "location",
        "lymphadenopathy": "station",
        "rectal_lesion": "wall",
    }
)


class SiteCode(NamedTuple):
    """A site coded for the SR's Finding Site: an anatomic structure and, where the words need
    one, a modifier as (concept name, value), e.g. Upper lobe of lung with (Laterality, Right)."""

    structure: Code
    modifier: tuple[Code, Code] | None = None


# SNOMED CT codes as pydicom's DICOM code dictionary (PS3.16) lists them; no SNOMED code for a
# mesorectal node is in it, so that one is ours (99MSVLM). Laterality (CID 244) sides lungs and
# pleura; the topographical modifier (CID 2 values) places a liver lobe and a rectal wall.
_LATERALITY = Code("272741003", "SCT", "Laterality")
_TOPOGRAPHY = Code("106233006", "SCT", "Topographical modifier")
_RIGHT, _LEFT = Code("24028007", "SCT", "Right"), Code("7771000", "SCT", "Left")
_UPPER_LOBE = Code("45653009", "SCT", "Upper lobe of lung")
_LOWER_LOBE = Code("90572001", "SCT", "Lower lobe of lung")
_PLEURA = Code("3120008", "SCT", "Pleura")
_LIVER = Code("10200004", "SCT", "Liver")
_RECTUM = Code("34402009", "SCT", "Rectum")

#: per finding and site (the words of `site_vocabulary`), its coded Finding Site
SITE_CODES: Mapping[str, Mapping[str, SiteCode]] = MappingProxyType(
    {
        "lung_nodule": {
            "right upper lobe": SiteCode(_UPPER_LOBE, (_LATERALITY, _RIGHT)),
            "right middle lobe": SiteCode(Code("72481006", "SCT", "Middle lobe of right lung")),
            "right lower lobe": SiteCode(_LOWER_LOBE, (_LATERALITY, _RIGHT)),
            "left upper lobe": SiteCode(_UPPER_LOBE, (_LATERALITY, _LEFT)),
            "left lower lobe": SiteCode(_LOWER_LOBE, (_LATERALITY, _LEFT)),
        },
        "pleural_effusion": {
            "right": SiteCode(_PLEURA, (_LATERALITY, _RIGHT)),
            "left": SiteCode(_PLEURA, (_LATERALITY, _LEFT)),
            "bilateral": SiteCode(_PLEURA, (_LATERALITY, Code("51440002", "SCT", "Bilateral"))),
        },
        "liver_lesion": {
            "right lobe": SiteCode(_LIVER, (_TOPOGRAPHY, _RIGHT)),
            "left lobe": SiteCode(_LIVER, (_TOPOGRAPHY, _LEFT)),
        },
        "lymphadenopathy": {
            "mediastinal": SiteCode(Code("62683002", "SCT", "Mediastinal lymph node")),
            "retroperitoneal": SiteCode(Code("91394001", "SCT", "Retroperitoneal lymph node")),
            "mesorectal": SiteCode(Code("mesorectal-node", "99MSVLM", "Mesorectal lymph node")),
            "pelvic sidewall": SiteCode(Code("54268001", "SCT", "Pelvic lymph node")),
        },
        "rectal_lesion": {
            "anterior": SiteCode(_RECTUM, (_TOPOGRAPHY, Code("255549009", "SCT", "Anterior"))),
            "posterior": SiteCode(_RECTUM, (_TOPOGRAPHY, Code("255551008", "SCT", "Posterior"))),
            "left": SiteCode(_RECTUM, (_TOPOGRAPHY, _LEFT)),
            "right": SiteCode(_RECTUM, (_TOPOGRAPHY, _RIGHT)),
        },
    }
)


def vocabulary_entries() -> list[dict[str, Any]]:
    """The vocabulary as the entries of a model folder's ``findings.json`` (what the node codes
    the SR with): each finding's code and, for a finding with sites, each site's code."""
    entries: list[dict[str, Any]] = []
    for f in FINDINGS:
        entry: dict[str, Any] = {
            "key": f.key,
            "display": f.display,
            "code_value": f.code.value,
            "coding_scheme": f.code.scheme,
            "code_meaning": f.code.meaning,
        }
        sites = SITE_CODES.get(f.key, {})
        if sites:
            entry["sites"] = [
                {
                    "name": name,
                    "structure": list(site.structure),
                    **(
                        {"modifier": [list(site.modifier[0]), list(site.modifier[1])]}
                        if site.modifier
                        else {}
                    ),
                }
                for name, site in sites.items()
            ]
        entries.append(entry)
    return entries


def site_of(key: str, attributes: Mapping[str, Any]) -> str | None:
    """Where a planted finding is, from its attributes (None when it has no site)."""
    attribute = SITE_ATTRIBUTES.get(key)
    return str(attributes[attribute]) if attribute and attribute in attributes else None


def site_vocabulary(key: str) -> tuple[str, ...]:
    """The sites a report can name for finding ``key`` (empty when it has none)."""
    attribute = SITE_ATTRIBUTES.get(key)
    return tuple(FINDINGS_BY_KEY[key].attributes[attribute]) if attribute else ()


def findings_for(modality: str) -> tuple[FindingDefinition, ...]:
    """The vocabulary entries applicable to ``modality``, in vocabulary order."""
    return tuple(f for f in FINDINGS if f.applies_to(modality))


@dataclass(frozen=True)
class Finding:
    """A finding a spec asks the phantom to plant: a vocabulary key and attributes.

    >>> Finding("lung_nodule", {"size_mm": 8, "lobe": "right upper lobe"})
    """

    key: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.key not in FINDINGS_BY_KEY:
            known = ", ".join(FINDINGS_BY_KEY)
            raise PhantomSpecError(f"unknown finding {self.key!r}; known: {known}")
        # Copy so a caller mutating its dict cannot change a frozen spec.
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def __hash__(self) -> int:
        return hash((self.key, tuple(sorted((k, repr(v)) for k, v in self.attributes.items()))))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Finding):
            return NotImplemented
        return self.key == other.key and dict(self.attributes) == dict(other.attributes)


def resolve(finding: Finding, modality: str) -> Finding:
    """Validate ``finding`` for ``modality`` and return it with every default filled in.

    Numeric attributes come back as floats and are range-checked; categorical
    ones must be one of the allowed values. Raises :class:`PhantomSpecError`.
    """
    definition = FINDINGS_BY_KEY[finding.key]
    modality = modality.upper()
    if not definition.applies_to(modality):
        raise PhantomSpecError(f"finding {finding.key!r} is not defined for {modality}")
    unknown = set(finding.attributes) - set(definition.attributes)
    if unknown:
        raise PhantomSpecError(
            f"finding {finding.key!r}: unknown attribute(s) {sorted(unknown)}; "
            f"accepted: {sorted(definition.attributes)}"
        )
    values: dict[str, Any] = dict(definition.defaults)
    if finding.key == "lymphadenopathy":
        values["station"] = CT_NODE_STATIONS[0] if modality == "CT" else MR_NODE_STATIONS[0]
        values["short_axis_mm"] = 15.0 if modality == "CT" else 10.0
    values.update(finding.attributes)
    for name, allowed in definition.attributes.items():
        value = values[name]
        if isinstance(allowed[0], float):
            try:
                number = float(value)
            except (TypeError, ValueError) as exc:
                raise PhantomSpecError(f"{finding.key}.{name} must be a number") from exc
            if not allowed[0] <= number <= allowed[1]:
                raise PhantomSpecError(f"{finding.key}.{name}={number} outside [{allowed[0]}, {allowed[1]}]")
            values[name] = number
        elif value not in allowed:
            raise PhantomSpecError(f"{finding.key}.{name}={value!r}; allowed: {list(allowed)}")
    if finding.key == "lymphadenopathy":
        stations = CT_NODE_STATIONS if modality == "CT" else MR_NODE_STATIONS
        if values["station"] not in stations:
            raise PhantomSpecError(f"lymph node station {values['station']!r} is not {modality}")
    return Finding(finding.key, values)


def sample_findings(
    rng: np.random.Generator, modality: str, *, probability: float = 0.4
) -> tuple[Finding, ...]:
    """Draw a random finding set for a training study: each applicable finding
    independently with ``probability``, with random attributes in range."""
    chosen: list[Finding] = []
    for definition in findings_for(modality):
        if rng.random() >= probability:
            continue
        attrs: dict[str, Any] = {}
        for name, allowed in definition.attributes.items():
            if isinstance(allowed[0], float):
                low, high = allowed
                if name in ("size_mm", "short_axis_mm"):  # keep most findings visible
                    low = max(low, {"lung_nodule": 5.0}.get(definition.key, low))
                    high = min(high, low + (high - low) * 0.6)
                attrs[name] = round(float(rng.uniform(low, high)), 0)
            else:
                options = allowed
                if name == "station":
                    options = CT_NODE_STATIONS if modality.upper() == "CT" else MR_NODE_STATIONS
                attrs[name] = str(options[int(rng.integers(len(options)))])
        chosen.append(resolve(Finding(definition.key, attrs), modality))
    return tuple(chosen)
