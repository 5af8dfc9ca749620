"""The study plan: which series, in what order, labelled how, acquired when.

Planning is separate from rendering so the answer key's structure (roles,
planes, phases, sequences) is fixed before a pixel exists, and so the header
content a grouping heuristic might read (descriptions, times) is decided in
one place. The synthetic patient and study identity live here too: all of it
derives from the seed, none of it from the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

import numpy as np

from models.phantom import protocols as P
from models.phantom.anatomy import Anatomy
from models.phantom.dicom import StudyContext, uid
from models.phantom.spec import PhantomSpec


@dataclass(frozen=True)
class SeriesPlan:
    """One series to render: what it is, how it is labelled, when it was acquired."""

    kind: str  # view | localizer | screen | reformat | mip
    slug: str
    plane: str | None
    phase: str | None
    sequence: str | None
    description: str | None
    time_s: float
    number: int
    reason: str | None = None


def plan_series(
    spec: PhantomSpec, thickness: Callable[[str], float], rng: np.random.Generator
) -> tuple[list[SeriesPlan], float]:
    """The series of a study in acquisition order, and the contrast start (s after study start).

    ``thickness(plane)`` gives the slice thickness a CT description quotes.
    """
    contrast_start = 0.0
    plans: list[SeriesPlan] = []
    if spec.include_localizer:
        desc = "TOPOGRAM" if spec.modality == "CT" else "LOCALIZER"
        plans.append(SeriesPlan("localizer", "localizer", None, None, None, desc, 20.0, 1, "localizer"))
    number = 2
    views: list[SeriesPlan] = []
    if spec.modality == "CT":
        contrast_start, times = P.ct_phase_times(rng)
        for phase in (p for p in ("non_contrast", "arterial", "venous", "delayed") if p in spec.phases):
            for n, plane in enumerate(spec.planes):
                thick = thickness(plane)
                views.append(
                    SeriesPlan(
                        "view",
                        f"ct_{phase}_{plane}",
                        plane,
                        phase,
                        None,
                        P.ct_description(phase, plane, thick),
                        times[phase] + n,
                        number,
                    )
                )
                number += 1
    else:
        t = 60.0
        dwi_time: dict[str, float] = {}
        for seq in (s for s in P.MR_ORDER if s in spec.sequences):
            for plane in spec.planes:
                if seq == "t1_post" and not contrast_start:
                    contrast_start = t + 20.0
                    t = contrast_start + 60.0
                start = dwi_time.get(plane, t) if seq == "adc" else t
                if seq == "dwi":
                    dwi_time[plane] = t
                views.append(
                    SeriesPlan(
                        "view",
                        f"mr_{seq}_{plane}",
                        plane,
                        None,
                        seq,
                        P.mr_description(seq, plane, spec.b_values),
                        start,
                        number,
                    )
                )
                number += 1
                if seq != "adc":
                    t += 150.0 + float(rng.integers(0, 90))
    blanks = rng.permutation(len(views))[: spec.blank_description_series]
    for rank, idx in enumerate(sorted(int(i) for i in blanks)):
        views[idx] = replace(views[idx], description=None if rank == 0 else "")
    plans.extend(views)
    end = max(p.time_s for p in plans) + 120.0
    if spec.include_oblique:
        plans.append(
            SeriesPlan(
                "reformat",
                "oblique_reformat",
                "oblique",
                *derived_source(spec, "reformat"),
                f"MPR OBL {abs(spec.oblique_tilt_deg):.0f}DEG",
                end,
                90,
                "oblique",
            )
        )
    if spec.include_mip:
        plans.append(
            SeriesPlan(
                "mip", "mip", "axial", *derived_source(spec, "mip"), "MIP AX THICK", end + 30.0, 95, "derived"
            )
        )
    if spec.include_dose_report:
        slug, desc = (
            ("dose_report", "DOSE REPORT") if spec.modality == "CT" else ("exam_summary", "EXAM SUMMARY")
        )
        plans.append(SeriesPlan("screen", slug, None, None, None, desc, end + 60.0, 999, "screen_capture"))
    if spec.strip_descriptions:
        plans = [replace(p, description=None) for p in plans]
    return plans, contrast_start


def derived_source(spec: PhantomSpec, kind: str) -> tuple[str | None, str | None]:
    """(phase, sequence) a derived series is computed from."""
    if spec.modality == "CT":
        prefer = "venous" if kind == "reformat" else "arterial"
        return (prefer if prefer in spec.phases else spec.phases[-1]), None
    order = (
        ("t2", "t1", "t1_post", "flair", "other", "adc", "dwi")
        if kind == "reformat"
        else ("t1_post", "t1", "t2", "flair", "other", "adc", "dwi")
    )
    return None, next(s for s in order if s in spec.sequences)


def has_contrast(modality: str, plan: SeriesPlan) -> bool:
    """Whether the series was acquired after a contrast injection."""
    if modality == "CT":
        return plan.phase not in (None, "non_contrast")
    return plan.sequence == "t1_post"


def plain(attributes: Any) -> dict[str, Any]:
    """JSON-safe copy (numpy scalars to Python numbers)."""
    out: dict[str, Any] = {}
    for k, v in dict(attributes).items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, list | tuple):
            v = [x.item() if isinstance(x, np.generic) else x for x in v]
        out[k] = v
    return out


def study_context(
    spec: PhantomSpec, anatomy: Anatomy, fingerprint: str, rng: np.random.Generator
) -> StudyContext:
    """Synthetic patient and study identity, all derived from the seed."""
    study_day = date(2023, 1, 2) + timedelta(days=spec.seed % 730)
    birth = date(1940 + int(rng.integers(0, 50)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    age = study_day.year - birth.year - ((study_day.month, study_day.day) < (birth.month, birth.day))
    tag = f"{spec.modality}{spec.seed:04d}"
    if spec.modality == "CT":
        contrast = (
            "WO W"
            if "non_contrast" in spec.phases and len(spec.phases) > 1
            else "WO"
            if spec.phases == ("non_contrast",)
            else "W"
        )
        desc, body, protocol = (f"CT CHEST ABDOMEN {contrast} CONTRAST", "CHESTABDOMEN", "CHEST ABDOMEN")
    else:
        desc = "MR PELVIS RECTUM" + (" W WO CONTRAST" if "t1_post" in spec.sequences else "")
        body, protocol = "PELVIS", "PELVIS RECTUM"
    study_uid = uid("study", fingerprint)
    return StudyContext(
        modality=spec.modality,
        study_uid=str(study_uid),
        frame_of_reference_uid=str(uid(study_uid, "frame-of-reference")),
        patient_name=f"PHANTOM^{tag}",
        patient_id=f"PHANTOM-{tag}",
        patient_birth_date=birth.strftime("%Y%m%d"),
        patient_sex=anatomy.sex,
        patient_age=f"{age:03d}Y",
        study_date=study_day.strftime("%Y%m%d"),
        study_start_s=float(7 * 3600 + int(rng.integers(0, 10 * 3600))),
        accession_number=f"PH{spec.modality}{spec.seed % 10**8:08d}",
        study_id=str(spec.seed % 10**8),
        study_description=desc,
        body_part=body,
        protocol_name=protocol,
    )
