"""Stage 3a (`stages.stage3a_findings`): the Z-former and the findings head learn the labels
alone, and stage 3 then leaves them as they are."""

from __future__ import annotations

import pytest
import torch

from models.msvlm import MsVlmForReportGeneration, MsVlmProcessor
from models.training.data import StudyRecord
from models.training.stages import StageSettings, cache_slice_features, stage3_tune, stage3a_findings

pytestmark = pytest.mark.model


def _studies(processor: MsVlmProcessor, count: int = 8) -> list[StudyRecord]:
    """CT studies whose nodule label is a bright square on every slice."""
    studies = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        pixels = torch.randn((4, 3, 32, 32), generator=generator) * 0.3
        present = i % 2
        if present:
            pixels[:, :, 8:20, 8:20] += 2.0
        studies.append(
            StudyRecord(
                name=f"s{i}",
                pixels=(pixels.to(torch.float16),),
                view_keys=("CT:axial:arterial",),
                modalities=("CT",),
                report="a nodule ." if present else "no nodule .",
                labels={"lung_nodule": present},
            )
        )
    return studies


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_findings_stage_then_report_tuning_leaves_it(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor
) -> None:
    studies = _studies(processor)
    features = cache_slice_features(tiny_model, studies)
    bridge = _state(tiny_model.bridge)
    torch.manual_seed(0)
    log = stage3a_findings(
        tiny_model, processor, studies, features, StageSettings(epochs=8, lr=3e-3, batch_size=4), seed=0
    )
    assert log.last_loss < log.first_loss, log.epoch_losses
    assert all(torch.equal(v, tiny_model.bridge.state_dict()[k]) for k, v in bridge.items())

    zformer, head = _state(tiny_model.zformer), _state(tiny_model.findings_head)
    stage3_tune(
        tiny_model,
        processor,
        studies,
        features,
        StageSettings(epochs=1, lr=3e-3, batch_size=4),
        lora=None,
        findings_learned=True,
        seed=0,
    )
    assert all(torch.equal(v, tiny_model.zformer.state_dict()[k]) for k, v in zformer.items())
    assert all(torch.equal(v, tiny_model.findings_head.state_dict()[k]) for k, v in head.items())
    assert any(not torch.equal(v, tiny_model.bridge.state_dict()[k]) for k, v in bridge.items())
