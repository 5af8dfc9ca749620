"""MsVlmConfig: validation at construction, presets, and the save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig, PreTrainedConfig

from models.baseline3d import Baseline3dConfig, baseline3d_preset
from models.msvlm import PRESET_NAMES, MsVlmConfig, MsVlmConfigError, msvlm_preset

pytestmark = pytest.mark.model


def _comparable(config: PreTrainedConfig) -> dict[str, Any]:
    data = config.to_dict()
    data.pop("_name_or_path")
    return data


def _tiny_kwargs(**overrides: Any) -> dict[str, Any]:
    base = msvlm_preset("tiny")
    kwargs: dict[str, Any] = {
        "vision_config": base.vision.to_dict(),
        "zformer_config": base.zformer.to_dict(),
        "text_config": base.text.to_dict(),
        "image_size": base.image_size,
        "max_slices_per_view": base.max_slices_per_view,
        "num_latents": base.num_latents,
        "resampler_hidden_size": base.resampler_hidden_size,
        "resampler_heads": base.resampler_heads,
        "resampler_layers": base.resampler_layers,
    }
    kwargs.update(overrides)
    return kwargs


def test_tiny_kwargs_are_valid() -> None:
    config = MsVlmConfig(**_tiny_kwargs())
    assert config.visual_hidden_size == 32
    assert config.fixed_slices_per_view is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"finding_labels": ["lung_nodule", "Lung_Nodule"]}, "finding_labels has duplicates"),
        ({"finding_labels": []}, "finding_labels must not be empty"),
        ({"view_vocabulary": ["CT:axial:arterial", "other"]}, "must not contain 'other'"),
        ({"slice_chunk_size": 0}, "slice_chunk_size must be positive"),
        ({"num_latents": 0}, "num_latents must be positive"),
        ({"image_size": 64}, "vision_config.image_size"),
        ({"resampler_heads": 5}, "resampler.hidden_size"),
        ({"max_slices_per_view": 100}, "max_position_embeddings"),
        ({"ct_windows": [[1500, -600], [400, 40]]}, "exactly 3"),
        ({"ct_windows": [[1500, -600], [0, 40], [2000, 500]]}, "width>0"),
        ({"prompt_template": "{patient_name} findings:"}, "prompt_template may only use"),
        ({"findings_threshold": 1.0}, "findings_threshold must lie strictly between 0 and 1"),
        ({"finding_modalities": {"tumour": ["CT"]}}, "finding_modalities names findings not in"),
        ({"findings_threshold": 0}, "findings_threshold must lie strictly between 0 and 1"),
        ({"slice_pooling": "mean"}, "slice_pooling must be one of"),
    ],
)
def test_invalid_values_are_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(MsVlmConfigError, match=message):
        MsVlmConfig(**_tiny_kwargs(**overrides))


def test_findings_apply_to_the_modalities_they_were_trained_for() -> None:
    config = MsVlmConfig(**_tiny_kwargs(finding_modalities={"lung_nodule": ["CT"], "rectal_lesion": ["MR"]}))
    every = list(config.finding_labels or [])
    assert config.findings_for(["CT"]) == [k for k in every if k != "rectal_lesion"]
    assert config.findings_for(["mr"]) == [k for k in every if k != "lung_nodule"]
    assert config.findings_for(["CT", "MR"]) == every
    assert MsVlmConfig(**_tiny_kwargs()).findings_for(["CT"]) == every  # none listed: all apply


def test_sub_config_errors_name_the_sub_config() -> None:
    vision = {**msvlm_preset("tiny").vision.to_dict(), "num_attention_heads": 3}
    with pytest.raises(MsVlmConfigError, match="vision_config.hidden_size"):
        MsVlmConfig(**_tiny_kwargs(vision_config=vision))
    text = {**msvlm_preset("tiny").text.to_dict(), "pad_token_id": 10_000}
    with pytest.raises(MsVlmConfigError, match="text_config.pad_token_id"):
        MsVlmConfig(**_tiny_kwargs(text_config=text))


def test_config_errors_are_value_errors() -> None:
    assert issubclass(MsVlmConfigError, ValueError)


def test_lists_are_not_shared_between_instances() -> None:
    first, second = MsVlmConfig(**_tiny_kwargs()), MsVlmConfig(**_tiny_kwargs())
    assert first.finding_labels is not second.finding_labels
    assert first.ct_windows is not second.ct_windows


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_build(name: str) -> None:
    config = msvlm_preset(name)
    assert config.image_size == config.vision.image_size
    baseline = baseline3d_preset(name)
    assert baseline.text.to_dict() == config.text.to_dict()
    assert baseline.num_latents == config.num_latents


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        msvlm_preset("huge")


def test_round_trip_through_auto_config(tmp_path: Path) -> None:
    config = msvlm_preset("tiny", vocab_size=77)
    config.model_name, config.model_version = "msvlm-demo", "1.2"
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["model_type"], saved["model_name"], saved["model_version"]) == (
        "msvlm",
        "msvlm-demo",
        "1.2",
    )
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MsVlmConfig)
    assert _comparable(loaded) == _comparable(config)
    assert loaded.text.vocab_size == 77
    assert loaded.zformer.block_size == config.zformer.block_size


def test_baseline_round_trip_and_validation(tmp_path: Path) -> None:
    config = baseline3d_preset("tiny")
    assert config.fixed_slices_per_view == config.volume_depth == config.max_slices_per_view
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, Baseline3dConfig)
    assert _comparable(loaded) == _comparable(config)
    kwargs: dict[str, Any] = {"volume_config": config.volume.to_dict(), "text_config": config.text.to_dict()}
    with pytest.raises(MsVlmConfigError, match="multiple of patch_depth"):
        Baseline3dConfig(**kwargs, image_size=32, volume_depth=8, max_slices_per_view=8, patch_depth=3)
    with pytest.raises(MsVlmConfigError, match="must equal volume_depth"):
        Baseline3dConfig(**kwargs, image_size=32, volume_depth=8, max_slices_per_view=16, patch_depth=2)
