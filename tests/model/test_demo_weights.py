"""The bundled demo weights (models/weights/demo) load and read a phantom study correctly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from models.msvlm import MsVlmForReportGeneration, ReportGenerator
from models.phantom import FINDINGS, Finding, PhantomSpec, write_study
from models.training.data import finding_cuts, finding_regions, load_study, load_study_views, slice_targets
from models.training.labeller import extract_findings, stated_site

pytestmark = pytest.mark.model

DEMO = Path(__file__).resolve().parents[2] / "models" / "weights" / "demo"


@pytest.fixture(scope="module")
def generator() -> ReportGenerator:
    return ReportGenerator.from_pretrained(DEMO)


def test_demo_folder_is_complete() -> None:
    config = json.loads((DEMO / "config.json").read_text())
    assert config["model_type"] == "msvlm" and config["model_name"] and config["model_version"]
    findings = json.loads((DEMO / "findings.json").read_text())
    assert [f["key"] for f in findings] == [f.key for f in FINDINGS]
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 20 * 2**20


def test_demo_model_names_planted_findings(generator: ReportGenerator, tmp_path: Path) -> None:
    """The `msvlm-node demo` study's findings (a 12 mm nodule in the right upper lobe and a left
    pleural effusion), with 24 slices where the demo writes 32 (README "Where a finding is")."""
    assert isinstance(generator.model, MsVlmForReportGeneration)
    spec = PhantomSpec(
        modality="CT",
        planes=("axial", "coronal"),
        phases=("non_contrast", "arterial"),
        findings=(
            Finding("lung_nodule", {"size_mm": 12, "lobe": "right upper lobe"}),
            Finding("pleural_effusion", {"side": "left"}),
        ),
        seed=2026,
        matrix=64,
        slices=24,
    )
    write_study(spec, tmp_path / "study")
    report = generator.generate_report(load_study_views(tmp_path / "study"), max_new_tokens=192)
    probabilities = report.findings
    assert "rectal_lesion" not in probabilities  # planted and labelled on MR only
    assert probabilities["lung_nodule"] > 0.5 and probabilities["pleural_effusion"] > 0.5, probabilities
    absent = [key for key in ("cardiomegaly", "liver_lesion", "lymphadenopathy") if probabilities[key] < 0.5]
    assert absent, probabilities
    named = extract_findings(report.text)
    assert named["lung_nodule"] == 1 and named["pleural_effusion"] == 1, report.text
    assert named["cardiomegaly"] == 0, report.text
    # the narrative says what the SR's coded findings say (the LM reads the head's calls)
    stated = {key: bool(value) for key, value in named.items() if key in report.present}
    assert stated == {key: report.present[key] for key in stated}, (report.text, report.present)
    # and it puts each present finding where the site head (whose call the SR codes) puts it
    config = generator.model.config
    assert set(report.sites) == {key for key in config.finding_sites or {} if report.present.get(key)}
    for key, (site, probability) in report.sites.items():
        assert stated_site(report.text, key, config.sites_of(key)) == site, (report.text, report.sites)
        assert 0.0 < probability <= 1.0
    assert report.sites["lung_nodule"][0] == "right upper lobe", report.sites

    # the image each placed finding shows best on is one the answer key says shows it
    assert set(report.key_slices) == {"lung_nodule", "pleural_effusion"}, report.key_slices
    loaded = load_study(tmp_path / "study")
    names = config.finding_labels or []
    truth = json.loads((tmp_path / "study" / "truth.json").read_text())
    regions, cuts = finding_regions(tmp_path / "study"), finding_cuts(tmp_path / "study")
    for key, (view, index) in report.key_slices.items():
        pixels, geometry = loaded[view]
        targets = slice_targets(geometry, pixels.pixels.shape[0], names, truth["labels"], regions, cuts)
        assert targets[index, names.index(key)] == 1, (key, view, index, targets[:, names.index(key)])


def test_demo_model_reads_the_nodules_side_from_the_images(
    generator: ReportGenerator, tmp_path: Path
) -> None:
    """The same study acquired mirrored (columns reversed, ImageOrientationPatient's row
    direction negated): the nodule stays in the patient's right lung and the effusion on the
    left, the sides their tokens show; without the orientation no side is read from the images
    (version 6's site head then put both on the wrong side; version 7's puts both where they
    are, from the mirrored pixels alone)."""
    spec = PhantomSpec(
        modality="CT",
        planes=("axial", "coronal"),
        phases=("non_contrast", "arterial"),
        findings=(
            Finding("lung_nodule", {"size_mm": 12, "lobe": "right upper lobe"}),
            Finding("pleural_effusion", {"side": "left"}),
        ),
        seed=2026,
        matrix=64,
        slices=24,
    )
    write_study(spec, tmp_path / "study")
    mirrored = []
    for view in load_study_views(tmp_path / "study"):
        assert view.orientation is not None
        row, column = view.orientation[:3], view.orientation[3:]
        mirrored.append(
            dataclasses.replace(
                view,
                pixels=np.ascontiguousarray(view.pixels[:, :, ::-1]),
                orientation=(*(-c for c in row), *column),
            )
        )
    read = generator.generate_report(mirrored, max_new_tokens=1)
    bare = [dataclasses.replace(view, orientation=None) for view in mirrored]
    guessed = generator.generate_report(bare, max_new_tokens=1)
    assert read.sites["lung_nodule"][0].startswith("right "), read.sites
    assert read.sites["pleural_effusion"][0] == "left", read.sites
    assert read.image_sides == {"lung_nodule": "right", "pleural_effusion": "left"}
    assert guessed.image_sides == {}, guessed.image_sides  # the site head's guess alone


def test_demo_model_reads_a_bilateral_effusion_from_both_sides(
    generator: ReportGenerator, tmp_path: Path
) -> None:
    """Each side's best effusion token shows it, so the SR's site is "bilateral"."""
    spec = PhantomSpec(
        modality="CT",
        planes=("axial", "coronal"),
        phases=("non_contrast", "arterial"),
        findings=(Finding("pleural_effusion", {"side": "bilateral"}),),
        seed=2026,
        matrix=64,
        slices=24,
    )
    write_study(spec, tmp_path / "study")
    report = generator.generate_report(load_study_views(tmp_path / "study"), max_new_tokens=1)
    assert report.sites["pleural_effusion"][0] == "bilateral", report.sites
    assert report.image_sides["pleural_effusion"] == "both"
