"""Optional LoRA helper (skipped where peft is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.msvlm import MsVlmForReportGeneration
from models.msvlm.lora import LoraSettings, add_lora, merge_lora

pytestmark = pytest.mark.model

pytest.importorskip("peft")


def test_lora_trains_few_parameters_and_merges_for_saving(
    tiny_model: MsVlmForReportGeneration, tmp_path: Path
) -> None:
    full = sum(p.numel() for p in tiny_model.language_model.parameters())
    add_lora(tiny_model, LoraSettings(rank=2))
    trainable = sum(p.numel() for p in tiny_model.language_model.parameters() if p.requires_grad)
    assert 0 < trainable < full / 10
    merge_lora(tiny_model)
    tiny_model.save_pretrained(tmp_path)
    loaded = MsVlmForReportGeneration.from_pretrained(tmp_path)
    assert tiny_model.state_dict().keys() == loaded.state_dict().keys()
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
