"""The 3D-patch baseline takes the same processor inputs and gives the same output types."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, PreTrainedTokenizerFast

from models.baseline3d import Baseline3dConfig, Baseline3dForReportGeneration, baseline3d_preset
from models.msvlm import MsVlmForReportGeneration, MsVlmOutput, MsVlmProcessor, ReportModelBase, ViewInput
from models.msvlm.bridge import FindingsHead, VisualBridge

pytestmark = pytest.mark.model

StudyFactory = Callable[..., list[ViewInput]]


@pytest.fixture
def baseline_config(tokenizer: PreTrainedTokenizerFast) -> Baseline3dConfig:
    return baseline3d_preset("tiny", vocab_size=len(tokenizer))


@pytest.fixture
def baseline(baseline_config: Baseline3dConfig) -> Baseline3dForReportGeneration:
    torch.manual_seed(0)
    return Baseline3dForReportGeneration(baseline_config).eval()


@pytest.fixture
def baseline_processor(
    baseline_config: Baseline3dConfig, tokenizer: PreTrainedTokenizerFast
) -> MsVlmProcessor:
    return MsVlmProcessor.from_model_config(baseline_config, tokenizer)


@pytest.fixture
def studies(make_study: StudyFactory) -> list[list[ViewInput]]:
    return [
        make_study([("CT", "CT:axial:arterial", 30), ("CT", "CT:coronal:arterial", 3)], seed=3),
        make_study([("MR", "MR:sagittal:t2", 12)], seed=4),
    ]


def test_forward_and_generate_with_the_same_inputs(
    baseline: Baseline3dForReportGeneration,
    baseline_processor: MsVlmProcessor,
    studies: list[list[ViewInput]],
) -> None:
    batch = baseline_processor(
        studies, reports=["no effusion .", "rectal wall thickening ."], findings=[{}, {"rectal_lesion": 1}]
    )
    assert batch.pixel_values.shape[2] == baseline.config.volume_depth
    out = baseline(
        pixel_values=batch.pixel_values,
        slice_mask=batch.slice_mask,
        view_ids=batch.view_ids,
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        labels=batch.labels,
        findings_labels=batch.findings_labels,
    )
    assert isinstance(out, MsVlmOutput)
    assert out.loss is not None and out.lm_loss is not None and out.findings_loss is not None
    assert out.findings_logits is not None and out.findings_logits.shape == (2, 6)
    encoding = baseline.encode_study(
        pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids
    )
    patches = baseline.config.patches_per_view
    assert encoding.tokens.shape == (2, 2 * patches, baseline.config.volume.hidden_size)
    assert encoding.mask.sum(dim=1).tolist() == [2 * patches, patches]

    prompts = baseline_processor(studies)
    generated = baseline.generate(
        pixel_values=prompts.pixel_values,
        slice_mask=prompts.slice_mask,
        view_ids=prompts.view_ids,
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        max_new_tokens=5,
        num_beams=2,
    )
    assert generated.sequences is not None and generated.sequences.shape[0] == 2
    # the missing second view of study 2 is masked: its padding does not change the study
    alone = baseline_processor(studies[1:])
    with torch.no_grad():
        single = baseline(
            pixel_values=alone.pixel_values, slice_mask=alone.slice_mask, view_ids=alone.view_ids
        )
    assert torch.allclose(single.findings_logits, out.findings_logits[1:], atol=1e-5)


def test_shares_the_head_code_with_msvlm(baseline: Baseline3dForReportGeneration) -> None:
    """Only the encoder differs: bridge, findings head, LM and losses are the same classes."""
    assert isinstance(baseline, ReportModelBase)
    assert isinstance(baseline.bridge, VisualBridge) and isinstance(baseline.findings_head, FindingsHead)
    assert type(baseline.language_model).__name__ == "LlamaForCausalLM"
    assert (
        Baseline3dForReportGeneration.forward_from_encoding is MsVlmForReportGeneration.forward_from_encoding
    )


def test_rejects_views_that_are_not_fixed_depth(
    baseline: Baseline3dForReportGeneration, processor: MsVlmProcessor, studies: list[list[ViewInput]]
) -> None:
    """MS-VLM's processor keeps slice counts; the baseline refuses its batches."""
    batch = processor(studies)
    with pytest.raises(ValueError, match="slices"):
        baseline(pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids)


def test_baseline_round_trip(
    baseline: Baseline3dForReportGeneration,
    baseline_processor: MsVlmProcessor,
    studies: list[list[ViewInput]],
    tmp_path: Path,
) -> None:
    baseline.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, Baseline3dForReportGeneration)
    batch = baseline_processor(studies)
    with torch.no_grad():
        first = baseline(
            pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids
        )
        second = loaded(pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids)
    assert torch.equal(first.findings_logits, second.findings_logits)
