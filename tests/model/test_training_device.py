"""models.training.device: `--device` resolution, and a training step on the CPU stays on the
CPU in float32 (the CUDA path is checked by hand on a GPU machine; CI has none)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import ViTConfig, ViTModel

from models.msvlm import MsVlmForReportGeneration, MsVlmProcessor, ViewInput
from models.msvlm.presets import vit_config
from models.train import main
from models.training.data import pad_views, preprocess_study
from models.training.device import autocast_dtype, module_device, resolve_device, training_autocast
from models.training.dino import train_dino
from models.training.stages import (
    StageSettings,
    cache_slice_features,
    feature_statistics,
    schedule_for,
    stage1_mem,
)

pytestmark = pytest.mark.model

StudyFactory = Callable[..., list[ViewInput]]


def test_auto_is_cpu_without_cuda_and_cuda_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "mps", ""])
def test_malformed_device_names_are_refused_with_the_choices(name: str) -> None:
    with pytest.raises(ValueError, match=r"auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_cuda_without_a_gpu_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(name)


def test_cpu_trains_in_float32_without_autocast() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None
    with training_autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")


def test_cli_refuses_a_bad_device_before_touching_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing, out = str(tmp_path / "no-such-data"), str(tmp_path / "out")
    code = main(["--preset", "tiny", "--data", missing, "--out", out, "--device", "gpu"])
    assert code == 1 and not (tmp_path / "out").exists()
    assert "device must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


def test_pad_views_defaults_to_the_views_device() -> None:
    padded, mask = pad_views([[torch.ones(2, 4)], [torch.ones(1, 4), torch.ones(3, 4)]])
    assert padded.device == mask.device == torch.device("cpu")
    assert padded.shape == (2, 2, 3, 4) and int(mask.sum()) == 6


def test_a_cpu_training_step_leaves_the_model_on_the_cpu_in_float32(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, make_study: StudyFactory
) -> None:
    reports = ("a 6 mm nodule in the right upper lobe .", "no focal liver lesion .")
    studies = [
        preprocess_study(f"s{i}", make_study([("CT", "CT:axial:venous", 3)], seed=i), processor, report, {})
        for i, report in enumerate(reports)
    ]
    before = {name: p.detach().clone() for name, p in tiny_model.zformer.named_parameters()}
    features = cache_slice_features(tiny_model, studies)
    log = stage1_mem(
        tiny_model,
        processor,
        studies,
        features,
        StageSettings(epochs=1, lr=1e-2, batch_size=2),
        mask_ratio=0.5,
        seed=0,
    )
    assert log.epoch_losses and all(torch.isfinite(torch.tensor(log.epoch_losses)))
    assert module_device(tiny_model) == torch.device("cpu")
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in tiny_model.parameters())
    changed = [name for name, p in tiny_model.zformer.named_parameters() if not torch.equal(p, before[name])]
    assert changed, "stage 1 did not update the Z-former"


def test_dino_on_a_cpu_backbone_returns_a_cpu_float32_teacher() -> None:
    torch.manual_seed(0)
    backbone = ViTModel(
        ViTConfig(**vit_config(image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2)),
        add_pooling_layer=False,
    )
    settings = replace(schedule_for("tiny").dino, steps=1, batch_size=4, local_size=8)
    teacher, losses = train_dino(backbone, torch.randn(6, 3, 16, 16).half(), settings, seed=0)
    assert len(losses) == 1
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in teacher.parameters())


def test_stage1_regresses_standardised_features_so_the_dataset_mean_is_no_answer(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, make_study: StudyFactory
) -> None:
    """Features that barely differ between slices (as a briefly trained slice encoder gives)
    must not be learnable by predicting their mean: that collapsed the demo's Z-former.
    Here the features are independent noise around a large mean, so no context can predict
    a masked one and the standardised L1 stays near that of a unit Gaussian (~0.8); a raw
    target would let the loss fall to the noise scale (~0.01)."""
    studies = [
        preprocess_study(f"s{i}", make_study([("CT", "CT:axial:venous", 6)], seed=i), processor, "x .", {})
        for i in range(4)
    ]
    generator = torch.Generator().manual_seed(0)
    width = tiny_model.config.vision.hidden_size
    features = [[1.0 + 0.01 * torch.randn(6, width, generator=generator)] for _ in studies]
    mean, std = feature_statistics(features)
    assert torch.allclose(mean, torch.ones(width), atol=0.02) and bool((std < 0.02).all())
    log = stage1_mem(
        tiny_model,
        processor,
        studies,
        features,
        StageSettings(epochs=30, lr=1e-2, batch_size=2),
        mask_ratio=0.3,
        seed=0,
    )
    assert log.last_loss > 0.4, log.epoch_losses
