"""Synthetic phantom studies: proper DICOM, ground truth and a reference report.

The shared test data of the project (grouping tests, end-to-end tests, the
demo, model training). Anatomy is analytic in patient coordinates, so any
plane, phase and sequence is sampled exactly and the answer key is known.

>>> from models.phantom import PhantomSpec, Finding, generate_study, write_study
>>> spec = PhantomSpec(modality="CT", findings=(Finding("lung_nodule", {"size_mm": 8}),))
>>> truth = write_study(generate_study(spec), "out/ct0")
"""

from models.phantom.dataset import INDEX_NAME, dataset_spec, write_dataset
from models.phantom.errors import PhantomError, PhantomSpecError
from models.phantom.findings import (
    FINDINGS,
    FINDINGS_BY_KEY,
    Code,
    Finding,
    FindingDefinition,
    findings_for,
    resolve,
)
from models.phantom.geometry import PLANES
from models.phantom.spec import PhantomSpec
from models.phantom.study import GeneratedSeries, GeneratedStudy, generate_study, write_study
from models.phantom.tissues import CT_PHASES, MR_SEQUENCES
from models.phantom.truth import EXCLUSION_REASONS, FindingTruth, SeriesTruth, StudyTruth

__all__ = [
    "CT_PHASES",
    "EXCLUSION_REASONS",
    "FINDINGS",
    "FINDINGS_BY_KEY",
    "INDEX_NAME",
    "MR_SEQUENCES",
    "PLANES",
    "Code",
    "Finding",
    "FindingDefinition",
    "FindingTruth",
    "GeneratedSeries",
    "GeneratedStudy",
    "PhantomError",
    "PhantomSpec",
    "PhantomSpecError",
    "SeriesTruth",
    "StudyTruth",
    "dataset_spec",
    "findings_for",
    "generate_study",
    "resolve",
    "write_dataset",
    "write_study",
]
