"""Stage 0b (`stages.slice_findings`): its slice pools, and that it teaches the slice encoder."""

from __future__ import annotations

import copy

import pytest
import torch

from models.msvlm import MsVlmForReportGeneration, MsVlmProcessor
from models.training.data import StudyRecord
from models.training.stages import (
    StageSettings,
    slice_findings,
    slice_place_loss,
    slice_pools,
    slice_token_loss,
)

pytestmark = pytest.mark.model


def _study(
    name: str, targets: list[list[float]], *, seed: int, size: int = 32, at: tuple[int, int] = (10, 18)
) -> StudyRecord:
    """One CT view; a slice that shows finding 0 has a bright square where the others have none.

    The square's top-left corner is at (row, column) `at`; the view's place of finding 0 is
    the square's centre, as fractions of the slice.
    """
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn((len(targets), 3, size, size), generator=generator) * 0.3
    rows = torch.tensor(targets)
    top, left = at
    for k in (rows[:, 0] == 1).nonzero().flatten().tolist():
        pixels[k, :, top : top + 4, left : left + 4] += 2.0
    places = torch.full((rows.shape[1], 2), float("nan"))
    places[0] = torch.tensor([(left + 2) / size, (top + 2) / size])
    return StudyRecord(
        name=name,
        pixels=(pixels.to(torch.float16),),
        view_keys=("CT:axial:arterial",),
        modalities=("CT",),
        report="",
        labels={},
        slice_targets=(rows,),
        finding_places=(places,),
    )


def test_pools_list_each_findings_slices_and_every_known_slice() -> None:
    study = _study("a", [[1, 0], [0, -1], [-1, -1], [1, 1]], seed=0)
    showing, known = slice_pools([study, study], 2)
    assert showing[0] == [(0, 0, 0), (0, 0, 3), (1, 0, 0), (1, 0, 3)]
    assert showing[1] == [(0, 0, 3), (1, 0, 3)]
    assert known == [(0, 0, 0), (0, 0, 1), (0, 0, 3), (1, 0, 0), (1, 0, 1), (1, 0, 3)]


def test_the_stage_teaches_the_encoder_and_is_skipped_without_targets(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor
) -> None:
    labels = len(processor.settings.finding_labels)
    studies = [
        _study(f"s{i}", [[float(k % 3 == i % 2)] + [0.0] * (labels - 1) for k in range(6)], seed=i)
        for i in range(8)
    ]
    before = {k: v.clone() for k, v in tiny_model.vision_model.state_dict().items()}
    torch.manual_seed(0)
    log = slice_findings(
        tiny_model, processor, studies, StageSettings(epochs=6, lr=3e-3, batch_size=4), seed=0
    )
    assert log.last_loss < 0.7 * log.first_loss, log.epoch_losses
    after = tiny_model.vision_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not tiny_model.training  # left in eval mode for the feature cache

    unlabelled = [_study("u", [[-1.0] * labels] * 4, seed=9)]
    skipped = slice_findings(tiny_model, processor, unlabelled, StageSettings(epochs=6, lr=3e-3), seed=0)
    assert skipped.epoch_losses == []


def test_the_place_loss_counts_located_findings_on_the_slices_that_show_them() -> None:
    truth = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    places = torch.tensor([[[0.2, 0.4], [float("nan")] * 2], [[0.2, 0.4], [float("nan")] * 2]])
    predicted = torch.tensor([[[0.3, 0.1], [5.0, 5.0]], [[9.0, 9.0], [5.0, 5.0]]], requires_grad=True)
    loss = slice_place_loss(predicted, truth, places)
    # only slice 0's finding 0: finding 1 is not located, slice 1 does not show finding 0
    assert loss.item() == pytest.approx((0.1 + 0.3) / 2)
    none = slice_place_loss(predicted, torch.zeros(2, 2), places)
    none.backward()  # a batch without a located finding still gives a (zero) gradient
    assert none.item() == 0.0


def test_with_a_place_weight_the_encoder_learns_where_the_finding_is(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor
) -> None:
    """The square sits at one of two places; after stage 0b with the place loss, the CLS
    embeddings of the slices showing it separate the two places far better than before."""
    labels = len(processor.settings.finding_labels)
    studies = [
        _study(
            f"s{i}",
            [[float(k % 2 == 0)] + [0.0] * (labels - 1) for k in range(6)],
            seed=i,
            at=(14, 4) if i % 2 else (14, 24),
        )
        for i in range(8)
    ]

    def separation() -> float:
        with torch.no_grad():
            cls = [tiny_model.encode_slices(s.pixels[0][::2].float()) for s in studies]
        left = torch.cat(cls[1::2]).mean(0)
        right = torch.cat(cls[0::2]).mean(0)
        spread = torch.cat(cls).std(0).mean()
        return float((left - right).norm() / spread)

    before = separation()
    torch.manual_seed(0)
    log = slice_findings(
        tiny_model,
        processor,
        studies,
        StageSettings(epochs=6, lr=3e-3, batch_size=4),
        seed=0,
        place_weight=4.0,
    )
    assert log.last_loss < log.first_loss, log.epoch_losses
    # measured: 2.0 -> 12.5 with the place loss; presence alone took it to 0.7
    assert separation() > 3 * before


def test_the_token_loss_wants_the_token_at_the_place_and_no_distant_one() -> None:
    """A 4x4 token grid; finding 0 lies at (across 0.3, down 0.6): token row 2, column 1."""

    def loss(hot: int, truth: float, place: tuple[float, float] = (0.3, 0.6)) -> float:
        logits = torch.full((1, 16, 2), -8.0)
        logits[0, hot, 0] = 8.0
        places = torch.tensor([[list(place), [float("nan")] * 2]])
        return slice_token_loss(logits, torch.tensor([[truth, 1.0]]), places).item()

    at_place = loss(2 * 4 + 1, 1.0)
    assert at_place < 0.01
    # a miss near the place costs 3 x 8 (weighted like a positive slice), a distant firing 8
    assert loss(0, 1.0) > 30
    # row 1, column 2 (across and down swapped) is neither near nor distant: only the miss counts
    assert 20 < loss(1 * 4 + 2, 1.0) < 25
    assert loss(2 * 4 + 1, 0.0) > 7  # a slice that does not show it: any firing token costs
    assert loss(2 * 4 + 1, -1.0) < 0.01  # unknown, and the unlocated finding 1, count nothing
    with pytest.raises(ValueError, match="square grid"):
        slice_token_loss(torch.zeros(1, 15, 2), torch.zeros(1, 2), torch.zeros(1, 2, 2))


def test_with_a_token_weight_the_token_loss_joins_the_stage_and_falls(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor
) -> None:
    """The squares lie at six places; the same stage from the same weights, with and without
    the token loss: with it the objective has the token term, and it falls all the same."""
    labels = len(processor.settings.finding_labels)
    studies = [
        _study(
            f"s{i}", [[float(k % 2 == 0)] + [0.0] * (labels - 1) for k in range(6)], seed=i, at=(4 * i, 20)
        )
        for i in range(6)
    ]
    start = copy.deepcopy(tiny_model.state_dict())
    logs = []
    for weight in (0.0, 1.0):
        tiny_model.load_state_dict(start)
        torch.manual_seed(0)
        settings = StageSettings(epochs=6, lr=3e-3, batch_size=4)
        logs.append(slice_findings(tiny_model, processor, studies, settings, seed=0, token_weight=weight))
    without, with_tokens = logs
    assert with_tokens.first_loss > without.first_loss + 0.5, (without.epoch_losses, with_tokens.epoch_losses)
    assert with_tokens.last_loss < 0.7 * with_tokens.first_loss, with_tokens.epoch_losses
