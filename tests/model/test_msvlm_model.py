"""MsVlmForReportGeneration on the tiny preset: shapes, masks, chunking, Z-former attention
selection, save/load, deterministic generation, and a short training run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel

from models.msvlm import MsVlmBatch, MsVlmConfig, MsVlmForReportGeneration, MsVlmProcessor, ViewInput
from models.msvlm.zformer import pack_views
from tests.support.batches import forward_batch

pytestmark = pytest.mark.model

StudyFactory = Callable[..., list[ViewInput]]


def _generate(model: MsVlmForReportGeneration, batch: MsVlmBatch, num_beams: int = 1) -> torch.Tensor:
    output = model.generate(
        pixel_values=batch.pixel_values,
        slice_mask=batch.slice_mask,
        view_ids=batch.view_ids,
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=6,
        num_beams=num_beams,
    )
    assert output.sequences is not None
    return output.sequences


@pytest.fixture
def short_studies(make_study: StudyFactory) -> list[list[ViewInput]]:
    """Two studies short enough (<= 14 slices) for full attention in the tiny Z-former."""
    return [
        make_study([("CT", "CT:axial:arterial", 3)], seed=1),
        make_study(
            [("CT", "CT:axial:arterial", 4), ("MR", "MR:sagittal:t2", 6), ("CT", "unknown", 2)], seed=2
        ),
    ]


def test_forward_shapes_and_losses(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, short_studies: list[list[ViewInput]]
) -> None:
    batch = processor(
        short_studies, reports=["no effusion .", "a 6 mm nodule ."], findings=[{"lung_nodule": 0}, {}]
    )
    out = forward_batch(tiny_model, batch)
    config = tiny_model.config
    assert out.findings_logits is not None and out.findings_logits.shape == (
        2,
        len(config.finding_labels or []),
    )
    assert out.visual_tokens is not None and out.visual_tokens.shape == (2, config.num_latents, 64)
    assert out.logits is not None and out.logits.shape == (
        2,
        config.num_latents + batch.input_ids.shape[1],
        len(processor.tokenizer),
    )
    assert out.loss is not None and out.lm_loss is not None and out.findings_loss is not None
    expected = out.lm_loss + config.findings_loss_weight * out.findings_loss
    assert torch.allclose(out.loss, expected)
    findings_only = tiny_model(
        pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids
    )
    assert findings_only.logits is None and findings_only.loss is None
    assert torch.allclose(findings_only.findings_logits, out.findings_logits, atol=1e-6)


def test_padding_does_not_change_a_study(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, short_studies: list[list[ViewInput]]
) -> None:
    """A study gives the same outputs alone and padded in a batch with a larger one."""
    reports = ["no effusion .", "a 6 mm nodule in the right upper lobe ."]
    together = forward_batch(tiny_model, processor(short_studies, reports=reports))
    alone = forward_batch(tiny_model, processor(short_studies[:1], reports=reports[:1]))
    assert torch.allclose(together.findings_logits[:1], alone.findings_logits, atol=1e-5)
    assert alone.logits is not None and together.logits is not None
    width = alone.logits.shape[1]
    assert torch.allclose(together.logits[:1, :width], alone.logits, atol=1e-4)
    # generation: left-padded prompt and padded views give the same tokens as alone
    batch_tokens = _generate(tiny_model, processor(short_studies))
    single_tokens = _generate(tiny_model, processor(short_studies[:1]))
    assert torch.equal(batch_tokens[:1, : single_tokens.shape[1]], single_tokens)


def test_varying_view_and_slice_counts(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, make_study: StudyFactory
) -> None:
    for specs in ([("CT", "a", 1)], [("MR", "b", 16)] * 4, [("CT", "c", 40), ("MR", "d", 1)]):
        batch = processor([make_study(specs)])
        out = tiny_model(
            pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids
        )
        assert out.findings_logits is not None and bool(torch.isfinite(out.findings_logits).all())


def test_chunked_slice_encoding_matches_unchunked(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, make_study: StudyFactory
) -> None:
    batch = processor([make_study([("CT", "CT:axial:arterial", 11)])])
    slices = batch.pixel_values[batch.slice_mask]
    with torch.no_grad():
        tiny_model.config.slice_chunk_size = 3
        chunked = tiny_model.encode_slices(slices)
        tiny_model.config.slice_chunk_size = 1000
        whole = tiny_model.encode_slices(slices)
    assert chunked.shape == (11, tiny_model.config.vision.hidden_size)
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_cls_max_pooling_adds_the_patch_tokens_maximum_and_survives_a_round_trip(
    tiny_config: MsVlmConfig, processor: MsVlmProcessor, make_study: StudyFactory, tmp_path: Path
) -> None:
    tiny_config.slice_pooling = "cls_max"
    torch.manual_seed(0)
    model = MsVlmForReportGeneration(tiny_config).eval()
    batch = processor([make_study([("CT", "CT:axial:arterial", 5)])])
    slices = batch.pixel_values[batch.slice_mask]
    with torch.no_grad():
        states = model.vision_model(pixel_values=slices).last_hidden_state
        pooled = model.encode_slices(slices)
        model.save_pretrained(tmp_path)
        loaded = MsVlmForReportGeneration.from_pretrained(tmp_path).eval()
        again = loaded.encode_slices(slices)
    assert torch.allclose(pooled, states[:, 0] + states[:, 1:].amax(dim=1), atol=1e-6)
    assert not torch.allclose(pooled, states[:, 0], atol=1e-3)
    assert loaded.config.slice_pooling == "cls_max"
    assert torch.equal(pooled, again)


def test_precomputed_slice_features_match_pixels(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, short_studies: list[list[ViewInput]]
) -> None:
    batch = processor(short_studies)
    with torch.no_grad():
        features = tiny_model.encode_views(batch.pixel_values, batch.slice_mask)
        assert bool((features[~batch.slice_mask] == 0).all())
        from_features = tiny_model(
            slice_features=features, slice_mask=batch.slice_mask, view_ids=batch.view_ids
        )
        from_pixels = tiny_model(
            pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids
        )
    assert torch.allclose(from_features.findings_logits, from_pixels.findings_logits, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model(
            pixel_values=batch.pixel_values,
            slice_features=features,
            slice_mask=batch.slice_mask,
            view_ids=batch.view_ids,
        )


def test_pack_views_keeps_order_positions_and_views() -> None:
    features = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3, 1)
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]], [[1, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    packed = pack_views(features, mask, torch.tensor([[5, 7], [9, 0]]))
    assert packed.mask.tolist() == [[True, True, True], [True, False, False]]
    assert packed.features[0, :, 0].tolist() == [0.0, 1.0, 3.0]
    assert packed.positions.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert packed.view_ids.tolist() == [[5, 5, 7], [9, 0, 0]]


def test_zformer_uses_block_sparse_for_long_and_full_for_short(tiny_model: MsVlmForReportGeneration) -> None:
    zformer = tiny_model.zformer
    config = zformer.encoder.config
    minimum = (5 + 2 * config.num_random_blocks) * config.block_size
    width = tiny_model.config.vision.hidden_size

    def run(length: int, valid: int) -> tuple[str, torch.Tensor]:
        torch.manual_seed(length)
        features = torch.randn(1, length, width)
        mask = torch.arange(length)[None] < valid
        positions = torch.arange(length)[None] % 16 * mask
        with torch.no_grad():
            out = zformer(features, torch.ones_like(positions), positions, mask)
        assert out.last_hidden_state.shape == (1, length, config.hidden_size)
        return out.attention_type, out.last_hidden_state

    def first_layer_attention() -> str:
        layer: Any = zformer.encoder.encoder.layer[0]
        return type(layer.attention.self).__name__

    kind, _ = run(minimum, minimum)
    assert kind == "original_full"
    assert first_layer_attention() == "BigBirdSelfAttention"
    kind, long_out = run(3 * minimum + 1, 3 * minimum - 5)  # odd length: padded to the block size
    assert kind == "block_sparse"
    assert first_layer_attention() == "BigBirdBlockSparseAttention"
    assert bool(torch.isfinite(long_out).all())
    kind, _ = run(minimum - 3, minimum - 3)  # and back: the choice is made per call
    assert kind == "original_full"
    kind, _ = run(1024, 1000)  # BigBird's legacy plan length with few position embeddings
    assert kind == "block_sparse"


def test_block_sparse_ignores_padding_content(tiny_model: MsVlmForReportGeneration) -> None:
    width = tiny_model.config.vision.hidden_size
    torch.manual_seed(0)
    features = torch.randn(2, 40, width)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    noisy = features.clone()
    noisy[1, 30:] = 100.0
    positions = (torch.arange(40) % 16).expand(2, -1) * mask
    view_ids = torch.ones_like(positions)
    with torch.no_grad():
        clean = tiny_model.zformer(features, view_ids, positions, mask)
        dirty = tiny_model.zformer(noisy, view_ids, positions, mask)
    assert clean.attention_type == "block_sparse"
    assert torch.allclose(clean.last_hidden_state[1, :30], dirty.last_hidden_state[1, :30], atol=1e-5)


def test_save_load_round_trip_is_identical(
    tiny_model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    short_studies: list[list[ViewInput]],
    tmp_path: Path,
) -> None:
    batch = processor(short_studies, reports=["no effusion .", "a 6 mm nodule ."])
    width = tiny_model.config.vision.hidden_size
    tiny_model.zformer.set_input_statistics(torch.linspace(-1, 1, width), torch.linspace(0.5, 2, width))
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MsVlmForReportGeneration)
    original_state, loaded_state = tiny_model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key, value in original_state.items():
        assert torch.equal(value, loaded_state[key]), key
    with torch.no_grad():
        first, second = forward_batch(tiny_model, batch), forward_batch(loaded, batch)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.findings_logits, second.findings_logits)
    generation = processor(short_studies)
    assert torch.equal(_generate(tiny_model, generation), _generate(loaded, generation))


def test_zformer_standardises_its_inputs_and_older_weights_load_without_it(
    tiny_model: MsVlmForReportGeneration, tmp_path: Path
) -> None:
    """The Z-former reads (x - mean) / std; weights saved before the statistics existed
    load with mean 0 and std 1, so they compute what they always did."""
    from safetensors.torch import load_file, save_file

    zformer = tiny_model.zformer
    width = tiny_model.config.vision.hidden_size
    mean, std = torch.full((width,), 3.0), torch.full((width,), 0.5)
    zformer.set_input_statistics(mean, std)
    features = 3.0 + 0.5 * torch.randn(2, 5, width)
    assert torch.allclose(zformer.standardise(features), (features - 3.0) / 0.5, atol=1e-6)

    tiny_model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = {k: v for k, v in load_file(path).items() if "input_mean" not in k and "input_scale" not in k}
    save_file(state, path, metadata={"format": "pt"})
    older = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(older.zformer.input_mean, torch.zeros(width))
    assert torch.equal(older.zformer.input_scale, torch.ones(width))
    assert torch.equal(older.zformer.standardise(features), features)


def test_generation_is_deterministic(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, short_studies: list[list[ViewInput]]
) -> None:
    batch = processor(short_studies)
    greedy = _generate(tiny_model, batch)
    assert greedy.shape[0] == 2 and greedy.shape[1] <= 6
    assert torch.equal(greedy, _generate(tiny_model, batch))
    beams = _generate(tiny_model, batch, num_beams=3)
    assert torch.equal(beams, _generate(tiny_model, batch, num_beams=3))
    with pytest.raises(ValueError, match="left-padded"):
        right = processor(short_studies, reports=["x", "y"])
        _generate(tiny_model, right)


def test_short_training_run_lowers_the_loss(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, short_studies: list[list[ViewInput]]
) -> None:
    batch = processor(
        short_studies,
        reports=["small left pleural effusion .", "a 6 mm nodule in the right upper lobe ."],
        findings=[{"pleural_effusion": 1, "lung_nodule": 0}, {"pleural_effusion": 0, "lung_nodule": 1}],
    )
    with torch.no_grad():
        before = forward_batch(tiny_model, batch).loss
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=3e-3)
    tiny_model.train()
    for _ in range(8):
        optimizer.zero_grad()
        loss = forward_batch(tiny_model, batch).loss
        assert loss is not None
        loss.backward()
        optimizer.step()
    tiny_model.eval()
    with torch.no_grad():
        after = forward_batch(tiny_model, batch).loss
    assert before is not None and after is not None
    assert float(after) < 0.7 * float(before)


def test_parts_are_exposed_for_staged_training(tiny_model: MsVlmForReportGeneration) -> None:
    """Later stages freeze parts by name; the mask embedding exists for stage 1."""
    names = {name.split(".")[0] for name, _ in tiny_model.named_parameters()}
    assert names == {"vision_model", "zformer", "bridge", "findings_head", "language_model"}
    assert tiny_model.zformer.mask_embedding.shape == (tiny_model.config.vision.hidden_size,)
    features = torch.randn(1, 5, tiny_model.config.vision.hidden_size)
    mask = torch.ones(1, 5, dtype=torch.bool)
    replace = torch.tensor([[True, False, False, True, False]])
    positions = torch.arange(5)[None]
    with torch.no_grad():
        hidden = tiny_model.zformer(
            features, positions * 0, positions, mask, replace_mask=replace
        ).last_hidden_state
        other = features.clone()
        other[replace] = -5.0
        same = tiny_model.zformer(
            other, positions * 0, positions, mask, replace_mask=replace
        ).last_hidden_state
    assert torch.allclose(hidden, same, atol=1e-6)


def test_bf16_autocast_and_bf16_weights(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, make_study: StudyFactory
) -> None:
    """The CUDA path (bf16 autocast, optionally bf16 weights), exercised with CPU autocast.

    Three 16-slice views take the block-sparse Z-former path, which transformers cannot run
    under autocast; the Z-former must step out of it.
    """
    views = [("CT", "CT:axial:arterial", 16), ("CT", "CT:coronal:arterial", 16), ("MR", "MR:axial:t2", 16)]
    study = make_study(views)
    batch = processor([study], reports=["a 6 mm nodule ."])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoding = tiny_model.encode_study(
            pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids
        )
        assert tiny_model.zformer.attention_type_for(encoding.tokens.shape[1]) == "block_sparse"
        out = forward_batch(tiny_model, batch)
        assert out.loss is not None and bool(torch.isfinite(out.loss))
        out.loss.backward()
        tokens = _generate(tiny_model, processor([study]))
    assert tokens.shape[0] == 1
    tiny_model.zero_grad()
    tiny_model.bfloat16()
    with torch.no_grad():
        out = forward_batch(tiny_model, batch)
    assert out.findings_logits is not None and out.findings_logits.dtype == torch.bfloat16
    assert out.loss is not None and bool(torch.isfinite(out.loss))
