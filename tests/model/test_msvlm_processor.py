"""MsVlmProcessor: windowing, resizing, z-resampling, view ids, prompts, padding, persistence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.msvlm import MsVlmConfig, MsVlmProcessor, ProcessorSettings, ViewInput, build_word_tokenizer
from models.msvlm.processing_msvlm import resample_slices

StudyFactory = Callable[..., list[ViewInput]]

pytestmark = pytest.mark.model


def _constant_view(value: float, modality: str = "CT", slices: int = 2, size: int = 32) -> ViewInput:
    pixels = np.full((slices, size, size), value, dtype=np.float32)
    return ViewInput(pixels=pixels, modality=modality, view_key="CT:axial:arterial")  # type: ignore[arg-type]


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Undo the processor's (x - 0.5) / 0.5 normalisation."""
    return x * 0.5 + 0.5


def test_ct_gets_three_windows(processor: MsVlmProcessor) -> None:
    lung = _to_unit(processor.preprocess_view(_constant_view(-600.0)))
    assert lung.shape == (2, 3, 32, 32)
    assert torch.allclose(lung[0, :, 0, 0], torch.tensor([0.5, 0.0, 0.0]))
    soft = _to_unit(processor.preprocess_view(_constant_view(40.0)))
    expected = torch.tensor([(40 + 1350) / 1500, 0.5, (40 + 500) / 2000])
    assert torch.allclose(soft[0, :, 0, 0], expected, atol=1e-6)
    bone = _to_unit(processor.preprocess_view(_constant_view(3000.0)))
    assert torch.allclose(bone[0, :, 0, 0], torch.ones(3))


def test_mr_is_repeated_to_three_channels(processor: MsVlmProcessor) -> None:
    out = _to_unit(processor.preprocess_view(_constant_view(0.25, modality="MR")))
    assert torch.allclose(out, torch.full_like(out, 0.25))


def test_resize_and_square_padding(processor: MsVlmProcessor) -> None:
    pixels = np.zeros((3, 64, 32), dtype=np.float32)
    pixels[:, :, :] = 1.0
    view = ViewInput(pixels=pixels, modality="MR", view_key="MR:axial:t2")
    out = _to_unit(processor.preprocess_view(view))
    assert out.shape == (3, 3, 32, 32)
    # the 64x32 image is padded left and right with its minimum (1.0 everywhere: stays 1)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)
    pixels[:, :, :] = np.linspace(0, 1, 32, dtype=np.float32)[None, None, :]
    out = _to_unit(processor.preprocess_view(ViewInput(pixels=pixels, modality="MR", view_key="x")))
    assert float(out[0, 0, 16, 0]) == pytest.approx(0.0, abs=1e-6)  # padding on the left


def test_views_beyond_max_slices_are_resampled_linearly(processor: MsVlmProcessor) -> None:
    ramp = np.arange(40, dtype=np.float32)[:, None, None] * np.ones((1, 32, 32), dtype=np.float32) / 100
    out = _to_unit(processor.preprocess_view(ViewInput(pixels=ramp, modality="MR", view_key="MR:axial:t2")))
    assert out.shape[0] == processor.settings.max_slices_per_view == 16
    expected = torch.linspace(0, 0.39, 16)
    assert torch.allclose(out[:, 0, 5, 5], expected, atol=1e-5)
    short = _to_unit(processor.preprocess_view(_constant_view(0.5, modality="MR", slices=5)))
    assert short.shape[0] == 5


def test_resample_slices_edge_cases() -> None:
    single = torch.ones((1, 4, 4))
    assert resample_slices(single, 6).shape == (6, 4, 4)
    ramp = torch.arange(3, dtype=torch.float32)[:, None, None].expand(3, 2, 2)
    assert torch.allclose(resample_slices(ramp, 5)[:, 0, 0], torch.tensor([0, 0.5, 1, 1.5, 2]))


def test_fixed_depth_setting_resamples_every_view(processor: MsVlmProcessor) -> None:
    settings = ProcessorSettings(**{**processor.settings.__dict__, "fixed_slices_per_view": 8})
    fixed = MsVlmProcessor(tokenizer=processor.tokenizer, settings=settings)
    assert fixed.preprocess_view(_constant_view(0.5, modality="MR", slices=3)).shape[0] == 8
    assert fixed.preprocess_view(_constant_view(0.5, modality="MR", slices=30)).shape[0] == 8


def test_view_ids_are_case_insensitive_and_unknown_is_zero(
    processor: MsVlmProcessor, tiny_config: MsVlmConfig
) -> None:
    assert tiny_config.view_vocabulary is not None
    assert processor.view_id(tiny_config.view_vocabulary[0]) == 1
    assert processor.view_id(" ct:AXIAL:Non_Contrast ") == 1
    assert processor.view_id("PET:axial:fdg") == 0


def test_invalid_inputs_are_rejected(processor: MsVlmProcessor) -> None:
    with pytest.raises(ValueError, match="modality"):
        ViewInput(pixels=np.zeros((1, 4, 4), np.float32), modality="US", view_key="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        ViewInput(pixels=np.zeros((4, 4), np.float32), modality="CT", view_key="x")
    with pytest.raises(ValueError, match="floating"):
        ViewInput(pixels=np.zeros((1, 4, 4), np.int16), modality="CT", view_key="x")
    nan = np.full((1, 4, 4), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        processor.preprocess_view(ViewInput(pixels=nan, modality="CT", view_key="x"))
    with pytest.raises(ValueError, match="at least one view"):
        processor([[]])


def test_batch_shapes_masks_and_text_padding(processor: MsVlmProcessor, make_study: StudyFactory) -> None:
    big = make_study([("CT", "CT:axial:arterial", 5), ("CT", "CT:coronal:arterial", 20), ("MR", "MR:x", 2)])
    small = make_study([("MR", "MR:sagittal:t2", 3)], seed=1)
    batch = processor([big, small])
    assert batch.pixel_values.shape == (2, 3, 16, 3, 32, 32)
    assert batch.slice_mask.sum(dim=-1).tolist() == [[5, 16, 2], [3, 0, 0]]
    assert batch.view_ids[0, 2] == 0 and batch.view_ids[1, 1:].tolist() == [0, 0]
    assert torch.count_nonzero(batch.pixel_values[1, 1:]) == 0
    assert batch.labels is None and batch.findings_labels is None
    # generation: left padding, every prompt starts with BOS and ends in the last column
    assert bool(batch.attention_mask[:, -1].all())
    starts = batch.attention_mask.argmax(dim=1)
    assert batch.input_ids[torch.arange(2), starts].tolist() == [processor.tokenizer.bos_token_id] * 2

    train = processor(
        [big, small], reports=["a 6 mm nodule .", "no effusion ."], findings=[{"lung_nodule": 1}, {}]
    )
    assert train.labels is not None and train.findings_labels is not None
    assert bool(train.attention_mask[:, 0].all())  # right padding
    for row in range(2):
        labelled = train.labels[row][train.labels[row] != -100]
        assert labelled[-1] == processor.tokenizer.eos_token_id
        assert processor.decode(labelled[None])[0] in ("a 6 mm nodule.", "no effusion.")
    assert train.findings_labels[0, 0] == 1 and bool((train.findings_labels[1] == -1).all())
    with pytest.raises(ValueError, match="unknown finding labels"):
        processor([small], reports=["x"], findings=[{"fracture": 1}])


def test_prompt_mentions_modality_and_views(processor: MsVlmProcessor, make_study: StudyFactory) -> None:
    study = make_study([("CT", "CT:axial:arterial", 2), ("MR", "MR:axial:t2", 2)])
    prompt = processor.prompt(study)
    assert "CT and MR" in prompt and "CT:axial:arterial , MR:axial:t2" in prompt
    ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids


def test_report_truncated_to_max_text_tokens(processor: MsVlmProcessor, make_study: StudyFactory) -> None:
    study = make_study([("CT", "CT:axial:arterial", 2)])
    batch = processor([study], reports=["nodule " * 500])
    assert batch.input_ids.shape[1] == processor.settings.max_text_tokens
    assert batch.input_ids[0, -1] == processor.tokenizer.eos_token_id


def test_processor_round_trip(processor: MsVlmProcessor, make_study: StudyFactory, tmp_path: Path) -> None:
    processor.save_pretrained(tmp_path)
    loaded = MsVlmProcessor.from_pretrained(tmp_path)
    assert loaded.settings == processor.settings
    study = make_study([("CT", "CT:axial:arterial", 4)])
    first, second = processor([study], reports=["no effusion ."]), loaded([study], reports=["no effusion ."])
    assert torch.equal(first.input_ids, second.input_ids)
    assert torch.equal(first.pixel_values, second.pixel_values)


def test_tokenizer_must_match_the_model(tiny_config: MsVlmConfig) -> None:
    small = build_word_tokenizer(["a b c"])
    too_small_lm = tiny_config.text.__class__(**{**tiny_config.text.to_dict(), "vocab_size": 5})
    config = MsVlmConfig(**{**tiny_config.to_dict(), "text_config": too_small_lm})
    with pytest.raises(ValueError, match="tokenizer has"):
        MsVlmProcessor.from_model_config(config, small)


def test_word_tokenizer_special_ids_and_decoding() -> None:
    tokenizer = build_word_tokenizer(["A 5 mm nodule, right lung.", "no effusion"])
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("a 5 mm nodule, right lung. zebra", add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.unk_token_id
    assert tokenizer.decode(ids[:-1]) == "a 5 mm nodule, right lung."
    with pytest.raises(ValueError, match="max_vocab_size"):
        build_word_tokenizer(["a"], max_vocab_size=4)
