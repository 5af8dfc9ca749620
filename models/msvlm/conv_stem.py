"""A convolutional patch embedding for the ViT slice encoder (`MsVlmConfig.vision_stem = "conv"`).

Why: a ViT's linear patch embedding, trained from scratch on a few hundred studies, did not
learn to see a finding of one to three pixels (a 5-20 mm lung nodule at a 64 matrix): the
demo's ViT scored held-out slices at AUC 0.62 where a four-layer CNN with batch norm reached
1.0 on the same slices. Replacing the embedding by a few strided 3x3 convolutions ("early
convolutions help transformers see better", Xiao et al. 2021) closed most of that gap (0.95)
while the rest of the slice encoder stays a `transformers.ViTModel`. Batch norm, not group
norm, was what made it learn (group norm: 0.61).

The stem keeps the ViT's token grid: image_size / patch_size tokens per side, each of
`hidden_size`. It is swapped into `ViTModel.embeddings.patch_embeddings.projection`, so
weights save and load under that name and position embeddings, CLS token and interpolation
work unchanged. The "demo" preset uses it; "full" keeps the linear embedding so that
published ViT weights load.
"""

from __future__ import annotations

import torch
from torch import nn

#: channels of the first convolution; each stride-2 step doubles them (capped at the ViT width)
STEM_BASE_CHANNELS = 32


def supports_patch_size(patch_size: object) -> bool:
    """Whether stride-2 steps can make this patch size: an int power of two, at least 2."""
    return isinstance(patch_size, int) and patch_size >= 2 and patch_size & (patch_size - 1) == 0


def conv_stem_channels(patch_size: int, hidden_size: int) -> list[int]:
    """Output channels of each 3x3 block: one at full resolution, then one per stride 2 but the last."""
    if not supports_patch_size(patch_size):
        raise ValueError(f"a convolutional stem needs a power-of-two patch size, got {patch_size}")
    halvings = patch_size.bit_length() - 1  # log2(patch_size); the last one is the projection
    return [min(STEM_BASE_CHANNELS * 2**i, hidden_size) for i in range(halvings)]


class ConvStem(nn.Sequential):
    """3x3 conv + BN + ReLU blocks (stride 1, then 2, 2, ...) and a 2x2 stride-2 projection.

    (N, 3, S, S) -> (N, hidden_size, S / patch_size, S / patch_size), like the linear
    embedding it replaces.
    """

    def __init__(self, num_channels: int, hidden_size: int, patch_size: int) -> None:
        widths = conv_stem_channels(patch_size, hidden_size)
        layers: list[nn.Module] = []
        previous = num_channels
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        layers.append(nn.Conv2d(previous, hidden_size, 2, stride=2))
        super().__init__(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Run in channels-last layout: the same arithmetic, 1.5x faster on CPU (oneDNN's
        convolutions and batch norm prefer it: 299 -> 199 ms forward and backward for 64
        slices on 2 cores). The output goes back to the default layout for the ViT."""
        out = super().forward(pixels.contiguous(memory_format=torch.channels_last))
        return out.contiguous()

    @property
    def weight(self) -> torch.Tensor:
        """The projection's weight: `ViTModel` reads `projection.weight.dtype` to cast its input."""
        last = self[-1]
        assert isinstance(last, nn.Conv2d)
        return last.weight
