"""Finding tokens (`findings_tokens`): one LM input token per finding after the visual tokens,
from the study's labels in training and from the findings head in generation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models.msvlm import MsVlmConfig, MsVlmForReportGeneration, MsVlmProcessor, ViewInput
from tests.support.batches import forward_batch

pytestmark = pytest.mark.model

StudyFactory = Callable[..., list[ViewInput]]


@pytest.fixture
def model(tiny_config: MsVlmConfig) -> MsVlmForReportGeneration:
    config = MsVlmConfig.from_dict({**tiny_config.to_dict(), "findings_tokens": True})
    torch.manual_seed(0)
    return MsVlmForReportGeneration(config).eval()


@pytest.fixture
def studies(make_study: StudyFactory) -> list[list[ViewInput]]:
    return [
        make_study([("CT", "CT:axial:arterial", 3)], seed=1),
        make_study([("MR", "MR:axial:t2", 4)], seed=2),
    ]


@pytest.fixture
def batch(processor: MsVlmProcessor, studies: list[list[ViewInput]]):  # noqa: ANN201 - MsVlmBatch
    return processor(
        studies,
        reports=["a 6 mm nodule .", "no effusion ."],
        findings=[{"lung_nodule": 1, "pleural_effusion": 0}, {}],
    )


def test_one_token_per_finding_follows_the_visual_tokens(model: MsVlmForReportGeneration, batch) -> None:  # noqa: ANN001
    config = model.config
    labels = len(config.finding_labels or [])
    assert config.num_prefix_tokens == config.num_latents + labels
    out = forward_batch(model, batch)
    assert out.visual_tokens is not None
    assert out.visual_tokens.shape == (2, config.num_latents + labels, config.text.hidden_size)
    assert (
        out.logits is not None and out.logits.shape[1] == config.num_prefix_tokens + batch.input_ids.shape[1]
    )
    assert model.findings_prompt is not None
    index = (config.finding_labels or []).index("lung_nodule")
    present = model.findings_prompt.present[index]
    absent = model.findings_prompt.absent[index]
    # study 0 is labelled with a nodule: its token is the "present" embedding exactly
    assert torch.allclose(out.visual_tokens[0, config.num_latents + index], present)
    effusion = (config.finding_labels or []).index("pleural_effusion")
    assert torch.allclose(
        out.visual_tokens[0, config.num_latents + effusion], model.findings_prompt.absent[effusion]
    )
    # study 1 has no labels: its token is the head's call at the threshold, exactly
    assert out.findings_logits is not None
    called = bool(torch.sigmoid(out.findings_logits[1, index]) >= config.findings_threshold)
    assert torch.allclose(out.visual_tokens[1, config.num_latents + index], present if called else absent)


def test_the_token_is_the_call_at_the_models_threshold(model: MsVlmForReportGeneration, batch) -> None:  # noqa: ANN001
    """A probability just either side of `findings_threshold` gives one embedding or the other,
    never a blend the LM never saw in training; the threshold comes from the config."""
    encoding = model.encode_study(
        pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids
    )
    assert model.findings_prompt is not None
    labels = len(model.config.finding_labels or [])
    k = model.config.num_latents
    present, absent = model.findings_prompt.present, model.findings_prompt.absent
    logits = torch.logit(torch.full((2, labels), 0.55))
    assert model.findings_present(logits).all()
    assert torch.allclose(model.prefix_tokens(encoding, logits)[:, k:], present.expand(2, -1, -1))
    assert torch.allclose(
        model.prefix_tokens(encoding, torch.logit(torch.full((2, labels), 0.45)))[:, k:],
        absent.expand(2, -1, -1),
    )
    model.config.findings_threshold = 0.6
    assert not model.findings_present(logits).any()
    assert torch.allclose(model.prefix_tokens(encoding, logits)[:, k:], absent.expand(2, -1, -1))


def test_generation_reads_the_head_not_the_labels(model: MsVlmForReportGeneration, batch) -> None:  # noqa: ANN001
    """The finding tokens change with the head's output, and the head is not trained through them."""
    encoding = model.encode_study(
        pixel_values=batch.pixel_values, slice_mask=batch.slice_mask, view_ids=batch.view_ids
    )
    logits = torch.zeros((2, len(model.config.finding_labels or [])))
    low = model.prefix_tokens(encoding, logits - 6.0)
    high = model.prefix_tokens(encoding, logits + 6.0)
    k = model.config.num_latents
    assert torch.equal(low[:, :k], high[:, :k])  # the visual tokens do not depend on the head
    assert not torch.allclose(low[:, k:], high[:, k:])
    model.train()
    out = forward_batch(model, batch, labels=batch.labels, findings_labels=None)
    assert out.lm_loss is not None
    out.lm_loss.backward()
    head_grad = model.findings_head.classifier.weight.grad
    assert head_grad is None or not bool(head_grad.any())
    assert model.findings_prompt is not None and model.findings_prompt.absent.grad is not None


def test_round_trip_keeps_the_finding_tokens(
    model: MsVlmForReportGeneration,
    batch,  # noqa: ANN001
    processor: MsVlmProcessor,
    studies: list[list[ViewInput]],
    tmp_path: Path,
) -> None:
    model.save_pretrained(tmp_path)
    loaded = MsVlmForReportGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.findings_tokens
    with torch.no_grad():
        before, after = forward_batch(model, batch), forward_batch(loaded, batch)
    assert before.logits is not None and after.logits is not None
    assert torch.equal(before.logits, after.logits)
    prompts = processor(studies)
    arguments = {
        "pixel_values": prompts.pixel_values,
        "slice_mask": prompts.slice_mask,
        "view_ids": prompts.view_ids,
        "input_ids": prompts.input_ids,
        "attention_mask": prompts.attention_mask,
        "max_new_tokens": 4,
    }
    first, again = model.generate(**arguments), loaded.generate(**arguments)
    assert first.sequences is not None and again.sequences is not None
    assert torch.equal(first.sequences, again.sequences)
