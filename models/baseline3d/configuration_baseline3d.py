"""Configuration of the 3D-patch baseline: the paper's comparison to MS-VLM.

The baseline replaces the slice encoder + Z-former by a ViT over 3D sub-volume patches of a
fixed-size, resampled volume (e.g. 32 x 64 x 64 voxels in 4 x 8 x 8 patches), one volume per
view. Everything after the encoder (bridge, LM, findings head, processor settings) comes
from `ReportModelConfig`, so both models are trained and evaluated on identical inputs.
"""

from __future__ import annotations

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, ViTConfig
from transformers.configuration_utils import SubConfigSpec

from models.msvlm.configuration_msvlm import MsVlmConfigError, ReportModelConfig


@strict
class Baseline3dConfig(ReportModelConfig):
    """`volume_config` (a ViT config) sets the transformer; its `patch_size` is the in-plane patch.

    Each view is resampled to `volume_depth` slices (so `max_slices_per_view` must equal it)
    and cut into `patch_depth` x patch x patch patches.
    """

    model_type = "msvlm_baseline3d"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        **ReportModelConfig.sub_configs_defaults,
        "volume_config": SubConfigSpec(config_class=ViTConfig),
    }

    volume_config: dict | PreTrainedConfig | None = None
    volume_depth: int = 64
    patch_depth: int = 8
    max_slices_per_view: int = 64

    @property
    def fixed_slices_per_view(self) -> int | None:
        return self.volume_depth

    @property
    def volume(self) -> ViTConfig:
        """`volume_config` as a `ViTConfig`."""
        assert isinstance(self.volume_config, ViTConfig)
        return self.volume_config

    @property
    def visual_hidden_size(self) -> int:
        return int(self.volume.hidden_size)

    @property
    def in_plane_patch(self) -> int:
        """`volume_config.patch_size`, which `check` requires to be a single int."""
        patch = self.volume.patch_size
        assert isinstance(patch, int)
        return patch

    @property
    def patches_per_view(self) -> int:
        in_plane = self.image_size // self.in_plane_patch
        return (self.volume_depth // self.patch_depth) * in_plane * in_plane

    def check(self) -> None:
        super().check()
        volume = self.volume

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise MsVlmConfigError(message)

        require(volume.hidden_size > 0 and volume.num_hidden_layers > 0, "volume_config needs layers")
        require(
            volume.hidden_size % volume.num_attention_heads == 0,
            "volume_config.hidden_size must be a multiple of num_attention_heads",
        )
        require(volume.image_size == self.image_size, "volume_config.image_size must equal image_size")
        require(
            isinstance(volume.patch_size, int) and self.image_size % volume.patch_size == 0,
            "image_size must be a multiple of volume_config.patch_size",
        )
        require(volume.num_channels == 3, "volume_config.num_channels must be 3 (three CT windows)")
        require(
            self.patch_depth > 0 and self.volume_depth % self.patch_depth == 0,
            f"volume_depth ({self.volume_depth}) must be a positive multiple of "
            f"patch_depth ({self.patch_depth})",
        )
        require(
            self.max_slices_per_view == self.volume_depth,
            "max_slices_per_view must equal volume_depth (every view is resampled to that depth)",
        )
