"""The site head (`finding_sites`): where each present finding is, read from its own pooled
vector, fed to the narrative through the finding token and given to the SR; its training
losses (site, attention supervision) and the site labels read from the reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models.msvlm import (
    MsVlmConfig,
    MsVlmForReportGeneration,
    MsVlmProcessor,
    Placement,
    ReportGenerator,
    ViewInput,
)
from models.msvlm.bridge import NO_SITE_LOGIT, attention_loss, site_loss
from models.msvlm.configuration_msvlm import MsVlmConfigError
from models.training.data import StudyRecord, site_labels, token_slice_targets
from tests.support.batches import forward_batch

pytestmark = pytest.mark.model

StudyFactory = Callable[..., list[ViewInput]]
SITES = {
    "lung_nodule": [
        "right upper lobe",
        "right middle lobe",
        "right lower lobe",
        "left upper lobe",
        "left lower lobe",
    ],
    "pleural_effusion": ["right", "left", "bilateral"],
}


def _config(tiny_config: MsVlmConfig, **changes: object) -> MsVlmConfig:
    values = {
        **tiny_config.to_dict(),
        "findings_pooling": "per_finding",
        "findings_tokens": True,
        "finding_sites": SITES,
        **changes,
    }
    return MsVlmConfig.from_dict(values)


@pytest.fixture
def model(tiny_config: MsVlmConfig) -> MsVlmForReportGeneration:
    torch.manual_seed(0)
    return MsVlmForReportGeneration(_config(tiny_config)).eval()


@pytest.fixture
def batch(processor: MsVlmProcessor, make_study: StudyFactory):  # noqa: ANN201 - MsVlmBatch
    studies = [
        make_study([("CT", "CT:axial:arterial", 3)], seed=1),
        make_study([("CT", "CT:axial:venous", 4)], seed=2),
    ]
    return processor(
        studies,
        reports=["a 6 mm nodule in the right upper lobe .", "no effusion ."],
        findings=[{"lung_nodule": 1, "pleural_effusion": 0}, {}],
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"finding_sites": {"pneumothorax": ["right", "left"]}}, "not in finding_labels"),
        ({"findings_pooling": "mean"}, "per_finding"),
        ({"finding_sites": {"lung_nodule": ["right upper lobe"]}}, "at least two sites"),
        ({"finding_sites": {"lung_nodule": ["left", "Left"]}}, "duplicates"),
    ],
)
def test_bad_site_vocabularies_are_refused(tiny_config: MsVlmConfig, changes: dict, message: str) -> None:
    with pytest.raises(MsVlmConfigError, match=message):
        _config(tiny_config, **changes)


def test_site_logits_cover_each_findings_own_sites(model: MsVlmForReportGeneration, batch) -> None:  # noqa: ANN001
    labels = model.config.finding_labels or []
    out = forward_batch(model, batch)
    assert out.site_logits is not None and out.site_logits.shape == (2, len(labels), 5)
    effusion, heart = labels.index("pleural_effusion"), labels.index("cardiomegaly")
    # a finding's sites beyond its own list, and every site of a finding without sites, are ruled out
    assert bool((out.site_logits[:, effusion, 3:] == NO_SITE_LOGIT).all())
    assert bool((out.site_logits[:, effusion, :3] != NO_SITE_LOGIT).all())
    assert bool((out.site_logits[:, heart] == NO_SITE_LOGIT).all())
    assert model.site_head is not None
    calls = model.site_head.calls(out.site_logits)
    assert calls[:, heart].tolist() == [-1, -1] and 0 <= int(calls[0, effusion]) < 3


def test_the_finding_token_carries_the_site_it_is_given(model: MsVlmForReportGeneration, batch) -> None:  # noqa: ANN001
    labels = model.config.finding_labels or []
    nodule = labels.index("lung_nodule")
    slot = model.config.num_latents + nodule
    prompt = model.findings_prompt
    assert prompt is not None and prompt.site is not None
    sites = torch.full((2, len(labels)), -1, dtype=torch.long)
    sites[0, nodule] = 3  # teacher forcing: the report's "left upper lobe"
    out = forward_batch(model, batch, site_labels=sites)
    assert out.visual_tokens is not None
    assert torch.allclose(out.visual_tokens[0, slot], prompt.present[nodule] + prompt.site[nodule, 3])
    assert out.site_loss is not None and out.loss is not None
    expected = out.lm_loss + model.config.findings_loss_weight * out.findings_loss + out.site_loss
    assert torch.allclose(out.loss, expected)
    # without a label the head's call is used; an absent finding's token has no site in it
    out = forward_batch(model, batch)
    assert model.site_head is not None and out.site_logits is not None and out.visual_tokens is not None
    called = int(model.site_head.calls(out.site_logits)[0, nodule])
    assert torch.allclose(out.visual_tokens[0, slot], prompt.present[nodule] + prompt.site[nodule, called])
    effusion = labels.index("pleural_effusion")
    assert torch.allclose(out.visual_tokens[0, model.config.num_latents + effusion], prompt.absent[effusion])


def test_site_head_survives_save_and_load(model: MsVlmForReportGeneration, batch, tmp_path: Path) -> None:  # noqa: ANN001
    model.save_pretrained(tmp_path)
    loaded = MsVlmForReportGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.finding_sites == SITES
    with torch.no_grad():
        before, after = forward_batch(model, batch), forward_batch(loaded, batch)
    assert before.site_logits is not None and after.site_logits is not None
    assert torch.equal(before.site_logits, after.site_logits)
    assert torch.equal(before.visual_tokens, after.visual_tokens)


def test_report_output_names_a_site_for_each_present_finding_that_has_sites(
    model: MsVlmForReportGeneration, processor: MsVlmProcessor, make_study: StudyFactory
) -> None:
    with torch.no_grad():
        model.findings_head.classifier.bias.fill_(20.0)  # every finding called present
    generator = ReportGenerator(model=model, processor=processor, placement=Placement.for_device("cpu"))
    output = generator.generate_report(make_study([("CT", "CT:axial:arterial", 3)], seed=1), max_new_tokens=4)
    assert set(output.sites) == {"lung_nodule", "pleural_effusion"}
    site, probability = output.sites["lung_nodule"]
    assert site in SITES["lung_nodule"] and 1 / 5 <= probability <= 1.0
    with torch.no_grad():
        model.findings_head.classifier.bias.fill_(-20.0)  # nothing present: no sites
    assert (
        generator.generate_report(
            make_study([("CT", "CT:axial:arterial", 3)], seed=1), max_new_tokens=4
        ).sites
        == {}
    )


def test_site_loss_counts_only_known_sites() -> None:
    logits = torch.tensor([[[2.0, 0.0, NO_SITE_LOGIT], [0.0, 0.0, 0.0]]])
    targets = torch.tensor([[0, -1]])
    expected = torch.nn.functional.cross_entropy(logits[0, :1], targets[0, :1])
    assert torch.allclose(site_loss(logits, targets), expected)
    assert float(site_loss(logits, torch.tensor([[-1, -1]]))) == 0.0


def test_attention_loss_rewards_weight_on_the_slices_that_show_a_finding() -> None:
    # one study, 4 tokens, 2 findings: finding 0 shows on token 1 only; finding 1 is diffuse
    targets = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 1.0]]])
    labels = torch.tensor([[1, 1]])
    focused = torch.tensor([[[0.1, 0.25], [0.8, 0.25], [0.05, 0.25], [0.05, 0.25]]])
    spread = torch.tensor([[[0.25, 0.25]] * 4])
    assert float(attention_loss(focused, targets, labels)) == pytest.approx(
        -torch.log(torch.tensor(0.8)).item(), abs=1e-5
    )
    assert float(attention_loss(spread, targets, labels)) > float(attention_loss(focused, targets, labels))
    # an absent finding, or one the targets do not locate, asks nothing of the attention
    assert float(attention_loss(spread, targets, torch.tensor([[0, 1]]))) == 0.0


def _record(report: str, labels: dict[str, int], targets: tuple[torch.Tensor, ...] = ()) -> StudyRecord:
    return StudyRecord(
        name="s", pixels=(), view_keys=(), modalities=(), report=report, labels=labels, slice_targets=targets
    )


def test_site_labels_come_from_what_the_reports_state(tiny_config: MsVlmConfig) -> None:
    config = _config(tiny_config)
    labels = config.finding_labels or []
    studies = [
        _record(
            "8 mm nodule in the left upper lobe. Small bilateral pleural effusions.",
            {"lung_nodule": 1, "pleural_effusion": 1},
        ),
        _record("A pulmonary nodule. No pleural effusion.", {"lung_nodule": 1, "pleural_effusion": 0}),
    ]
    sites = site_labels(config, studies)
    nodule, effusion = labels.index("lung_nodule"), labels.index("pleural_effusion")
    assert sites[0, nodule] == 3 and sites[0, effusion] == 2
    assert sites[1].tolist() == [-1] * len(labels)  # no site stated; an absent finding has none


def test_token_targets_follow_the_zformers_order_of_views() -> None:
    first, second = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [0.0], [1.0]])
    targets = token_slice_targets([_record("", {}, (first, second)), _record("", {})], 6, 1)
    assert targets[0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, -1.0]
    assert targets[1, :, 0].tolist() == [-1.0] * 6
