"""The bundled demo weights (models/weights/demo) load and read a phantom study correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.msvlm import MsVlmForReportGeneration, ReportGenerator
from models.phantom import FINDINGS, Finding, PhantomSpec, write_study
from models.training.data import load_study_views
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
    """The `msvlm-node demo` study: CT with a 12 mm nodule and a left pleural effusion."""
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
