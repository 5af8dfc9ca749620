"""The 3D-patch baseline model: ViT over sub-volume patches, then MS-VLM's bridge, LM and head.

This is the design the paper argues against: patchifying the volume mixes neighbouring slices
inside every token. Each view is encoded on its own (a fixed-size volume, 3D patch embedding,
learned position and view embeddings, ViT blocks); the patch tokens of all views of a study
are then concatenated, padded views masked, and handed to the shared report head.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import ViTConfig
from transformers import initialization as init
from transformers.models.vit.modeling_vit import ViTLayer

from models.msvlm.report_model import MsVlmOutput, ReportModelBase, VisualEncoding

from .configuration_baseline3d import Baseline3dConfig


class VolumePatchEncoder(nn.Module):
    """Conv3d patch embedding + position/view embeddings + ViT layers + final layer norm."""

    def __init__(
        self, *, config: ViTConfig, patch_shape: tuple[int, int, int], num_patches: int, num_view_ids: int
    ):
        super().__init__()
        self.patch_embedding = nn.Conv3d(
            config.num_channels, config.hidden_size, kernel_size=patch_shape, stride=patch_shape
        )
        self.position_embedding = nn.Parameter(torch.zeros(1, num_patches, config.hidden_size))
        self.view_embedding = nn.Embedding(num_view_ids, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(ViTLayer(config) for _ in range(config.num_hidden_layers))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, volumes: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        """volumes (N, C, D, H, W), view_ids (N,) -> patch tokens (N, P, hidden)."""
        weight = self.patch_embedding.weight
        tokens = self.patch_embedding(volumes.to(weight.dtype)).flatten(2).transpose(1, 2)
        hidden = (
            tokens + self.position_embedding.to(tokens.dtype) + self.view_embedding(view_ids).unsqueeze(1)
        )
        hidden = self.dropout(hidden)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.layernorm(hidden)


class Baseline3dForReportGeneration(ReportModelBase):
    """Same inputs, outputs, bridge, LM and findings head as `MsVlmForReportGeneration`."""

    config: Baseline3dConfig
    config_class = Baseline3dConfig

    def __init__(self, config: Baseline3dConfig) -> None:
        super().__init__(config)
        assert config.view_vocabulary is not None
        # ViT layers outside a ViTModel do not get an attention implementation dispatched;
        # they follow the outer model's (sdpa unless asked otherwise).
        config.volume._attn_implementation = self.config._attn_implementation
        self.volume_encoder = VolumePatchEncoder(
            config=config.volume,
            patch_shape=(config.patch_depth, config.in_plane_patch, config.in_plane_patch),
            num_patches=config.patches_per_view,
            num_view_ids=len(config.view_vocabulary) + 1,
        )
        self._build_report_modules(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, VolumePatchEncoder):
            init.trunc_normal_(module.position_embedding, mean=0.0, std=self.config.initializer_range)

    def encode_study(
        self, *, pixel_values: torch.Tensor, slice_mask: torch.Tensor, view_ids: torch.Tensor
    ) -> VisualEncoding:
        """(B, V, D, 3, S, S) fixed-depth views -> (B, V * P, hidden) tokens, padded views masked."""
        batch, views, depth = slice_mask.shape
        if depth != self.config.volume_depth:
            raise ValueError(f"views must have {self.config.volume_depth} slices, got {depth}")
        view_mask = slice_mask.to(torch.bool).any(dim=-1)
        if not bool((slice_mask.to(torch.bool).all(dim=-1) == view_mask).all()):
            raise ValueError("the baseline needs complete fixed-depth views (use its own processor settings)")
        volumes = pixel_values[view_mask].transpose(1, 2)  # (N, 3, D, S, S)
        tokens = self.volume_encoder(volumes, view_ids[view_mask])
        num_patches = tokens.shape[1]
        out = tokens.new_zeros((batch, views, num_patches, tokens.shape[-1]))
        out[view_mask] = tokens
        mask = view_mask.unsqueeze(-1).expand(batch, views, num_patches)
        return VisualEncoding(
            tokens=out.reshape(batch, views * num_patches, -1), mask=mask.reshape(batch, -1)
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        slice_mask: torch.Tensor,
        view_ids: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        findings_labels: torch.Tensor | None = None,
        site_labels: torch.Tensor | None = None,
    ) -> MsVlmOutput:
        """Same arguments as `MsVlmForReportGeneration.forward`, without precomputed features."""
        encoding = self.encode_study(pixel_values=pixel_values, slice_mask=slice_mask, view_ids=view_ids)
        return self.forward_from_encoding(
            encoding,
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            findings_labels=findings_labels,
            site_labels=site_labels,
        )
