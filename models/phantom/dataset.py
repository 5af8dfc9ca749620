"""Many varied studies plus the index the model trains on (dataset.jsonl).

Each study gets its own seed, a random finding set (each applicable finding
with some probability, random size and location) and a random share of the
real-world mess (localizer, dose page, reformat, missing descriptions), so
the model learns findings rather than protocol quirks. The index holds
exactly ``{"study", "report", "labels"}`` per line, paths relative to the
dataset folder so the folder can be moved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.phantom.errors import PhantomSpecError
from models.phantom.findings import sample_findings
from models.phantom.spec import DEFAULT_SEQUENCES, PhantomSpec
from models.phantom.study import write_study
from models.phantom.tissues import CT_PHASES
from models.phantom.truth import StudyTruth

logger = logging.getLogger(__name__)

INDEX_NAME = "dataset.jsonl"


def study_seed(seed: int, index: int) -> int:
    """Seed of study ``index`` in a dataset made with ``seed`` (readable, never colliding)."""
    return seed * 100_000 + index


def dataset_spec(
    index: int,
    *,
    seed: int = 0,
    modalities: Sequence[str] = ("CT", "MR"),
    matrix: int = 64,
    slices: int = 32,
    finding_probability: float = 0.4,
    planes: Sequence[str] = ("axial", "coronal", "sagittal"),
    phases: Sequence[str] = CT_PHASES,
    sequences: Sequence[str] = DEFAULT_SEQUENCES,
    position_jitter_mm: float = 0.0,
) -> PhantomSpec:
    """The spec of study ``index`` of a dataset (deterministic in its arguments)."""
    if not modalities:
        raise PhantomSpecError("modalities: at least one modality is needed")
    modality = str(modalities[index % len(modalities)]).upper()
    rng = np.random.default_rng([seed, index, 7])
    findings = sample_findings(rng, modality, probability=finding_probability)
    return PhantomSpec(
        modality=modality,
        planes=tuple(planes),
        phases=tuple(phases),
        sequences=tuple(sequences),
        findings=findings,
        seed=study_seed(seed, index),
        matrix=matrix,
        slices=slices,
        include_localizer=bool(rng.random() < 0.7),
        include_dose_report=bool(rng.random() < 0.7),
        include_oblique=bool(rng.random() < 0.5),
        blank_description_series=int(rng.integers(0, 3)),
        position_jitter_mm=position_jitter_mm,
    )


def write_dataset(
    out_dir: str | Path,
    n_studies: int,
    *,
    seed: int = 0,
    modalities: Sequence[str] = ("CT", "MR"),
    matrix: int = 64,
    slices: int = 32,
    finding_probability: float = 0.4,
    planes: Sequence[str] = ("axial", "coronal", "sagittal"),
    phases: Sequence[str] = CT_PHASES,
    sequences: Sequence[str] = DEFAULT_SEQUENCES,
    position_jitter_mm: float = 0.0,
) -> list[StudyTruth]:
    """Write ``n_studies`` studies to out_dir/NNNNN_<modality>/ and out_dir/dataset.jsonl.

    Modalities alternate in the given order. Returns the truths in index order.
    """
    if n_studies < 1:
        raise PhantomSpecError("n_studies must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truths: list[StudyTruth] = []
    lines: list[str] = []
    for index in range(n_studies):
        spec = dataset_spec(
            index,
            seed=seed,
            modalities=modalities,
            matrix=matrix,
            slices=slices,
            finding_probability=finding_probability,
            planes=planes,
            phases=phases,
            sequences=sequences,
            position_jitter_mm=position_jitter_mm,
        )
        folder = f"{index:05d}_{spec.modality.lower()}"
        truth = write_study(spec, out / folder)
        truths.append(truth)
        lines.append(json.dumps({"study": folder, "report": truth.full_report, "labels": truth.labels}))
        logger.info(
            "phantom dataset study written",
            extra={"action": "phantom.dataset", "index": index, "of": n_studies},
        )
    tmp = out / (INDEX_NAME + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out / INDEX_NAME)
    return truths
