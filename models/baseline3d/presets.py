"""Baseline sizes matched to the MS-VLM presets of the same name.

The LM, bridge, findings head, image size and ViT width are copied from `msvlm_preset(name)`,
and the volume transformer gets as many layers as MS-VLM's slice encoder and Z-former
together, so a comparison changes the encoder design, not the budget elsewhere.
"""

from __future__ import annotations

import copy

from models.msvlm.configuration_msvlm import ReportModelConfig
from models.msvlm.presets import PRESET_NAMES, msvlm_preset, vit_config

from .configuration_baseline3d import Baseline3dConfig

#: name -> (volume depth, patch depth); the in-plane patch is the MS-VLM ViT patch.
_VOLUME_SHAPES: dict[str, tuple[int, int]] = {"tiny": (8, 2), "demo": (32, 4), "full": (64, 8)}

_SHARED_FIELDS = (
    "view_vocabulary",
    "finding_labels",
    "finding_modalities",
    "num_latents",
    "resampler_hidden_size",
    "resampler_layers",
    "resampler_heads",
    "findings_pooling",
    "findings_loss_weight",
    "findings_tokens",
    "findings_threshold",
    "image_size",
    "ct_windows",
    "prompt_template",
    "max_text_tokens",
    "initializer_range",
    "layer_norm_eps",
)


def shared_fields(config: ReportModelConfig) -> dict[str, object]:
    """The `ReportModelConfig` fields (besides text_config) as keyword arguments, deep-copied."""
    return {name: copy.deepcopy(getattr(config, name)) for name in _SHARED_FIELDS}


def baseline3d_preset(name: str, *, vocab_size: int | None = None) -> Baseline3dConfig:
    """Baseline config of the named size ("tiny", "demo", "full")."""
    if name not in _VOLUME_SHAPES:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESET_NAMES}")
    reference = msvlm_preset(name, vocab_size=vocab_size)
    vision, zformer = reference.vision, reference.zformer
    depth, patch_depth = _VOLUME_SHAPES[name]
    return Baseline3dConfig(
        volume_config=vit_config(
            image_size=reference.image_size,
            patch_size=reference.patch_size,
            hidden_size=vision.hidden_size,
            num_layers=vision.num_hidden_layers + zformer.num_hidden_layers,
            num_heads=vision.num_attention_heads,
        ),
        text_config=copy.deepcopy(reference.text),
        volume_depth=depth,
        patch_depth=patch_depth,
        max_slices_per_view=depth,
        **shared_fields(reference),  # type: ignore[arg-type]
    )
