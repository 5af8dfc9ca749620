"""The Z-former: a BigBird encoder over the slice embeddings of all views of a study.

Radiologists read a study slice by slice and across views; the Z-former does the same over
the per-slice ViT embeddings. Every slice token gets
  * its slice index within its view (BigBird's own learned position embedding, via
    `position_ids`; so `max_position_embeddings` bounds slices per view, not the study), and
  * a learned embedding of its view key ("CT:axial:arterial", id 0 = other/unknown).
Views are concatenated per study, valid slices first, padding at the end.

Long sequences use BigBird block-sparse attention and short ones full attention. We choose
the type by length ourselves: BigBird's own fallback logs a warning and silently switches the
model to full attention *for all later calls*.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BigBirdConfig, BigBirdModel

#: BigBird's block-sparse kernel uses a different, fixed random plan sized by
#: max_position_embeddings for these exact lengths; we pad past them instead.
_BIGBIRD_LEGACY_PLAN_LENGTHS = frozenset({1024, 3072, 4096})


@dataclass(frozen=True)
class PackedSlices:
    """Slice features of all views packed per study (valid slices first), ready for the Z-former.

    features (B, L, D); view_ids, positions (B, L) long; mask (B, L) bool; `index` (B, L) is the
    flat (view * Z + slice) position each token came from, so outputs can be scattered back.
    """

    features: torch.Tensor
    view_ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True)
class ZFormerOutput:
    """last_hidden_state (B, L, Dz) and the attention type that was actually used."""

    last_hidden_state: torch.Tensor
    attention_type: str


def pack_views(
    slice_features: torch.Tensor, slice_mask: torch.Tensor, view_ids: torch.Tensor
) -> PackedSlices:
    """(B, V, Z, D) features with (B, V, Z) mask and (B, V) view ids -> `PackedSlices`.

    Slices of one view are assumed to occupy indices 0..n-1 (the processor guarantees it), so
    the slice index is the position within the view. A stable sort keeps view order and
    slice order, and moves padding to the end of each study.
    """
    batch, views, depth, width = slice_features.shape
    flat_mask = slice_mask.reshape(batch, views * depth).to(torch.bool)
    order = torch.argsort((~flat_mask).to(torch.int8), dim=1, stable=True)
    length = max(int(flat_mask.sum(dim=1).max().item()), 1) if batch > 0 else 1
    order = order[:, :length]
    mask = flat_mask.gather(1, order)
    features = slice_features.reshape(batch, views * depth, width).gather(
        1, order.unsqueeze(-1).expand(-1, -1, width)
    )
    slice_index = torch.arange(depth, device=slice_features.device).repeat(views)
    positions = slice_index.unsqueeze(0).expand(batch, -1).gather(1, order) * mask
    token_views = view_ids.unsqueeze(-1).expand(batch, views, depth).reshape(batch, views * depth)
    token_views = token_views.gather(1, order) * mask
    return PackedSlices(features=features, view_ids=token_views, positions=positions, mask=mask, index=order)


class ZFormer(nn.Module):
    """Input standardisation + projection + view embedding + BigBird encoder (no pooler).

    Slice embeddings are standardised per dimension with the training set's statistics
    (`input_mean`, `input_scale`, set by `set_input_statistics` before stage 1 and saved
    with the weights). A briefly trained slice encoder gives embeddings whose
    slice-to-slice differences are ~1/30 of their common part; projected raw, that common
    part dominated every token and the demo's Z-former put out the same vector for every
    slice of every study. The defaults (0 and 1) leave the features as they are.
    """

    input_mean: torch.Tensor
    input_scale: torch.Tensor

    def __init__(self, *, config: BigBirdConfig, input_size: int, num_view_ids: int) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(input_size))
        self.register_buffer("input_scale", torch.ones(input_size))
        self.input_projection = nn.Linear(input_size, config.hidden_size)
        self.view_embedding = nn.Embedding(num_view_ids, config.hidden_size)
        # Learned stand-in for hidden slices in masked embedding modelling (training stage 1).
        self.mask_embedding = nn.Parameter(torch.zeros(input_size))
        self.encoder = BigBirdModel(config, add_pooling_layer=False)

    @torch.no_grad()
    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with this per-dimension mean and standard deviation (floored)."""
        self.input_mean.copy_(mean)
        self.input_scale.copy_(1.0 / std.clamp_min(1e-6))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """Slice embeddings in the units the Z-former reads (and stage 1 regresses)."""
        return (features - self.input_mean.to(features.dtype)) * self.input_scale.to(features.dtype)

    def attention_type_for(self, length: int) -> str:
        """Block-sparse only where BigBird supports it: longer than its global+window+random span."""
        config = self.encoder.config
        if config.attention_type != "block_sparse":
            return "original_full"
        minimum = (5 + 2 * config.num_random_blocks) * config.block_size
        return "block_sparse" if length > minimum else "original_full"

    def _padded_length(self, length: int) -> int:
        block = self.encoder.config.block_size
        padded = -(-length // block) * block
        if padded in _BIGBIRD_LEGACY_PLAN_LENGTHS:
            padded += block
        return padded

    def forward(
        self,
        features: torch.Tensor,
        view_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        replace_mask: torch.Tensor | None = None,
    ) -> ZFormerOutput:
        """features (B, L, Din); view_ids, positions (B, L); mask (B, L) bool.

        `replace_mask` (B, L) bool swaps those (standardised) slice features for the learned
        mask embedding before encoding (masked embedding modelling); None at inference.
        """
        length = mask.shape[1]
        features = self.standardise(features)
        if replace_mask is not None:
            features = torch.where(
                replace_mask.unsqueeze(-1), self.mask_embedding.to(features.dtype), features
            )
        hidden = self.input_projection(features) + self.view_embedding(view_ids)
        attention_type = self.attention_type_for(length)
        self.encoder.set_attention_type(attention_type)
        attention_mask = mask.to(torch.long)
        if attention_type == "block_sparse":
            pad = self._padded_length(length) - length
            if pad:
                hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
                attention_mask = nn.functional.pad(attention_mask, (0, pad))
                positions = nn.functional.pad(positions, (0, pad))
        # transformers' block-sparse kernel fails under autocast (it scatters float32 weights
        # into an attention-probability matrix of the autocast dtype), so that path runs
        # outside autocast, in the dtype of the Z-former's weights.
        autocast_off = attention_type == "block_sparse" and torch.is_autocast_enabled(hidden.device.type)
        if autocast_off:
            hidden = hidden.to(self.input_projection.weight.dtype)
        precision = torch.autocast(hidden.device.type, enabled=False) if autocast_off else nullcontext()
        with precision:
            # token_type_ids and position_ids are passed explicitly: BigBird's buffers for them
            # are only max_position_embeddings long, shorter than a multi-view study.
            output = self.encoder(
                inputs_embeds=hidden,
                attention_mask=attention_mask,
                position_ids=positions,
                token_type_ids=torch.zeros_like(attention_mask),
            )
        return ZFormerOutput(
            last_hidden_state=output.last_hidden_state[:, :length], attention_type=attention_type
        )
