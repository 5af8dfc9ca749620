"""The convolutional stem of the slice encoder: shapes, exact chunking, save/load, DINO."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.msvlm import MsVlmConfig, MsVlmForReportGeneration
from models.msvlm.configuration_msvlm import MsVlmConfigError
from models.msvlm.conv_stem import ConvStem, conv_stem_channels
from models.training.dino import train_dino
from models.training.stages import schedule_for

pytestmark = pytest.mark.model


@pytest.fixture
def conv_config(tiny_config: MsVlmConfig) -> MsVlmConfig:
    tiny_config.vision_stem = "conv"
    tiny_config.check()
    return tiny_config


@pytest.fixture
def conv_model(conv_config: MsVlmConfig) -> MsVlmForReportGeneration:
    torch.manual_seed(0)
    return MsVlmForReportGeneration(conv_config).eval()


def test_stem_widths_and_patch_sizes() -> None:
    assert conv_stem_channels(8, 128) == [32, 64, 128]
    assert conv_stem_channels(16, 96) == [32, 64, 96, 96]
    with pytest.raises(ValueError, match="power-of-two patch size, got 6"):
        conv_stem_channels(6, 64)


def test_config_refuses_a_conv_stem_on_a_patch_size_it_cannot_stride(conv_config: MsVlmConfig) -> None:
    conv_config.vision_config.patch_size = 12  # type: ignore[union-attr]
    conv_config.vision_config.image_size = 36  # type: ignore[union-attr]
    conv_config.image_size = 36
    with pytest.raises(MsVlmConfigError, match="vision_stem 'conv' needs a power-of-two"):
        conv_config.check()


def test_stem_replaces_the_patch_embedding_and_keeps_the_token_grid(
    conv_model: MsVlmForReportGeneration,
) -> None:
    embeddings = conv_model.vision_model.embeddings
    assert isinstance(embeddings.patch_embeddings.projection, ConvStem)
    slices = torch.randn(3, 3, 32, 32)
    tokens = conv_model.vision_model(pixel_values=slices).last_hidden_state
    assert tokens.shape == (3, 1 + (32 // 8) ** 2, conv_model.config.vision.hidden_size)
    assert conv_model.encode_slices(slices).shape == (3, conv_model.config.vision.hidden_size)


def test_chunked_encoding_is_exact_in_eval_mode(conv_model: MsVlmForReportGeneration) -> None:
    """Batch norm uses its running statistics at inference, so a slice's embedding does not
    depend on which other slices share its chunk."""
    slices = torch.randn(11, 3, 32, 32)
    whole = conv_model.encode_slices(slices)
    conv_model.config.slice_chunk_size = 3
    assert torch.allclose(conv_model.encode_slices(slices), whole, atol=1e-6)


def test_round_trip_keeps_the_batch_norm_statistics(
    conv_model: MsVlmForReportGeneration, tmp_path: Path
) -> None:
    conv_model.train()
    with torch.no_grad():
        conv_model.vision_model(pixel_values=torch.randn(6, 3, 32, 32) * 3 + 1)
    conv_model.eval()
    stem = conv_model.vision_model.embeddings.patch_embeddings.projection
    assert float(stem[1].running_mean.abs().sum()) > 0  # the statistics moved
    conv_model.save_pretrained(tmp_path)
    loaded = MsVlmForReportGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.vision_stem == "conv"
    slices = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded.encode_slices(slices), conv_model.encode_slices(slices))


def test_dino_teacher_keeps_its_own_batch_norm_statistics(
    conv_model: MsVlmForReportGeneration,
) -> None:
    """The teacher runs in train mode: its stem keeps running statistics of what it saw."""
    settings = replace(schedule_for("tiny").dino, steps=3)
    teacher, losses = train_dino(conv_model.vision_model, torch.randn(16, 3, 32, 32) + 2.0, settings, seed=0)
    stem = teacher.embeddings.patch_embeddings.projection
    assert float(stem[1].running_mean.abs().sum()) > 0
    assert all(loss == loss for loss in losses)  # finite


@pytest.mark.parametrize("train", [True, False])
def test_channels_last_layout_computes_what_the_default_layout_does(train: bool) -> None:
    """The stem runs channels-last for speed; outputs and gradients are those of the plain stack."""
    torch.manual_seed(0)
    stem = ConvStem(3, 64, 8).train(train)
    pixels = torch.randn(6, 3, 32, 32, requires_grad=True)
    fast = stem(pixels)
    fast_grad = torch.autograd.grad(fast.square().sum(), pixels)[0]
    plain = torch.nn.Sequential.forward(stem, pixels)
    plain_grad = torch.autograd.grad(plain.square().sum(), pixels)[0]
    assert fast.is_contiguous() and fast.shape == (6, 64, 4, 4)
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(fast_grad, plain_grad, atol=1e-4)
