"""Stage 0b (`stages.slice_findings`): its slice pools, and that it teaches the slice encoder."""

from __future__ import annotations

import pytest
import torch

from models.msvlm import MsVlmForReportGeneration, MsVlmProcessor
from models.training.data import StudyRecord
from models.training.stages import StageSettings, slice_findings, slice_pools

pytestmark = pytest.mark.model


def _study(name: str, targets: list[list[float]], *, seed: int, size: int = 32) -> StudyRecord:
    """One CT view; a slice that shows finding 0 has a bright square where the others have none."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn((len(targets), 3, size, size), generator=generator) * 0.3
    rows = torch.tensor(targets)
    for k in (rows[:, 0] == 1).nonzero().flatten().tolist():
        pixels[k, :, 10:14, 18:22] += 2.0
    return StudyRecord(
        name=name,
        pixels=(pixels.to(torch.float16),),
        view_keys=("CT:axial:arterial",),
        modalities=("CT",),
        report="",
        labels={},
        slice_targets=(rows,),
    )


def test_pools_list_each_findings_slices_and_every_known_slice() -> None:
    study = _study("a", [[1, 0], [0, -1], [-1, -1], [1, 1]], seed=0)
    showing, known = slice_pools([study, study], 2)
    assert showing[0] == [(0, 0, 0), (0, 0, 3), (1, 0, 0), (1, 0, 3)]
    assert showing[1] == [(0, 0, 3), (1, 0, 3)]
    assert known == [(0, 0, 0), (0, 0, 1), (0, 0, 3), (1, 0, 0), (1, 0, 1), (1, 0, 3)]


def test_the_stage_teaches_the_encoder_and_is_skipped_without_targets(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor
) -> None:
    labels = len(processor.settings.finding_labels)
    studies = [
        _study(f"s{i}", [[float(k % 3 == i % 2)] + [0.0] * (labels - 1) for k in range(6)], seed=i)
        for i in range(8)
    ]
    before = {k: v.clone() for k, v in tiny_model.vision_model.state_dict().items()}
    torch.manual_seed(0)
    log = slice_findings(
        tiny_model, processor, studies, StageSettings(epochs=6, lr=3e-3, batch_size=4), seed=0
    )
    assert log.last_loss < 0.7 * log.first_loss, log.epoch_losses
    after = tiny_model.vision_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not tiny_model.training  # left in eval mode for the feature cache

    unlabelled = [_study("u", [[-1.0] * labels] * 4, seed=9)]
    skipped = slice_findings(tiny_model, processor, unlabelled, StageSettings(epochs=6, lr=3e-3), seed=0)
    assert skipped.epoch_losses == []
