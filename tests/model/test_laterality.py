"""Reading a finding's side from the patch token that shows it (`laterality`,
`MsVlmConfig.token_side_findings`): where the body's midline is, which side a token lies on in
patient coordinates, and how that side restricts the site head's choice in generation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
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
from models.msvlm.bridge import NO_SITE_LOGIT
from models.msvlm.configuration_msvlm import MsVlmConfigError, site_side
from models.msvlm.laterality import (
    BOTH_LOGIT,
    BOTH_SIDES,
    UNKNOWN_SIDE,
    best_tokens,
    body_centre,
    constrain_sites,
    key_slices,
    sides,
    site_sides,
    token_halves,
)
from models.training.stages import StageSettings, slice_findings
from tests.model.test_site_head import SITES
from tests.model.test_site_head import _config as site_head_config
from tests.model.test_slice_findings import _study

pytestmark = pytest.mark.model

StudyFactory = Callable[..., list[ViewInput]]
LOBES = SITES["lung_nodule"]
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # column index rising = towards the patient's left
MIRRORED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # the same pixels, the patient's left to the image's left
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # no in-plane direction crosses the body


def _slices(body: tuple[slice, slice], size: int = 16) -> torch.Tensor:
    """One (1, 3, size, size) slice: air (-1) with a body block (+0.5) at rows, columns `body`."""
    image = torch.full((1, 3, size, size), -1.0)
    image[0, :, body[0], body[1]] = 0.5
    return image


def test_body_centre_is_the_centre_of_the_bright_block() -> None:
    slices = _slices((slice(4, 12), slice(2, 8)))
    slices[0, :, 4:12, 8:16] = -0.8  # lung-dark, a tenth of the way from air to the body: not body
    centre = body_centre(slices)
    # columns 2..7 -> centres 2.5..7.5 of 16 -> mean 5/16; rows 4..11 -> mean 8/16
    assert torch.allclose(centre, torch.tensor([[5 / 16, 8 / 16]]))
    # a slice with nothing brighter than the rest: its centre
    assert torch.allclose(body_centre(torch.zeros(1, 3, 16, 16)), torch.tensor([[0.5, 0.5]]))


def test_token_halves_are_the_best_tokens_either_side_of_the_body() -> None:
    slices = _slices((slice(0, 16), slice(4, 12)))  # body centred: across 0.5, down 0.5
    logits = torch.zeros(1, 16, 2)  # a 4x4 grid, two findings
    logits[0, 7, 0] = 3.0  # row 1, column 3: (across 0.875, down 0.375): after across, above
    logits[0, 8, 1] = 2.0  # row 2, column 0: (0.125, 0.625): before across, below
    logits[0, 4, 1] = -1.0  # and every other token of finding 1 at 0 or below
    logits[0, [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15], 1] = -2.0
    halves = token_halves(logits, slices)
    assert halves.shape == (1, 2, 4)
    assert halves[0, 0].tolist() == [0.0, 3.0, 3.0, 0.0]  # before, after across; above, below
    assert halves[0, 1].tolist() == [2.0, -2.0, -1.0, 2.0]
    with pytest.raises(ValueError, match="square grid"):
        token_halves(torch.zeros(1, 15, 2), slices)


def _halves(right: list[float], left: list[float]) -> torch.Tensor:
    """(1, V, 1, 1, 4) halves of one-slice views: the best token before the body's centre
    across the image scores `right` (the patient's right in a standard axial view), after it
    `left`."""
    views = len(right)
    halves = torch.full((1, views, 1, 1, 4), -math.inf)
    halves[0, :, 0, 0, 0] = torch.tensor(right)
    halves[0, :, 0, 0, 1] = torch.tensor(left)
    return halves


def _read(orientations: list[tuple[float, ...]], scores: list[float], across: list[float]) -> int:
    """The side read for one finding from views whose best token scores `scores` and lies
    `across` the midline (its sign: after or before the body's centre; 0 on it)."""
    halves = torch.full((1, len(orientations), 1, 1, 4), -math.inf)
    for v, (score, offset) in enumerate(zip(scores, across, strict=True)):
        if offset:
            halves[0, v, 0, 0, 1 if offset > 0 else 0] = score
    side = sides(halves, torch.tensor([orientations]), torch.tensor([True]))
    return int(side[0, 0])


def test_side_is_read_in_patient_coordinates() -> None:
    # right of the image's midline: the patient's left in a standard axial view...
    assert _read([AXIAL], [1.0], [0.2]) == 1
    assert _read([AXIAL], [1.0], [-0.2]) == 0
    # ...and the patient's right when the acquisition mirrors the pixels
    assert _read([MIRRORED], [1.0], [0.2]) == 0
    # a sagittal view cannot tell; a token on the midline neither
    assert _read([SAGITTAL], [1.0], [0.2]) == UNKNOWN_SIDE
    assert _read([AXIAL], [1.0], [0.0]) == UNKNOWN_SIDE
    # the best-scoring view that can tell decides, whatever the sagittal one scores
    assert _read([AXIAL, MIRRORED, SAGITTAL], [1.0, 2.0, 9.0], [0.2, 0.2, -0.3]) == 0
    assert _read([AXIAL, MIRRORED], [3.0, 2.0], [0.2, 0.2]) == 1
    # padding slices (-inf) and views of unknown orientation (zeros) are never read
    assert _read([AXIAL], [-math.inf], [0.2]) == UNKNOWN_SIDE
    assert _read([(0.0,) * 6], [1.0], [0.2]) == UNKNOWN_SIDE


def test_side_is_read_down_a_coronal_view_turned_on_its_side() -> None:
    # rows run head to foot, columns towards the patient's left: below the centre is the left
    turned = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0)
    halves = torch.tensor([5.0, 5.0, 1.0, -1.0]).view(1, 1, 1, 1, 4)  # across says nothing here
    assert int(sides(halves, torch.tensor([[turned]]), torch.tensor([True]))[0, 0]) == 0
    halves = torch.tensor([5.0, 5.0, -1.0, 1.0]).view(1, 1, 1, 1, 4)
    assert int(sides(halves, torch.tensor([[turned]]), torch.tensor([True]))[0, 0]) == 1


def test_only_selected_findings_get_a_side() -> None:
    halves = torch.tensor([-1.0, 1.0, 0.0, 0.0]).expand(1, 1, 1, 2, 4)
    read = sides(halves, torch.tensor([[AXIAL]]), torch.tensor([True, False]))
    assert read.tolist() == [[1, UNKNOWN_SIDE]]


def test_a_finding_that_may_lie_on_both_sides_does_when_each_sides_token_shows_it() -> None:
    """A bilateral effusion lights a token on each side; a unilateral one only on its side."""
    axial = torch.tensor([[AXIAL, MIRRORED]])
    effusion, nodule = torch.tensor([True]), torch.tensor([False])

    def read(right: list[float], left: list[float], bilateral: torch.Tensor) -> int:
        halves = _halves(right, left)
        return int(sides(halves, axial[:, : len(right)], torch.tensor([True]), bilateral)[0, 0])

    assert read([6.5], [6.3], effusion) == BOTH_SIDES
    assert read([6.5], [BOTH_LOGIT], effusion) == BOTH_SIDES  # at the threshold
    assert read([6.5], [-0.7], effusion) == 0  # the other side's best token does not show it
    assert read([-0.7], [6.5], effusion) == 1
    assert read([6.5], [6.3], nodule) == 0  # a nodule lies on one side: the stronger
    # the patient's left in a mirrored view lies before the body's centre across the image
    assert read([6.0, -3.0], [-3.0, 6.0], effusion) == 0


def test_key_slices_are_where_the_best_token_shows_each_selected_finding() -> None:
    halves = torch.full((2, 2, 3, 3, 4), -5.0)
    tokens = torch.arange(2 * 2 * 3 * 3).view(2, 2, 3, 3)  # each slice and finding its own token
    halves[0, 1, 2, 0, 3] = 4.0  # study 0: finding 0 best in view 1, slice 2
    halves[0, 0, 1, 0, 0] = 3.0
    halves[0, 0, 0, 1, 1] = -0.5  # finding 1's best token does not show it
    halves[0, :, :, 2] = 1.0  # finding 2 shows everywhere alike: the first view and slice
    halves[1, 1] = -torch.inf  # study 1 has one view, the other is padding
    halves[1, 0, 1, 0, 2] = 0.0  # at the threshold
    selected = torch.tensor([True, True, True])
    out = key_slices(halves, tokens, selected).tolist()
    assert out[0] == [[1, 2, int(tokens[0, 1, 2, 0])], [-1, -1, -1], [0, 0, int(tokens[0, 0, 0, 2])]]
    assert out[1] == [[0, 1, int(tokens[1, 0, 1, 0])], [-1, -1, -1], [-1, -1, -1]]
    assert key_slices(halves, tokens, torch.tensor([False, True, True])).tolist()[0][0] == [-1, -1, -1]
    none = torch.full((1, 1, 2, 3, 4), -torch.inf)
    zeros = torch.zeros((1, 1, 2, 3), dtype=torch.long)
    assert key_slices(none, zeros, selected).tolist() == [[[-1, -1, -1]] * 3]


def test_a_slices_best_token_is_the_one_that_scores_the_finding_highest() -> None:
    logits = torch.full((2, 16, 2), -3.0)
    logits[0, 9, 0] = 2.0  # slice 0: finding 0 on token 9 (row 2, column 1 of a 4 x 4 grid)
    logits[0, 3, 1] = -1.0  # finding 1 shows nowhere: still its highest token
    logits[1, [5, 6], 0] = 1.0  # a tie goes to the first
    assert best_tokens(logits).tolist() == [[9, 3], [5, 0]]


def test_a_tokens_region_is_its_square_in_the_source_slices_pixels(processor: MsVlmProcessor) -> None:
    """The inverse of padding to a square and resizing: an 8 x 8 grid over a 512 x 512 CT
    slice has 64-pixel squares; over a 64-row, 48-column one (padded by 8 columns each side) its
    squares shift by the padding and are clipped to the image."""
    assert processor.token_region(512, 512, 9, 8) == (64.0, 64.0, 128.0, 128.0)
    assert processor.token_region(512, 512, 63, 8) == (448.0, 448.0, 512.0, 512.0)
    assert processor.token_region(64, 48, 1, 8) == (0.0, 0.0, 8.0, 8.0)
    left, _, right, _ = processor.token_region(64, 48, 0, 8)
    assert left == right == 0.0  # in the padding: no area
    assert processor.token_region(64, 48, 62, 8) == (40.0, 56.0, 48.0, 64.0)
    assert processor.token_region(48, 64, 8, 8) == (0.0, 0.0, 8.0, 8.0)  # rows padded instead
    _, top, _, bottom = processor.token_region(48, 64, 0, 8)
    assert top == bottom == 0.0
    with pytest.raises(ValueError, match="grid"):
        processor.token_region(512, 512, 64, 8)


def test_site_side_reads_the_first_word() -> None:
    assert [site_side(s) for s in LOBES] == [0, 0, 0, 1, 1]
    assert [site_side(s) for s in ["Right", "left", "bilateral", "mediastinal", "rightward x"]] == [
        0,
        1,
        None,
        None,
        None,
    ]


def test_constrain_sites_keeps_the_read_side_only() -> None:
    names = [LOBES, ["right", "left", "bilateral"]]
    by_site = site_sides(names, {0}, 5)
    assert by_site.tolist() == [[0, 0, 0, 1, 1], [-1] * 5]
    logits = torch.arange(10, dtype=torch.float32).view(1, 2, 5)
    fill = NO_SITE_LOGIT
    right = constrain_sites(logits, torch.tensor([[0, UNKNOWN_SIDE]]), by_site, fill)
    assert right[0, 0].tolist() == [0.0, 1.0, 2.0, fill, fill]
    assert torch.equal(right[0, 1], logits[0, 1])
    left = constrain_sites(logits, torch.tensor([[1, 1]]), by_site, fill)
    assert left[0, 0].tolist() == [fill, fill, fill, 3.0, 4.0]
    assert torch.equal(left[0, 1], logits[0, 1])  # not read by its token: as given
    # a finding whose sites all lie on the other side keeps them
    one_sided = site_sides([["right upper lobe", "right lower lobe"]], {0}, 2)
    kept = constrain_sites(torch.ones(1, 1, 2), torch.tensor([[1]]), one_sided, fill)
    assert torch.equal(kept, torch.ones(1, 1, 2))
    # an effusion read on the right keeps "right"; read on both sides, "bilateral"
    both = site_sides(names, {0, 1}, 5)
    assert both[1].tolist() == [0, 1, BOTH_SIDES, -1, -1]
    effusion = constrain_sites(logits, torch.tensor([[UNKNOWN_SIDE, 0]]), both, fill)
    assert effusion[0, 1].tolist() == [5.0, fill, fill, 8.0, 9.0]
    effusion = constrain_sites(logits, torch.tensor([[UNKNOWN_SIDE, BOTH_SIDES]]), both, fill)
    assert effusion[0, 1].tolist() == [fill, fill, 7.0, 8.0, 9.0]
    # a nodule read on both sides (no site on both) keeps its logits
    assert torch.equal(
        constrain_sites(logits, torch.tensor([[BOTH_SIDES, 0]]), both, fill)[0, 0], logits[0, 0]
    )


def _config(tiny_config: MsVlmConfig, **changes: object) -> MsVlmConfig:
    """The site head tests' config, with the nodule's side read by its token."""
    return site_head_config(tiny_config, **{"token_side_findings": ["lung_nodule"], **changes})


def test_config_refuses_findings_without_sided_sites(tiny_config: MsVlmConfig) -> None:
    sides = {**SITES, "lymphadenopathy": ["mediastinal", "retroperitoneal"]}
    with pytest.raises(MsVlmConfigError, match="none of whose sites"):
        _config(tiny_config, finding_sites=sides, token_side_findings=["lymphadenopathy"])
    accepted = _config(tiny_config, token_side_findings=["lung_nodule", "pleural_effusion"])
    assert accepted.token_side_findings == ["lung_nodule", "pleural_effusion"]  # "bilateral" too
    with pytest.raises(MsVlmConfigError, match="no finding_sites"):
        _config(tiny_config, token_side_findings=["cardiomegaly"])
    assert MsVlmForReportGeneration(_config(tiny_config, token_side_findings=None)).token_head is None


def test_token_head_round_trips(tiny_config: MsVlmConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MsVlmForReportGeneration(_config(tiny_config)).eval()
    assert model.token_head is not None
    model.save_pretrained(tmp_path)
    loaded = MsVlmForReportGeneration.from_pretrained(tmp_path).eval()
    assert loaded.token_head is not None
    assert torch.equal(loaded.token_head.weight, model.token_head.weight)
    assert loaded.config.token_side_findings == ["lung_nodule"]


def _nodule_sites(
    model: MsVlmForReportGeneration, processor: MsVlmProcessor, views: list[ViewInput]
) -> torch.Tensor:
    batch = processor([views])
    output = model.generate(
        pixel_values=batch.pixel_values,
        slice_mask=batch.slice_mask,
        view_ids=batch.view_ids,
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=3,
        orientations=batch.orientations,
    )
    assert output.site_logits is not None
    return output.site_logits[0, 0]


def test_generation_keeps_the_sites_on_the_side_the_orientation_gives(
    tiny_config: MsVlmConfig, processor: MsVlmProcessor
) -> None:
    torch.manual_seed(0)
    model = MsVlmForReportGeneration(_config(tiny_config)).eval()
    rng = np.random.default_rng(3)
    pixels = rng.normal(-300.0, 400.0, (4, 32, 32)).astype(np.float32)
    pixels[:, :, :4] = -1000.0  # air at the image's left edge: the body's centre is off the middle

    def study(orientation: tuple[float, ...] | None) -> list[ViewInput]:
        return [ViewInput(pixels=pixels, modality="CT", view_key="CT:axial:venous", orientation=orientation)]

    masked = [_nodule_sites(model, processor, study(o)) == NO_SITE_LOGIT for o in (AXIAL, MIRRORED, None)]
    # the same token on the same pixels: one side's lobes are ruled out, and the other side's
    # when the orientation mirrors the image; without an orientation, none
    assert masked[0].tolist() in ([False] * 3 + [True] * 2, [True] * 3 + [False] * 2)
    assert torch.equal(masked[1], ~masked[0])
    assert not bool(masked[2].any())


def test_processor_carries_each_views_orientation(
    processor: MsVlmProcessor, make_study: StudyFactory
) -> None:
    first, second = make_study([("CT", "CT:axial:venous", 3), ("CT", "CT:sagittal:venous", 2)])
    oriented = ViewInput(pixels=first.pixels, modality="CT", view_key=first.view_key, orientation=MIRRORED)
    batch = processor([[oriented, second], [oriented]])
    assert batch.orientations is not None
    assert batch.orientations[0].tolist() == [list(MIRRORED), [0.0] * 6]  # the second's is unknown
    assert batch.orientations[1].tolist() == [list(MIRRORED), [0.0] * 6]  # padding view
    with pytest.raises(ValueError, match="6 finite"):
        ViewInput(pixels=first.pixels, modality="CT", view_key="k", orientation=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="6 finite"):
        ViewInput(pixels=first.pixels, modality="CT", view_key="k", orientation=(math.nan, 0, 0, 0, 1, 0))


def test_stage_0b_trains_the_models_own_token_head(
    tiny_config: MsVlmConfig, processor: MsVlmProcessor
) -> None:
    torch.manual_seed(0)
    model = MsVlmForReportGeneration(_config(tiny_config))
    assert model.token_head is not None
    labels = len(processor.settings.finding_labels)
    studies = [
        _study(f"s{i}", [[float(k % 2 == 0)] + [0.0] * (labels - 1) for k in range(4)], seed=i)
        for i in range(3)
    ]
    settings = StageSettings(epochs=2, lr=3e-3, batch_size=4)
    before = model.token_head.weight.detach().clone()
    slice_findings(model, processor, studies, settings, seed=0, token_weight=0.0)
    assert torch.equal(model.token_head.weight, before)  # no token loss: the head is left alone
    slice_findings(model, processor, studies, settings, seed=0, token_weight=1.0)
    assert not torch.equal(model.token_head.weight, before)


def test_the_report_generator_passes_each_views_orientation(
    tiny_config: MsVlmConfig, processor: MsVlmProcessor
) -> None:
    torch.manual_seed(0)
    # every finding called present, so the nodule always gets a site
    model = MsVlmForReportGeneration(_config(tiny_config, findings_threshold=1e-6))
    generator = ReportGenerator(model=model, processor=processor, placement=Placement.for_device("cpu"))
    rng = np.random.default_rng(3)
    pixels = rng.normal(-300.0, 400.0, (4, 32, 32)).astype(np.float32)
    pixels[:, :, :4] = -1000.0

    def side(orientation: tuple[float, ...] | None) -> int | None:
        view = ViewInput(pixels=pixels, modality="CT", view_key="CT:axial:venous", orientation=orientation)
        report = generator.generate_report([view], max_new_tokens=2)
        site = report.sites["lung_nodule"][0]
        if orientation is None:  # no side read: the site head's own call, and said so
            assert report.image_sides == {}
        else:
            assert report.image_sides == {"lung_nodule": site.split()[0]}, (report.image_sides, site)
        return site_side(site)

    assert {side(AXIAL), side(MIRRORED)} == {0, 1}
    side(None)


def test_the_report_names_the_slice_that_shows_a_placed_finding_best(
    tiny_config: MsVlmConfig, processor: MsVlmProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a finding called present gets one, and its slice is counted in the view as given,
    not as resampled for the model."""
    torch.manual_seed(0)
    model = MsVlmForReportGeneration(_config(tiny_config, findings_threshold=1e-6))
    generator = ReportGenerator(model=model, processor=processor, placement=Placement.for_device("cpu"))
    many = processor.settings.max_slices_per_view + 6
    rng = np.random.default_rng(3)
    views = [
        ViewInput(pixels=rng.normal(0.0, 300.0, (n, 32, 32)).astype(np.float32), modality="CT", view_key=key)
        for n, key in ((4, "CT:axial:venous"), (many, "CT:coronal:venous"))
    ]
    labels = list(model.config.finding_labels or [])
    nodule = labels.index("lung_nodule")
    grid = model.config.image_size // model.config.patch_size
    read = torch.full((1, len(labels), 3), -1)
    # the resampled view's last slice, its bottom right token
    read[0, nodule] = torch.tensor([1, processor.target_slices(many) - 1, grid * grid - 1])
    monkeypatch.setattr(model, "key_slices", lambda encoding: read)
    report = generator.generate_report(views, max_new_tokens=2)
    assert report.key_slices == {"lung_nodule": (1, many - 1)}
    step = 32 / grid
    assert report.key_regions == {"lung_nodule": (32 - step, 32 - step, 32.0, 32.0)}
    read[0, nodule, 2] = 0  # the top left token of a slice padded to a square...
    narrow = views[1].pixels[:, :, : 32 - 2 * int(step)]
    views[1] = ViewInput(pixels=narrow, modality="CT", view_key=views[1].view_key)
    report = generator.generate_report(views, max_new_tokens=2)
    assert report.key_slices == {"lung_nodule": (1, many - 1)}
    assert report.key_regions == {}  # ...lies in the padding: the image, but no region

    model.config.findings_threshold = 1 - 1e-6  # nothing called present: no key image
    assert generator.generate_report(views, max_new_tokens=2).key_slices == {}


def test_a_resampled_slice_maps_back_to_the_nearest_slice_of_the_view(processor: MsVlmProcessor) -> None:
    most = processor.settings.max_slices_per_view
    assert [processor.source_slice(4, k) for k in range(4)] == [0, 1, 2, 3]
    assert processor.source_slice(2 * most - 1, most - 1) == 2 * most - 2  # the ends are kept
    assert processor.source_slice(2 * most - 1, 1) == 2
    with pytest.raises(ValueError, match="slice"):
        processor.source_slice(2 * most - 1, most)


def _token_head_asked_but_not_saved(
    tiny_config: MsVlmConfig, processor: MsVlmProcessor, folder: Path
) -> Path:
    """A model saved without a token head, then token_side_findings added to its config.json."""
    model = MsVlmForReportGeneration(_config(tiny_config, token_side_findings=None))
    generator = ReportGenerator(model=model, processor=processor, placement=Placement.for_device("cpu"))
    generator.save_pretrained(folder)
    assert ReportGenerator.from_pretrained(folder).model.token_head is None
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "token_side_findings": ["lung_nodule"]}))
    return folder


def test_weights_without_the_token_head_their_config_names_are_refused(
    tiny_config: MsVlmConfig, processor: MsVlmProcessor, tmp_path: Path
) -> None:
    """An AI team that adds token_side_findings to config.json of weights trained without a
    token head would otherwise read sides from a random head."""
    with pytest.raises(ValueError, match="token_head.weight"):
        ReportGenerator.from_pretrained(_token_head_asked_but_not_saved(tiny_config, processor, tmp_path))


def test_the_node_names_a_model_folder_it_cannot_run_as_a_configuration_error(
    tiny_config: MsVlmConfig, processor: MsVlmProcessor, tmp_path: Path
) -> None:
    """The worker's load of such a folder: `msvlm-node: error: model.path: ...`, no traceback."""
    from node.config import Settings
    from node.errors import ConfigError
    from node.modelinfo import model_identity
    from node.worker import load_generator

    folder = _token_head_asked_but_not_saved(tiny_config, processor, tmp_path)
    settings = Settings.model_validate({"model": {"path": str(folder), "device": "cpu"}})
    with pytest.raises(ConfigError, match="model.path: .*token_head"):
        load_generator(settings, model_identity(folder))
