"""models.training.slice_labels: which slices of a view show a planted focal finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.training.data import load_dataset, make_phantoms, read_index
from models.training.slice_labels import half_extent_mm, read_truth_findings, slice_labels

pytestmark = pytest.mark.model

LABELS = ("lung_nodule", "pleural_effusion", "lymphadenopathy", "rectal_lesion")
NODULE = {
    "key": "lung_nodule",
    "present": True,
    "attributes": {"size_mm": 10.0, "center_lps_mm": [0.0, 0.0, 50.0]},
}


def test_a_nodule_is_on_the_slices_its_sphere_cuts_and_the_rim_is_left_out() -> None:
    positions = np.arange(0.0, 101.0, 5.0)  # axial slices every 5 mm, z = 0 .. 100
    findings = [NODULE, {"key": "pleural_effusion", "present": True, "attributes": {"side": "left"}}]
    labels = slice_labels(findings, normal=(0, 0, 1), positions=positions, spacing=5.0, labels=LABELS)
    nodule = labels[:, 0]
    # radius 5 mm + a quarter of the spacing: z = 45, 50, 55 show it; 40 and 60 are the rim
    assert positions[nodule == 1].tolist() == [45.0, 50.0, 55.0]
    assert positions[nodule == -1].tolist() == [40.0, 60.0]
    assert bool((nodule[(positions < 40) | (positions > 60)] == 0).all())
    # diffuse findings and findings the answer key does not list get no slice label
    assert bool((labels[:, 1:] == -1).all())


def test_an_absent_finding_is_negative_on_every_slice_and_no_answer_key_labels_nothing() -> None:
    absent = [{"key": "lung_nodule", "present": False, "attributes": {}}]
    labels = slice_labels(absent, normal=(0, 1, 0), positions=[0.0, 10.0], spacing=10.0, labels=LABELS)
    assert labels[:, 0].tolist() == [0.0, 0.0]
    unknown = slice_labels(None, normal=(0, 1, 0), positions=[0.0, 10.0], spacing=10.0, labels=LABELS)
    assert bool((unknown == -1).all())


def test_lymph_nodes_are_longer_along_the_body_axis() -> None:
    attributes = {"short_axis_mm": 20.0}
    assert half_extent_mm("lymphadenopathy", attributes, (0, 0, 1)) == pytest.approx(14.0)
    assert half_extent_mm("lymphadenopathy", attributes, (1, 0, 0)) == pytest.approx(10.0)


def test_phantom_datasets_load_with_slice_labels_where_their_findings_are(tmp_path: Path) -> None:
    """Through the real loader (grouping, volume geometry, processor): every study with a
    focal finding has it on some of its slices, and none on a study without it."""
    from models.msvlm import MsVlmProcessor
    from models.msvlm.presets import msvlm_preset
    from models.msvlm.tokenizer import build_word_tokenizer
    from models.train import finding_vocabulary

    make_phantoms(tmp_path, 6, seed=3, matrix=16, slices=12)
    config = msvlm_preset("tiny")
    config.finding_labels = [f["key"] for f in finding_vocabulary()]
    processor = MsVlmProcessor.from_model_config(config, build_word_tokenizer(["x"]))
    entries = read_index(tmp_path)
    studies = load_dataset(entries, {"m": processor}, log_every=0)["m"]
    focal = [k for k in ("lung_nodule", "liver_lesion", "lymphadenopathy", "rectal_lesion")]
    checked = 0
    for entry, study in zip(entries, studies, strict=True):
        assert read_truth_findings(entry.folder) is not None
        assert len(study.slice_labels) == len(study.pixels)
        for pixels, per_slice in zip(study.pixels, study.slice_labels, strict=True):
            assert per_slice.shape == (pixels.shape[0], len(config.finding_labels))
        merged = np.concatenate([t.numpy() for t in study.slice_labels])
        for key in focal:
            column = merged[:, config.finding_labels.index(key)]
            if study.labels.get(key) == 1:
                assert (column == 1).any(), (study.name, key)
                checked += 1
            elif study.labels.get(key) == 0:
                assert (column == 0).all(), (study.name, key)
    assert checked > 0


def test_slice_supervision_is_skipped_without_slice_labels(tmp_path: Path) -> None:
    """Real data has no answer key: the stage must leave the encoder untouched, not fail."""
    import torch

    from models.msvlm import MsVlmForReportGeneration
    from models.msvlm.presets import msvlm_preset
    from models.training.data import StudyRecord
    from models.training.stages import SliceSupervisionSettings, slice_supervision

    config = msvlm_preset("tiny")
    config.finding_labels = list(LABELS)
    model = MsVlmForReportGeneration(config)
    before = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    study = StudyRecord(
        name="real",
        pixels=(torch.zeros(4, 3, 32, 32, dtype=torch.float16),),
        view_keys=("CT:axial:venous",),
        modalities=("CT",),
        report="no acute findings .",
        labels={"lung_nodule": 0},
    )
    log = slice_supervision(model, [study], SliceSupervisionSettings(steps=3, batch_size=4), seed=0)
    assert not log.epoch_losses
    after = model.vision_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
