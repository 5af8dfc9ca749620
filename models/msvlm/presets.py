"""Named MS-VLM sizes.

* "tiny": unit tests on CPU, seconds per test.
* "demo": trainable on 2 CPU cores in about 30 minutes (32.8 on 2 Intel cores, 37.8 on 2 AMD
  EPYC cores) (64x64 slices, small word-level LM, a convolutional stem in the ViT and finding
  tokens for the LM; see `conv_stem` and `bridge.FindingsPrompt`).
* "full": paper scale (ViT-B/16 at 224, BigBird Z-former, 32 latents, Llama-3.2-1B-style LM);
  only built with random weights, for GPU memory and speed measurements.

The LM's vocabulary comes from the tokenizer (word-level for the demo), so `vocab_size` is a
parameter; special token ids follow `models.msvlm.tokenizer` (pad 0, bos 1, eos 2).
"""

from __future__ import annotations

from typing import Any

from .configuration_msvlm import MsVlmConfig
from .tokenizer import BOS_ID, EOS_ID, PAD_ID

PRESET_NAMES: tuple[str, ...] = ("tiny", "demo", "full")


def llama_text_config(
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_positions: int,
    rope_theta: float = 10_000.0,
) -> dict[str, Any]:
    """A Llama text config (as a dict, for the nested `text_config`) with our special ids."""
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_positions,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "tie_word_embeddings": True,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


def vit_config(
    *, image_size: int, patch_size: int, hidden_size: int, num_layers: int, num_heads: int
) -> dict[str, Any]:
    return {
        "image_size": image_size,
        "patch_size": patch_size,
        "num_channels": 3,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": 4 * hidden_size,
    }


def bigbird_config(
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    max_slices: int,
    block_size: int,
    num_random_blocks: int,
) -> dict[str, Any]:
    """BigBird used as an `inputs_embeds` encoder: no vocabulary, slice index as position."""
    return {
        "vocab_size": 1,
        "type_vocab_size": 1,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": 4 * hidden_size,
        "hidden_act": "gelu",
        "max_position_embeddings": max_slices,
        "attention_type": "block_sparse",
        "block_size": block_size,
        "num_random_blocks": num_random_blocks,
        "pad_token_id": 0,
        "bos_token_id": None,
        "eos_token_id": None,
        "sep_token_id": None,
    }


def msvlm_preset(name: str, *, vocab_size: int | None = None) -> MsVlmConfig:
    """Config of the named preset; `vocab_size` defaults to 128 / 2048 / 32000."""
    if name == "tiny":
        return MsVlmConfig(
            vision_config=vit_config(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4),
            zformer_config=bigbird_config(
                hidden_size=32, num_layers=2, num_heads=4, max_slices=16, block_size=2, num_random_blocks=1
            ),
            text_config=llama_text_config(
                vocab_size=vocab_size or 128,
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                num_kv_heads=2,
                intermediate_size=128,
                max_positions=256,
            ),
            image_size=32,
            max_slices_per_view=16,
            slice_chunk_size=8,
            num_latents=4,
            resampler_hidden_size=32,
            resampler_layers=1,
            resampler_heads=4,
            max_text_tokens=96,
        )
    if name == "demo":
        return MsVlmConfig(
            vision_config=vit_config(image_size=64, patch_size=8, hidden_size=128, num_layers=4, num_heads=4),
            zformer_config=bigbird_config(
                hidden_size=128, num_layers=2, num_heads=4, max_slices=64, block_size=8, num_random_blocks=1
            ),
            text_config=llama_text_config(
                vocab_size=vocab_size or 2048,
                hidden_size=256,
                num_layers=3,
                num_heads=4,
                num_kv_heads=4,
                intermediate_size=512,
                max_positions=512,
            ),
            image_size=64,
            max_slices_per_view=64,
            slice_chunk_size=64,
            num_latents=16,
            resampler_hidden_size=128,
            resampler_layers=2,
            resampler_heads=4,
            max_text_tokens=256,
            vision_stem="conv",
            # the patch tokens' maximum with stage 0b's token loss: held-out nodule AUC 0.80 -> 0.94
            # (README "Which patch token shows it")
            slice_pooling="cls_max",
            findings_tokens=True,
        )
    if name == "full":
        return MsVlmConfig(
            vision_config=vit_config(
                image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12
            ),
            zformer_config=bigbird_config(
                hidden_size=768,
                num_layers=8,
                num_heads=12,
                max_slices=256,
                block_size=16,
                num_random_blocks=2,
            ),
            text_config=llama_text_config(
                vocab_size=vocab_size or 32000,
                hidden_size=2048,
                num_layers=16,
                num_heads=32,
                num_kv_heads=8,
                intermediate_size=8192,
                max_positions=2048,
                rope_theta=500_000.0,
            ),
            image_size=224,
            max_slices_per_view=256,
            slice_chunk_size=64,
            num_latents=32,
            resampler_hidden_size=768,
            resampler_layers=2,
            resampler_heads=12,
            max_text_tokens=1024,
        )
    raise ValueError(f"unknown preset {name!r}; choose one of {PRESET_NAMES}")
