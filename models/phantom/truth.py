"""The answer key of a phantom study (truth.json).

Frozen records, because tests across the project read them as facts: which
series a correct grouping keeps as views (and along which plane and phase or
sequence), which it should exclude and why, which findings were planted and
where, and the reference report. ``to_json`` / ``from_json`` round-trip
exactly, so a test can load truth.json written by another process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["view", "excluded"]
EXCLUSION_REASONS = ("localizer", "screen_capture", "derived", "oblique")


@dataclass(frozen=True)
class FindingTruth:
    """One vocabulary entry for this study: planted or not, with the attributes used."""

    key: str
    present: bool
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesTruth:
    """What a correct grouping should conclude about one series.

    ``plane`` is None for series with mixed or no orientation (localizer,
    screen capture). ``phase`` is set for CT views, ``sequence`` for MR;
    ``b_values`` lists the diffusion weightings stored in a DWI series, one
    stack each (``n_stacks``). ``folder`` is relative to the study directory.
    ``finding_snr`` says how plainly the series shows each planted focal finding: a study's
    label says a finding is visible in *some* view, this says in which.
    """

    series_index: int
    folder: str
    series_instance_uid: str
    series_number: int
    series_description: str | None
    sop_class_uid: str
    modality: str
    role: Role
    exclusion_reason: str | None
    plane: str | None
    phase: str | None
    sequence: str | None
    b_values: tuple[int, ...]
    contrast: bool
    n_instances: int
    n_frames: int
    n_stacks: int
    slices_per_stack: int
    rows: int
    columns: int
    pixel_spacing_mm: float | None
    slice_spacing_mm: float | None
    image_orientation: tuple[float, ...] | None
    #: a view series: each planted focal finding's matched-filter SNR in it
    #: (`StudyBuilder.focal_snr`); under `ROSE_SNR` no reader can tell it from noise there
    finding_snr: dict[str, float] = field(default_factory=dict)
    #: a view series: for each planted effusion, [ImagePositionPatient x, y, z, pixels] of the
    #: slices that cut it (`StudyBuilder.finding_slices`)
    finding_slices: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def is_view(self) -> bool:
        return self.role == "view"


@dataclass(frozen=True)
class StudyTruth:
    """Ground truth of one study; ``labels`` has every finding key applicable to the modality.

    ``landmarks`` are named points (LPS mm) well inside one tissue (e.g. the
    aorta, the spleen on the patient's left) for intensity and orientation
    checks; ``spec`` is the generating spec, enough to regenerate the study.
    """

    study_instance_uid: str
    patient_id: str
    modality: str
    seed: int
    findings: tuple[FindingTruth, ...]
    labels: dict[str, int]
    report: str
    impression: str
    series: tuple[SeriesTruth, ...]
    landmarks: dict[str, list[float]] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def full_report(self) -> str:
        """The reference report as one text: Findings then Impression sections."""
        return f"FINDINGS:\n{self.report}\n\nIMPRESSION:\n{self.impression}\n"

    @property
    def views(self) -> tuple[SeriesTruth, ...]:
        return tuple(s for s in self.series if s.role == "view")

    @property
    def excluded(self) -> tuple[SeriesTruth, ...]:
        return tuple(s for s in self.series if s.role == "excluded")

    def series_by_uid(self, series_instance_uid: str) -> SeriesTruth:
        for s in self.series:
            if s.series_instance_uid == series_instance_uid:
                return s
        raise KeyError(series_instance_uid)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyTruth:
        series = []
        for s in data["series"]:
            s = dict(s)
            s["b_values"] = tuple(s["b_values"])
            if s["image_orientation"] is not None:
                s["image_orientation"] = tuple(s["image_orientation"])
            series.append(SeriesTruth(**s))
        return cls(
            study_instance_uid=data["study_instance_uid"],
            patient_id=data["patient_id"],
            modality=data["modality"],
            seed=int(data["seed"]),
            findings=tuple(FindingTruth(**f) for f in data["findings"]),
            labels={k: int(v) for k, v in data["labels"].items()},
            report=data["report"],
            impression=data["impression"],
            series=tuple(series),
            landmarks={k: [float(x) for x in v] for k, v in data.get("landmarks", {}).items()},
            spec=dict(data.get("spec", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> StudyTruth:
        return cls.from_dict(json.loads(text))
