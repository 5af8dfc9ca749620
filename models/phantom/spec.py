"""What study to make: the one frozen, validated input of the generator.

Everything that changes the output is a field here (and nothing else is: no
clock, no global random state), so a spec plus this code version fully
determines every UID and byte written. Validation happens at construction
with a message naming the bad field, because specs arrive from the CLI, tests
and the dataset writer alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from models.phantom.errors import PhantomSpecError
from models.phantom.findings import MODALITIES, Finding, resolve
from models.phantom.geometry import PLANES
from models.phantom.tissues import CT_PHASES, MR_SEQUENCES

DEFAULT_SEQUENCES = ("t1", "t2", "dwi", "adc", "t1_post")
#: a sanity bound: past ~10 mm left-right the body wall already leaves the axial field of view
#: (cut off, as on a scanner whose field of view is set tight)
MAX_POSITION_JITTER_MM = 40.0


def _names(value: Any, allowed: tuple[str, ...], field_name: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    out: list[str] = []
    for item in items:
        name = str(item).lower()
        if name not in allowed:
            raise PhantomSpecError(f"{field_name}: unknown {name!r}; known: {', '.join(allowed)}")
        if name not in out:
            out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class PhantomSpec:
    """A phantom study request.

    ``phases`` apply to CT and ``sequences`` to MR (the other is ignored).
    ``findings`` accepts :class:`Finding` objects or bare keys (defaults).
    ``blank_description_series`` removes SeriesDescription from that many
    view series (chosen by the seed); ``strip_descriptions`` removes it from
    every series. ``noise`` scales the image noise (0 gives exact tissue
    values, handy in tests). ``enhanced_mr`` writes MR view series as one
    Enhanced MR multi-frame instance each. ``position_jitter_mm`` places the
    patient off the scanner's isocentre by up to that much along each axis
    (drawn from the seed; the findings and landmarks move with the body), as
    real patients lie centimetres apart on the table; 0 keeps every patient
    at the same place, so a model may learn findings at fixed pixels.
    """

    modality: str = "CT"
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    phases: tuple[str, ...] = CT_PHASES
    sequences: tuple[str, ...] = DEFAULT_SEQUENCES
    findings: tuple[Finding, ...] = ()
    seed: int = 0
    matrix: int = 64
    slices: int = 32
    b_values: tuple[int, ...] = (0, 800)
    include_localizer: bool = True
    include_dose_report: bool = True
    include_oblique: bool = True
    include_mip: bool = False
    blank_description_series: int = 1
    strip_descriptions: bool = False
    enhanced_mr: bool = False
    noise: float = 1.0
    slice_spacing_mm: float | None = None
    oblique_tilt_deg: float = 30.0
    position_jitter_mm: float = 0.0

    def __post_init__(self) -> None:
        modality = str(self.modality).upper()
        if modality not in MODALITIES:
            raise PhantomSpecError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        set_ = object.__setattr__
        set_(self, "modality", modality)
        set_(self, "planes", _names(self.planes, PLANES, "planes"))
        set_(self, "phases", _names(self.phases, CT_PHASES, "phases"))
        set_(self, "sequences", _names(self.sequences, MR_SEQUENCES, "sequences"))
        if not self.planes:
            raise PhantomSpecError("planes: at least one plane is needed")
        if modality == "CT" and not self.phases:
            raise PhantomSpecError("phases: a CT study needs at least one phase")
        if modality == "MR" and not self.sequences:
            raise PhantomSpecError("sequences: an MR study needs at least one sequence")
        findings = tuple(f if isinstance(f, Finding) else Finding(str(f)) for f in self.findings)
        keys = [f.key for f in findings]
        if len(set(keys)) != len(keys):
            raise PhantomSpecError(f"findings: each key at most once, got {keys}")
        for f in findings:
            resolve(f, modality)  # raises with the reason
        set_(self, "findings", findings)
        b_values = tuple(int(b) for b in self.b_values)
        if not b_values or min(b_values) < 0 or len(set(b_values)) != len(b_values):
            raise PhantomSpecError(f"b_values must be distinct and >= 0, got {self.b_values}")
        set_(self, "b_values", b_values)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise PhantomSpecError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 8 <= int(self.matrix) <= 1024:
            raise PhantomSpecError(f"matrix must be in [8, 1024], got {self.matrix}")
        if not 1 <= int(self.slices) <= 2000:
            raise PhantomSpecError(f"slices must be in [1, 2000], got {self.slices}")
        if self.noise < 0:
            raise PhantomSpecError("noise must be >= 0")
        if self.blank_description_series < 0:
            raise PhantomSpecError("blank_description_series must be >= 0")
        if self.slice_spacing_mm is not None and self.slice_spacing_mm <= 0:
            raise PhantomSpecError("slice_spacing_mm must be > 0")
        if not 5.0 <= abs(self.oblique_tilt_deg) <= 60.0:
            raise PhantomSpecError("oblique_tilt_deg must be between 5 and 60 degrees")
        if not 0.0 <= self.position_jitter_mm <= MAX_POSITION_JITTER_MM:
            raise PhantomSpecError(f"position_jitter_mm must be in [0, {MAX_POSITION_JITTER_MM:g}]")

    @property
    def resolved_findings(self) -> tuple[Finding, ...]:
        """The findings with every default attribute filled in."""
        return tuple(resolve(f, self.modality) for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (findings as {key, attributes})."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "findings":
                value = [{"key": x.key, "attributes": dict(x.attributes)} for x in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def fingerprint(self) -> str:
        """Stable hash of the spec; part of every UID so different specs never collide."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]
