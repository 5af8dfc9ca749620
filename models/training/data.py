"""Training data: phantom datasets, studies loaded the way the node loads them, and batches.

A dataset is a folder of study folders plus `dataset.jsonl` ({"study", "report", "labels"}
per line, what `models.phantom.write_dataset` writes). Each study is read once through the
node's pure modules (headers -> grouping -> volume), exactly as the worker does, so the
model trains on the views it will later be given; the processor then turns every view into
normalised (n, 3, S, S) slices that are kept in memory (float16) for the whole run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.msvlm.configuration_msvlm import ReportModelConfig
from models.msvlm.processing_msvlm import MsVlmBatch, MsVlmProcessor, ViewInput
from models.training.labeller import PATTERNS as LABELLED_FINDINGS
from models.training.labeller import stated_site

if TYPE_CHECKING:
    from models.phantom import PhantomSpec

logger = logging.getLogger(__name__)

INDEX_NAME = "dataset.jsonl"
#: the matched-filter SNR (`models.phantom.study.StudyBuilder.focal_snr`) under which a view's
#: slices are not taught to show a focal finding. Why twice the Rose criterion (5, the ideal
#: observer's): a trained human reader detects in noise at an efficiency of some 25-50% of
#: the ideal observer's, so needs about 7-10 (Barrett and Myers, ch. 14); a venous-phase
#: liver lesion at SNR 5-6 is in the study's labels (its arterial view shows it) but no
#: reader would point at it there
SHOWN_SNR = 10.0
#: pixels of an answer key's placed finding (the effusion: `StudyBuilder.finding_slices`) a
#: slice must hold to be taught that it shows it; fewer is the partial-volume sliver of a
#: slice that grazes it, left unknown
SHOWN_PIXELS = 8
CT_PLANES = ("axial", "coronal", "sagittal")
CT_PHASES = ("non_contrast", "arterial", "venous", "delayed")
MR_SEQUENCES = ("t1", "t2", "dwi", "adc", "t1_post")


class DatasetError(ValueError):
    """A dataset folder that cannot be trained or evaluated on; the message says why."""


# --- writing phantom datasets --------------------------------------------------------------


def _subset(rng: np.random.Generator, options: Sequence[str], low: int, high: int) -> tuple[str, ...]:
    count = int(rng.integers(low, high + 1))
    chosen = set(rng.choice(len(options), size=count, replace=False).tolist())
    return tuple(option for i, option in enumerate(options) if i in chosen)


def phantom_spec(
    index: int,
    *,
    seed: int,
    matrix: int = 64,
    slices: int = 24,
    modalities: Sequence[str] = ("CT", "MR"),
    position_jitter_mm: float = 0.0,
) -> PhantomSpec:
    """The spec of study `index` of `make_phantoms(..., seed=seed)`: its findings, planes and phases.

    Only findings its views show are kept (`without_invisible_findings`): the labels and
    report of a training or held-out study say what a reader of its pixels could see.
    """
    from models.phantom import dataset_spec
    from models.phantom.detectability import without_invisible_findings

    spec = dataset_spec(
        index,
        seed=seed,
        modalities=modalities,
        matrix=matrix,
        slices=slices,
        position_jitter_mm=position_jitter_mm,
    )
    rng = np.random.default_rng([seed, index, 11])
    planes = _subset(rng, CT_PLANES, 1, 2)
    if spec.modality == "CT":
        spec = replace(spec, planes=planes, phases=_subset(rng, CT_PHASES, 1, 3))
    else:
        spec = replace(spec, planes=planes, sequences=_subset(rng, MR_SEQUENCES, 2, 3))
    return without_invisible_findings(spec)


def add_phantom_arguments(parser: argparse.ArgumentParser, env: Callable[[str, str], str | None]) -> None:
    """`--matrix`, `--slices` and `--position-jitter` of the phantoms a CLI writes (`make_phantoms`);
    `env(NAME, default)` reads that CLI's environment mirror of each."""
    parser.add_argument("--matrix", type=int, default=int(env("MATRIX", "64") or 64))
    parser.add_argument("--slices", type=int, default=int(env("SLICES", "24") or 24))
    parser.add_argument(
        "--position-jitter",
        type=float,
        default=float(env("POSITION_JITTER", "0") or 0),
        metavar="MM",
        help="phantoms: lay each patient up to MM off the isocentre along each axis (default 0)",
    )


def make_phantoms(
    out_dir: str | Path,
    n_studies: int,
    *,
    seed: int,
    matrix: int = 64,
    slices: int = 24,
    modalities: Sequence[str] = ("CT", "MR"),
    position_jitter_mm: float = 0.0,
) -> Path:
    """Write `n_studies` phantom studies and their `dataset.jsonl`; returns the index path.

    Like `models.phantom.write_dataset` (same study seeds `seed * 100000 + index`, same
    findings and index format), but every study gets its own random subset of planes and
    CT phases / MR sequences, so the model sees 1 to 6 views per study in many
    combinations (as the node delivers them) and each study stays cheap to train on.
    `position_jitter_mm` moves each patient off the isocentre (`PhantomSpec`).
    """
    from models.phantom import write_study

    if n_studies < 1:
        raise DatasetError("n_studies must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n_studies):
        spec = phantom_spec(
            index,
            seed=seed,
            matrix=matrix,
            slices=slices,
            modalities=modalities,
            position_jitter_mm=position_jitter_mm,
        )
        folder = f"{index:05d}_{spec.modality.lower()}"
        truth = write_study(spec, out / folder)
        lines.append(json.dumps({"study": folder, "report": truth.full_report, "labels": truth.labels}))
    index_path = out / INDEX_NAME
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(index_path)
    return index_path


# --- reading a dataset ---------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    """One line of dataset.jsonl: the study folder (absolute), its report and its labels."""

    folder: Path
    report: str
    labels: Mapping[str, int]


def read_index(data_dir: str | Path) -> list[IndexEntry]:
    """Parse `data_dir/dataset.jsonl`, in file order."""
    root = Path(data_dir)
    path = root / INDEX_NAME
    if not path.is_file():
        raise DatasetError(f"{root} has no {INDEX_NAME}; write one with --make-phantoms or write_dataset")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            entries.append(
                IndexEntry(
                    folder=root / str(record["study"]),
                    report=str(record["report"]),
                    labels={str(k): int(v) for k, v in dict(record.get("labels") or {}).items()},
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{number}: not a dataset line ({exc})") from exc
    if not entries:
        raise DatasetError(f"{path} lists no studies")
    return entries


@dataclass(frozen=True)
class SlicePlane:
    """How a view's pixels lie within each slice (patient LPS, mm), to place a point on them.

    ``row_direction`` points along a row (column index rising), ``column_direction`` down a
    column (row index rising), as ImageOrientationPatient gives them; ``origin`` is the
    centre of the first pixel; ``pixel_spacing`` is (between rows, between columns).
    """

    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int

    def place(self, point: tuple[float, float, float]) -> tuple[float, float]:
        """(across, down) of ``point``'s projection as fractions of the processor's square.

        The processor pads a slice to a square (centred) before resizing it, so these are
        the coordinates the model sees whatever the matrix: 0 is the left or top edge, 1 the
        right or bottom one.
        """
        offset = np.asarray(point, dtype=np.float64) - np.asarray(self.origin, dtype=np.float64)
        column = float(offset @ np.asarray(self.row_direction)) / self.pixel_spacing[1]
        row = float(offset @ np.asarray(self.column_direction)) / self.pixel_spacing[0]
        side = max(self.rows, self.columns)
        top, left = (side - self.rows) // 2, (side - self.columns) // 2
        return (column + left + 0.5) / side, (row + top + 0.5) / side


@dataclass(frozen=True)
class ViewGeometry:
    """Where a view's slices lie: their positions (mm) along its unit normal (patient LPS),
    and, when known, how its pixels lie within a slice."""

    positions: tuple[float, ...]
    normal: tuple[float, float, float]
    plane: SlicePlane | None = None
    #: the series the view's slices come from, to look up what its answer key says it shows
    series_instance_uid: str = ""


@dataclass(frozen=True)
class FindingRegion:
    """A finding located in patient coordinates. A focal one: slices within `radius_mm` show
    it, in the series where it is plain enough to see (`snr_by_series`; all when empty). A
    placed one (a unilateral effusion) has no radius: the answer key lists the slices that cut
    it (`finding_cuts`), and its centre only says where in them it lies (`finding_places`)."""

    key: str
    center_lps_mm: tuple[float, float, float]
    radius_mm: float | None
    #: series instance UID -> the finding's matched-filter SNR in that series
    snr_by_series: Mapping[str, float] = field(default_factory=dict)

    def shown_in(self, series_instance_uid: str) -> bool:
        """Whether a reader could point at it in that series (SNR at least `SHOWN_SNR`);
        a series the answer key does not measure counts as showing it."""
        snr = self.snr_by_series.get(series_instance_uid)
        return snr is None or snr >= SHOWN_SNR


def load_study_views(folder: Path) -> list[ViewInput]:
    """A study folder of DICOM files -> its views in the node's order (headers, grouping, volume)."""
    return [view for view, _ in load_study(folder)]


def load_study(folder: Path) -> list[tuple[ViewInput, ViewGeometry]]:
    """Like `load_study_views`, with each view's slice geometry."""
    from node.errors import NodeError
    from node.grouping import GroupingSettings, group_study
    from node.headers import UnreadableInstanceError, read_header
    from node.volume import VolumeSettings, load_view

    headers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            headers.append(read_header(path))
        except UnreadableInstanceError:
            continue  # truth.json, report.txt and anything else that is not DICOM
    try:
        manifest = group_study(headers, GroupingSettings())
        settings = VolumeSettings(decode_workers=1)
        views = []
        for view in manifest.views:
            volume = load_view(view, settings=settings)
            views.append(
                (
                    ViewInput.from_volume(volume),
                    ViewGeometry(
                        positions=tuple(volume.positions),
                        normal=volume.normal,
                        plane=SlicePlane(
                            origin=volume.origin,
                            row_direction=volume.orientation[:3],
                            column_direction=volume.orientation[3:],
                            pixel_spacing=(volume.spacing[1], volume.spacing[2]),
                            rows=volume.pixels.shape[1],
                            columns=volume.pixels.shape[2],
                        ),
                        series_instance_uid=view.series_instance_uid,
                    ),
                )
            )
    except NodeError as exc:
        raise DatasetError(f"{folder}: {exc}") from exc
    if not views:
        raise DatasetError(f"{folder}: grouping found no views")
    return views


@dataclass(frozen=True, eq=False)
class StudyRecord:
    """A preprocessed study: per view (n, 3, S, S) float16 slices, keys, modality, text, labels."""

    name: str
    pixels: tuple[torch.Tensor, ...]
    view_keys: tuple[str, ...]
    modalities: tuple[str, ...]
    report: str
    labels: Mapping[str, int]
    #: per view (n, L): 1 the slice shows the finding, 0 it does not, -1 unknown; empty when
    #: the study's geometry was not kept
    slice_targets: tuple[torch.Tensor, ...] = ()
    #: per view (L, 2): where in its slices a located finding lies (`SlicePlane.place`), NaN
    #: for a finding nothing locates; empty like `slice_targets`
    finding_places: tuple[torch.Tensor, ...] = ()

    def meta_views(self) -> list[ViewInput]:
        """Pixel-free stand-ins (one 1x1 slice) carrying modality and key, for text batching."""
        return [
            ViewInput(pixels=np.zeros((1, 1, 1), np.float32), modality=m, view_key=k)  # type: ignore[arg-type]
            for m, k in zip(self.modalities, self.view_keys, strict=True)
        ]


def _answer_key(folder: Path) -> dict[str, Any] | None:
    """The study's phantom answer key (`truth.json`) as parsed JSON, None when it has none."""
    path = folder / "truth.json"
    if not path.is_file():
        return None
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DatasetError(f"{path}: not a phantom answer key ({exc})") from exc
    if not isinstance(truth, dict):
        raise DatasetError(f"{path}: not a phantom answer key (not an object)")
    return truth


def finding_regions(folder: Path) -> list[FindingRegion]:
    """Focal findings located by the study's phantom answer key (`truth.json`), if it has one.

    Nodules and liver lesions extend half their size from their centre; a lymph node
    conglomerate about 0.7 of its short axis (measured against the phantom's raster); a
    unilateral effusion has a centroid and no radius (`FindingRegion`). Each
    view series of the key says how plainly it shows each finding (`finding_snr`). Real
    datasets have no such key: their present findings count on every slice (`slice_targets`).
    """
    truth = _answer_key(folder)
    if truth is None:
        return []
    try:
        snr: dict[str, dict[str, float]] = {}
        for series in truth.get("series", []):
            for key, value in (series.get("finding_snr") or {}).items():
                snr.setdefault(str(key), {})[str(series["series_instance_uid"])] = float(value)
        regions = []
        for finding in truth.get("findings", []):
            attributes = finding.get("attributes") or {}
            if not finding.get("present") or "center_lps_mm" not in attributes:
                continue
            radius: float | None = None
            if "short_axis_mm" in attributes:
                radius = 0.7 * float(attributes["short_axis_mm"])
            elif "size_mm" in attributes:
                radius = float(attributes["size_mm"]) / 2
            x, y, z = (float(v) for v in attributes["center_lps_mm"])
            key = str(finding["key"])
            regions.append(FindingRegion(key, (x, y, z), radius, snr.get(key, {})))
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{folder / 'truth.json'}: not a phantom answer key ({exc})") from exc
    return regions


#: one slice that cuts a placed finding: its ImagePositionPatient and the finding's pixels on it
Cut = tuple[tuple[float, float, float], int]
#: finding -> series instance UID -> the slices that cut it
FindingCuts = Mapping[str, Mapping[str, Sequence[Cut]]]


def finding_cuts(folder: Path) -> dict[str, dict[str, list[Cut]]]:
    """The slices of each view series that cut a placed finding (the effusion), from the
    study's phantom answer key (`finding_slices`); empty without a key."""
    truth = _answer_key(folder)
    if truth is None:
        return {}
    out: dict[str, dict[str, list[Cut]]] = {}
    try:
        for series in truth.get("series", []):
            for key, cuts in (series.get("finding_slices") or {}).items():
                out.setdefault(str(key), {})[str(series["series_instance_uid"])] = [
                    ((float(x), float(y), float(z)), int(pixels)) for x, y, z, pixels in cuts
                ]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{folder / 'truth.json'}: not a phantom answer key ({exc})") from exc
    return out


def slice_targets(
    geometry: ViewGeometry,
    slices: int,
    finding_labels: Sequence[str],
    study_labels: Mapping[str, int],
    regions: Sequence[FindingRegion],
    cuts: FindingCuts | None = None,
) -> torch.Tensor:
    """(slices, L) per-slice targets: 1 shows the finding, 0 does not, -1 unknown.

    A finding absent from the study is absent from every slice. A present one that a region
    locates shows on the slices within its radius, not on those more than one slice spacing
    beyond, and the partial-volume band between stays unknown; in a series the region says
    does not show it plainly (`FindingRegion.shown_in`: a liver lesion outside the arterial
    phase) the slices within its radius stay unknown too, since teaching the encoder that
    they show it would teach it to fire on normal-looking liver. A present one whose slices
    the answer key lists for this series (`cuts`: the effusion) shows on the slices that
    hold at least `SHOWN_PIXELS` of it, not on those that cut none of it, and a slice that
    only grazes it stays unknown. A present one that nothing locates (a diffuse finding such
    as cardiomegaly, or any finding of a dataset without an answer key) counts on every
    slice: a weak label, but the one that teaches the encoder what such a study looks like;
    left unknown, those findings would only ever be seen as negatives. A finding the study
    does not annotate stays unknown. The view's positions are resampled like its pixels
    when the processor changed the count.
    """
    positions = torch.tensor(geometry.positions, dtype=torch.float64)
    if positions.numel() != slices:
        grid = torch.linspace(0, positions.numel() - 1, slices, dtype=torch.float64)
        positions = torch.from_numpy(np.interp(grid.numpy(), np.arange(positions.numel()), positions.numpy()))
    spacing = float((positions[1:] - positions[:-1]).abs().mean()) if slices > 1 else 0.0
    normal = torch.tensor(geometry.normal, dtype=torch.float64)
    out = torch.full((slices, len(finding_labels)), -1.0)
    # focal findings and their radii; a placed one (no radius) takes its slices from `cuts`
    located = {region.key: (region, region.radius_mm) for region in regions if region.radius_mm is not None}
    series_cuts = {
        key: by_series[geometry.series_instance_uid]
        for key, by_series in (cuts or {}).items()
        if geometry.series_instance_uid in by_series
    }
    for j, key in enumerate(finding_labels):
        label = study_labels.get(key)
        if label == 0:
            out[:, j] = 0.0
        elif label == 1 and key in series_cuts:
            out[:, j] = _cut_targets(positions, normal, spacing, series_cuts[key])
        elif label == 1 and key not in located:
            out[:, j] = 1.0
        elif label == 1:
            region, radius = located[key]
            distance = (
                positions - float(torch.tensor(region.center_lps_mm, dtype=torch.float64) @ normal)
            ).abs()
            if region.shown_in(geometry.series_instance_uid):
                out[distance <= radius, j] = 1.0
            out[distance > radius + spacing, j] = 0.0
    return out


def _cut_targets(
    positions: torch.Tensor,
    normal: torch.Tensor,
    spacing: float,
    cuts: Sequence[Cut],
) -> torch.Tensor:
    """One finding's column of `slice_targets` from the slices that cut it (`finding_cuts`):
    1 on a slice within half a spacing of a cut of at least `SHOWN_PIXELS`, -1 of a smaller
    cut, else 0."""
    shown = torch.zeros(positions.numel(), dtype=torch.bool)
    grazed = torch.zeros(positions.numel(), dtype=torch.bool)
    for point, pixels in cuts:
        near = (positions - float(torch.tensor(point, dtype=torch.float64) @ normal)).abs() <= spacing / 2
        if pixels >= SHOWN_PIXELS:
            shown |= near
        else:
            grazed |= near
    out = torch.zeros(positions.numel(), dtype=torch.float32)
    out[grazed] = -1.0
    out[shown] = 1.0
    return out


def finding_places(
    geometry: ViewGeometry, finding_labels: Sequence[str], regions: Sequence[FindingRegion]
) -> torch.Tensor:
    """(L, 2): where each located finding's centre falls within the view's slices, else NaN.

    The slices that show a focal finding cut it near its centre (its radius is what
    `slice_targets` calls showing), so the centre's projection is where it lies on each.
    """
    out = torch.full((len(finding_labels), 2), float("nan"))
    if geometry.plane is None:
        return out
    index = {key: j for j, key in enumerate(finding_labels)}
    for region in regions:
        if region.key in index:
            out[index[region.key]] = torch.tensor(geometry.plane.place(region.center_lps_mm))
    return out


def preprocess_study(
    name: str,
    views: Sequence[ViewInput],
    processor: MsVlmProcessor,
    report: str,
    labels: Mapping[str, int],
    *,
    geometries: Sequence[ViewGeometry] = (),
    regions: Sequence[FindingRegion] = (),
    cuts: FindingCuts | None = None,
) -> StudyRecord:
    pixels = tuple(processor.preprocess_view(view).to(torch.float16) for view in views)
    names = processor.settings.finding_labels
    targets = (
        tuple(
            slice_targets(geometry, view.shape[0], names, labels, regions, cuts)
            for geometry, view in zip(geometries, pixels, strict=True)
        )
        if geometries
        else ()
    )
    places = tuple(finding_places(geometry, names, regions) for geometry in geometries)
    return StudyRecord(
        name=name,
        pixels=pixels,
        view_keys=tuple(view.view_key for view in views),
        modalities=tuple(view.modality for view in views),
        report=report,
        labels=dict(labels),
        slice_targets=targets,
        finding_places=places,
    )


def load_dataset(
    entries: Sequence[IndexEntry], processors: Mapping[str, MsVlmProcessor], *, log_every: int = 50
) -> dict[str, list[StudyRecord]]:
    """Load every study once and preprocess it for each named processor (e.g. msvlm, baseline)."""
    out: dict[str, list[StudyRecord]] = {name: [] for name in processors}
    start = time.perf_counter()
    for i, entry in enumerate(entries):
        loaded = load_study(entry.folder)
        views = [view for view, _ in loaded]
        geometries = [geometry for _, geometry in loaded]
        regions = finding_regions(entry.folder)
        cuts = finding_cuts(entry.folder)
        for name, processor in processors.items():
            out[name].append(
                preprocess_study(
                    entry.folder.name,
                    views,
                    processor,
                    entry.report,
                    entry.labels,
                    geometries=geometries,
                    regions=regions,
                    cuts=cuts,
                )
            )
        if log_every and (i + 1) % log_every == 0:
            print(
                f"  loaded {i + 1}/{len(entries)} studies ({time.perf_counter() - start:.0f} s)", flush=True
            )
    return out


# --- batching ------------------------------------------------------------------------------


def epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """A deterministic permutation of range(n) for (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def batches(n: int, batch_size: int, *, seed: int, epoch: int) -> Iterator[list[int]]:
    order = epoch_order(n, seed=seed, epoch=epoch)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def text_batch(
    processor: MsVlmProcessor, studies: Sequence[StudyRecord], *, with_reports: bool = True
) -> MsVlmBatch:
    """Prompt/report tokens, labels and findings labels of `studies` (pixels are placeholders)."""
    return processor(
        [study.meta_views() for study in studies],
        reports=[study.report for study in studies] if with_reports else None,
        findings=[
            {k: v for k, v in study.labels.items() if k in processor.settings.finding_labels}
            for study in studies
        ],
    )


def site_labels(config: ReportModelConfig, studies: Sequence[StudyRecord]) -> torch.Tensor:
    """(N, F) per study and finding: the index in `config.sites_of(finding)` of the site its
    report states for the finding, -1 when the finding is not present, has no sites, or the
    report names none (the rule-based labeller reads it: `labeller.stated_site`)."""
    assert config.finding_labels is not None
    out = torch.full((len(studies), len(config.finding_labels)), -1, dtype=torch.long)
    for j, key in enumerate(config.finding_labels):
        sites = config.sites_of(key)
        if not sites or key not in LABELLED_FINDINGS:
            continue
        for i, study in enumerate(studies):
            if study.labels.get(key) == 1:
                site = stated_site(study.report, key, sites)
                if site is not None:
                    out[i, j] = sites.index(site)
    return out


def token_slice_targets(studies: Sequence[StudyRecord], length: int, num_labels: int) -> torch.Tensor:
    """(B, length, F) slice targets in the Z-former's token order (views one after another, as
    `zformer.pack_views` lays them out), -1 for padding and for studies without targets."""
    out = torch.full((len(studies), length, num_labels), -1.0)
    for b, study in enumerate(studies):
        if study.slice_targets:
            flat = torch.cat(study.slice_targets)[:length]
            out[b, : flat.shape[0]] = flat
    return out


def view_ids(
    processor: MsVlmProcessor, studies: Sequence[StudyRecord], *, device: torch.device | None = None
) -> torch.Tensor:
    """(B, V) view ids (0 = padding), made on `device` in one transfer."""
    num_views = max(len(study.view_keys) for study in studies)
    rows = [
        [processor.view_id(key) for key in study.view_keys] + [0] * (num_views - len(study.view_keys))
        for study in studies
    ]
    return torch.tensor(rows, dtype=torch.long, device=device)


def pad_views(
    per_study: Sequence[Sequence[torch.Tensor]], *, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[[(n_v, ...) per view] per study] -> (B, V, Z, ...) float32 zero-padded and (B, V, Z) mask.

    The batch is assembled where the views are (pixels on the CPU, cached features on the
    training device) and ends on `device` (default: there). CPU views bound for CUDA are
    gathered into pinned memory, so the one copy per batch can run asynchronously: what
    DataLoader's pin_memory does, and only where it helps.
    """
    num_views = max(len(views) for views in per_study)
    depth = max(view.shape[0] for views in per_study for view in views)
    trailing = per_study[0][0].shape[1:]
    source = per_study[0][0].device
    target = source if device is None else device
    pin = source.type == "cpu" and target.type == "cuda"
    out = torch.zeros((len(per_study), num_views, depth, *trailing), device=source, pin_memory=pin)
    mask = torch.zeros((len(per_study), num_views, depth), dtype=torch.bool, device=source, pin_memory=pin)
    for b, views in enumerate(per_study):
        for v, view in enumerate(views):
            out[b, v, : view.shape[0]] = view.float()
            mask[b, v, : view.shape[0]] = True
    return out.to(target, non_blocking=True), mask.to(target, non_blocking=True)
