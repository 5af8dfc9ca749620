"""Plan, render and write a phantom study; the library's main entry points.

A study is planned first (which series, in what order, with which labels and
times), then each series is rendered on demand. :func:`generate_study` keeps
everything in memory (tests, the node's in-process demo);
:func:`write_study` given a spec streams one series at a time to disk so a
many-series 512-matrix study never sits in RAM at once. Each series draws
its noise from its own seed stream, so generating a subset or in another order
never changes the pixels of the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from models.phantom import protocols as P
from models.phantom.anatomy import Anatomy, build_ct, build_mr
from models.phantom.dicom import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    SECONDARY_CAPTURE_IMAGE_STORAGE,
    Frame,
    SeriesHeader,
    series_datasets,
    tm,
    uid,
    write_datasets,
)
from models.phantom.enhanced import ENHANCED_MR_IMAGE_STORAGE, enhanced_mr_dataset
from models.phantom.findings import findings_for
from models.phantom.geometry import StackGeometry, Vec3, make_stack
from models.phantom.plan import SeriesPlan, has_contrast, plain, plan_series, study_context
from models.phantom.render import (
    CT_OFFSET,
    ct_topogram,
    mip_volume,
    mr_localizer,
    stack_frames,
    stored_volume,
    window,
)
from models.phantom.report import ct_report, mr_report
from models.phantom.screens import dose_report_lines, render_text, summary_lines
from models.phantom.shapes import Raster, compose, rasterize
from models.phantom.spec import PhantomSpec
from models.phantom.tissues import FOCAL_TISSUES, PLACED_TISSUES, ct_table, mr_table
from models.phantom.truth import FindingTruth, SeriesTruth, StudyTruth

logger = logging.getLogger(__name__)

CT_SIGMA_HU = 8.0
MR_SIGMA = 10.0
ADC_SIGMA = 30.0
MIP_SLAB = 4


@dataclass(frozen=True)
class GeneratedSeries:
    """One series in memory: its answer-key entry and its DICOM instances."""

    truth: SeriesTruth
    datasets: tuple[Dataset, ...]


@dataclass(frozen=True)
class GeneratedStudy:
    """A whole study in memory; nothing has touched the disk."""

    spec: PhantomSpec
    truth: StudyTruth
    series: tuple[GeneratedSeries, ...]

    @property
    def datasets(self) -> list[Dataset]:
        """Every instance of every series, in series order."""
        return [ds for s in self.series for ds in s.datasets]


def patient_offset(spec: PhantomSpec) -> Vec3:
    """Where the patient lies relative to the isocentre (mm, LPS): from a stream of its own,
    so that studies without jitter are what they were before the option existed."""
    if spec.position_jitter_mm == 0:
        return (0.0, 0.0, 0.0)
    x, y, z = np.random.default_rng([spec.seed, 5]).uniform(-1.0, 1.0, 3) * spec.position_jitter_mm
    return (float(x), float(y), float(z))


class StudyBuilder:
    """Generation state of one study: anatomy, context, plan and a raster cache."""

    def __init__(self, spec: PhantomSpec) -> None:
        self.spec = spec
        build = build_ct if spec.modality == "CT" else build_mr
        self.anatomy: Anatomy = build(
            spec.findings, np.random.default_rng([spec.seed, 1]), patient_offset(spec)
        )
        self.ctx = study_context(
            spec, self.anatomy, spec.fingerprint(), np.random.default_rng([spec.seed, 2])
        )
        self.plans, self.contrast_start = plan_series(
            spec, lambda plane: self.grid(plane).slice_thickness, np.random.default_rng([spec.seed, 3])
        )
        self._rasters: dict[tuple[str, int], tuple[StackGeometry, Raster]] = {}

    # -- geometry -----------------------------------------------------------------------
    def grid(self, plane: str, slices: int | None = None) -> StackGeometry:
        a = self.anatomy
        return make_stack(
            plane,
            center=a.center,
            fov_mm=a.fov_mm[plane],
            matrix=self.spec.matrix,
            slices=slices or self.spec.slices,
            coverage_mm=a.coverage_mm[plane],
            spacing_mm=self.spec.slice_spacing_mm,
            descending=(plane == "axial" and a.modality == "CT"),
            tilt_deg=self.spec.oblique_tilt_deg,
        )

    def raster(self, plane: str, slices: int | None = None) -> tuple[StackGeometry, Raster]:
        key = (plane, slices or self.spec.slices)
        if key not in self._rasters:
            grid = self.grid(plane, slices)
            self._rasters[key] = (grid, rasterize(self.anatomy.shapes, grid))
        return self._rasters[key]

    # -- rendering ----------------------------------------------------------------------
    def contrast(self, phase: str | None, sequence: str | None, b_value: int = 0) -> tuple[np.ndarray, float]:
        """Tissue values (index = label) of one view and the standard deviation of its noise."""
        noise = self.spec.noise
        if self.spec.modality == "CT":
            return ct_table(phase or "venous"), CT_SIGMA_HU * noise
        if sequence == "adc":
            return mr_table("adc"), ADC_SIGMA * noise
        table = mr_table("dwi", b_value=b_value) if sequence == "dwi" else mr_table(str(sequence))
        return table, MR_SIGMA * noise

    def focal_snr(self, plan: SeriesPlan) -> dict[str, float]:
        """Each planted focal finding's matched-filter SNR in the view series of `plan`.

        The signal is the noise-free difference the finding makes to the series (rendered
        with and without its solids, partial volume included), its SNR ||difference||_2 /
        sigma: the best any detector can do knowing where and what to look for (Barrett and
        Myers, "Foundations of Image Science", ch. 13-14). For DWI the best b-value counts.
        Why per series: a liver lesion that enhances arterially shows in the arterial series
        and hardly in the venous one, and an answer key that says only *that* the study shows
        it would teach a model that every series does (`models.phantom.detectability`).
        """
        planted = sorted({finding.key for finding in self.anatomy.findings} & FOCAL_TISSUES.keys())
        _, raster = self.raster(str(plan.plane))
        out = dict.fromkeys(planted, 0.0)
        for b_value in self.spec.b_values if plan.sequence == "dwi" else (0,):
            table, sigma = self.contrast(plan.phase, plan.sequence, b_value)
            whole = compose(raster, table)
            for key in planted:
                tissue = int(FOCAL_TISSUES[key])
                soft = tuple(p for p in raster.soft if p.tissue != tissue)
                without = Raster(labels=raster.labels, soft=soft)
                difference = whole - compose(without, table)
                energy = float(np.sqrt(np.square(difference, dtype=np.float64).sum()))
                out[key] = max(out[key], energy / max(sigma, 1e-9))
        return out

    def finding_slices(self, plan: SeriesPlan) -> dict[str, list[list[float]]]:
        """Per planted finding drawn as its own tissue (`PLACED_TISSUES`: the effusion), the
        slices of the view series of `plan` that cut it: [ImagePositionPatient x, y, z (mm),
        pixels of it on that slice].

        Why: an effusion has no centre and radius like a focal finding, yet it lies at the
        lung bases; a study label put on every slice tells the encoder that a pelvis slice
        shows it. The empty list says the series shows none of it. The slice's position, not
        a distance along a normal, so that a reader can project it with its own convention.
        """
        planted = sorted({finding.key for finding in self.anatomy.findings} & PLACED_TISSUES.keys())
        if plan.kind != "view" or not planted:
            return {}
        grid, raster = self.raster(str(plan.plane))
        out: dict[str, list[list[float]]] = {}
        for key in planted:
            mask = raster.labels == int(PLACED_TISSUES[key])
            pixels = mask.reshape(mask.shape[0], -1).sum(axis=1)
            out[key] = [
                [*(round(v, 3) for v in grid.position(k)), int(n)]
                for k, n in enumerate(pixels.tolist())
                if n > 0
            ]
        return out

    def _finding_snr(self, plan: SeriesPlan) -> dict[str, float]:
        """The answer key's `finding_snr` of a series: only image views are read."""
        if plan.kind != "view":
            return {}
        return {key: round(snr, 2) for key, snr in self.focal_snr(plan).items()}

    def _volume(
        self,
        raster: Raster,
        phase: str | None,
        sequence: str | None,
        rng: np.random.Generator,
        b_value: int = 0,
    ) -> np.ndarray:
        table, sigma = self.contrast(phase, sequence, b_value)
        if self.spec.modality == "CT":
            return stored_volume(raster, table, sigma=sigma, rng=rng, offset=CT_OFFSET)
        return stored_volume(raster, table, sigma=sigma, rng=rng, rician=sequence != "adc")

    def _image_attributes(self, plan: SeriesPlan, grid_fov: float, volume: np.ndarray) -> dict[str, Any]:
        start = tm(self.ctx.study_start_s + self.contrast_start)
        if self.spec.modality == "CT":
            attrs = P.ct_attributes(grid_fov, 9.0 + (plan.number % 5) * 0.4)
            if plan.phase != "non_contrast":
                attrs.update(P.ct_contrast(start))
            return attrs
        attrs = P.mr_attributes(str(plan.sequence), self.spec.matrix)
        center, width = (1500.0, 3000.0) if plan.sequence == "adc" else window(volume)
        attrs.update({"WindowCenter": center, "WindowWidth": width})
        if plan.sequence == "t1_post":
            attrs.update(P.mr_contrast(start))
        return attrs

    def render(self, index: int, plan: SeriesPlan) -> GeneratedSeries:
        spec, ctx = self.spec, self.ctx
        rng = np.random.default_rng([spec.seed, 100 + index])
        series_uid = uid(ctx.study_uid, "series", index)
        sop_class = CT_IMAGE_STORAGE if spec.modality == "CT" else MR_IMAGE_STORAGE
        image_type: tuple[str, ...] = P.CT_IMAGE_TYPE if spec.modality == "CT" else P.MR_IMAGE_TYPE
        grid: StackGeometry | None = None
        b_values: tuple[int, ...] = ()
        slice_time = 0.0
        modality = spec.modality
        if plan.kind == "localizer":
            frames, attrs = self._localizer(rng)
            image_type = P.LOCALIZER_IMAGE_TYPE
        elif plan.kind == "screen":
            frames = [Frame(pixels=render_text(self._screen_lines(), rows=256, columns=384))]
            attrs = {"ConversionType": "WSD", "BurnedInAnnotation": "YES"}
            sop_class, image_type = SECONDARY_CAPTURE_IMAGE_STORAGE, P.SCREEN_IMAGE_TYPE
            modality = "CT" if spec.modality == "CT" else "OT"
        else:
            slices = max(4, spec.slices // 2) if plan.kind == "reformat" else None
            grid, raster = self.raster(str(plan.plane), slices)
            mr = spec.modality == "MR"
            if plan.sequence == "dwi":
                b_values = spec.b_values
                frames = []
                volume = np.zeros((1, 1, 1), dtype=np.uint16)
                for b in b_values:
                    vol_b = self._volume(raster, None, "dwi", rng, b)
                    volume = vol_b if b == b_values[0] else volume
                    frames += stack_frames(
                        vol_b,
                        grid,
                        {
                            "DiffusionBValue": float(b),
                            "SequenceName": f"*ep_b{b}t",
                            "ImageType": P.DWI_IMAGE_TYPE_B0 if b == 0 else P.DWI_IMAGE_TYPE_TRACE,
                            "DiffusionDirectionality": "NONE" if b == 0 else "ISOTROPIC",
                            # each b-value has its own dynamic range, as scanners window them
                            "WindowCenter": window(vol_b)[0],
                            "WindowWidth": window(vol_b)[1],
                        },
                        spacing_between_slices=True,
                    )
            else:
                volume = self._volume(raster, plan.phase, plan.sequence, rng)
                if plan.kind == "mip":
                    volume, grid = mip_volume(volume, grid, min(MIP_SLAB, volume.shape[0]))
                frames = stack_frames(volume, grid, spacing_between_slices=mr)
            attrs = self._image_attributes(plan, grid.pixel_spacing * grid.columns, volume)
            if plan.sequence == "adc":
                image_type = P.ADC_IMAGE_TYPE
            if plan.kind == "reformat":
                image_type = P.REFORMAT_IMAGE_TYPE
                attrs["DerivationDescription"] = "Oblique multiplanar reformat"
            elif plan.kind == "mip":
                image_type = P.MIP_IMAGE_TYPE
                attrs["DerivationDescription"] = f"Maximum intensity projection, {MIP_SLAB} slices"
            if not mr and plan.kind == "view":
                slice_time = 0.02
        header = SeriesHeader(
            series_uid,
            plan.number,
            plan.description,
            sop_class,
            modality,
            image_type,
            plan.time_s,
            attrs,
            slice_time,
        )
        enhanced = spec.enhanced_mr and spec.modality == "MR" and plan.kind == "view"
        if enhanced:
            header = replace(header, sop_class_uid=ENHANCED_MR_IMAGE_STORAGE)
            datasets = [enhanced_mr_dataset(ctx, header, frames, stacks=max(1, len(b_values)))]
        else:
            datasets = series_datasets(ctx, header, frames)
        if plan.kind == "screen":
            for ds in datasets:  # the SC IOD has no frame of reference
                del ds.FrameOfReferenceUID
                del ds.PositionReferenceIndicator
        stacks = {"localizer": 2 if spec.modality == "CT" else 3}.get(plan.kind, 1)
        stacks = max(len(b_values), stacks)
        truth = SeriesTruth(
            series_index=index,
            folder=f"{index:02d}_{plan.slug}",
            series_instance_uid=str(series_uid),
            series_number=plan.number,
            series_description=plan.description or None,
            sop_class_uid=str(header.sop_class_uid),
            modality=modality,
            role="view" if plan.kind == "view" else "excluded",
            exclusion_reason=plan.reason if plan.kind != "view" else None,
            plane=plan.plane,
            phase=plan.phase,
            sequence=plan.sequence,
            b_values=b_values,
            contrast=has_contrast(spec.modality, plan),
            n_instances=len(datasets),
            n_frames=len(frames),
            n_stacks=stacks,
            slices_per_stack=len(frames) // stacks,
            rows=int(frames[0].pixels.shape[0]),
            columns=int(frames[0].pixels.shape[1]),
            pixel_spacing_mm=None if grid is None else round(grid.pixel_spacing, 6),
            slice_spacing_mm=None if grid is None else round(grid.spacing, 6),
            image_orientation=None if grid is None else tuple(round(v, 8) for v in grid.orientation),
            finding_snr=self._finding_snr(plan),
            finding_slices=self.finding_slices(plan),
        )
        logger.debug(
            "phantom series rendered",
            extra={"action": "phantom.series", "folder": truth.folder, "instances": truth.n_instances},
        )
        return GeneratedSeries(truth=truth, datasets=tuple(datasets))

    def _localizer(self, rng: np.random.Generator) -> tuple[list[Frame], dict[str, Any]]:
        if self.spec.modality == "CT":
            frames = [
                ct_topogram(self.anatomy, "ap", self.spec.matrix),
                ct_topogram(self.anatomy, "lateral", self.spec.matrix),
            ]
            attrs = P.ct_attributes(520.0, 0.1)
            attrs.update({"RescaleIntercept": 0.0, "WindowCenter": 1750.0, "WindowWidth": 3500.0})
            del attrs["RescaleType"]  # not HU: a topogram stores projected attenuation
            return frames, attrs
        frames = mr_localizer(self.anatomy, self.spec.matrix, rng, MR_SIGMA * self.spec.noise)
        attrs = P.mr_attributes("other", min(self.spec.matrix, 256))
        attrs.update({"WindowCenter": 400.0, "WindowWidth": 800.0})
        return frames, attrs

    def _screen_lines(self) -> list[str]:
        views = [p for p in self.plans if p.kind == "view"]
        if self.spec.modality == "CT":
            rows = [
                (P.CT_PHASE_LABEL[ph], 9.5 + n * 0.7, (9.5 + n * 0.7) * 41.0)
                for n, ph in enumerate(
                    p for p in ("non_contrast", "arterial", "venous", "delayed") if p in self.spec.phases
                )
            ]
            return dose_report_lines(self.ctx.patient_id, self.ctx.study_date, rows)
        labels = [P.mr_description(str(p.sequence), str(p.plane), self.spec.b_values) for p in views]
        return summary_lines(self.ctx.patient_id, self.ctx.study_date, labels)

    def study_truth(self, series: list[SeriesTruth]) -> StudyTruth:
        spec = self.spec
        planted = {f.key: f for f in self.anatomy.findings}
        applicable = findings_for(spec.modality)
        rng = np.random.default_rng([spec.seed, 4])
        if spec.modality == "CT":
            report, impression = ct_report(self.anatomy.findings, spec.phases, rng)
        else:
            report, impression = mr_report(self.anatomy.findings, spec.sequences, self.anatomy.sex, rng)
        return StudyTruth(
            study_instance_uid=self.ctx.study_uid,
            patient_id=self.ctx.patient_id,
            modality=spec.modality,
            seed=spec.seed,
            findings=tuple(
                FindingTruth(
                    d.key, d.key in planted, plain(planted[d.key].attributes) if d.key in planted else {}
                )
                for d in applicable
            ),
            labels={d.key: int(d.key in planted) for d in applicable},
            report=report,
            impression=impression,
            series=tuple(series),
            landmarks=dict(self.anatomy.landmarks),
            spec=spec.to_dict(),
        )

    def iter_series(self) -> Iterator[GeneratedSeries]:
        for index, plan in enumerate(self.plans):
            yield self.render(index, plan)


def generate_study(spec: PhantomSpec) -> GeneratedStudy:
    """Render every series of ``spec`` in memory (no disk I/O)."""
    builder = StudyBuilder(spec)
    series = tuple(builder.iter_series())
    truth = builder.study_truth([s.truth for s in series])
    return GeneratedStudy(spec=spec, truth=truth, series=series)


def write_study(study: GeneratedStudy | PhantomSpec, out_dir: str | Path) -> StudyTruth:
    """Write out_dir/<NN>_<slug>/NNNN.dcm per series, plus truth.json and report.txt.

    Given a spec instead of a generated study, series are rendered and written
    one at a time, so memory stays at one series.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(study, PhantomSpec):
        builder = StudyBuilder(study)
        truths = []
        for series in builder.iter_series():
            write_datasets(series.datasets, out / series.truth.folder)
            truths.append(series.truth)
        truth = builder.study_truth(truths)
    else:
        for series in study.series:
            write_datasets(series.datasets, out / series.truth.folder)
        truth = study.truth
    (out / "truth.json").write_text(truth.to_json() + "\n", encoding="utf-8")
    (out / "report.txt").write_text(truth.full_report, encoding="utf-8")
    logger.info("phantom study written", extra={"action": "phantom.write", "series": len(truth.series)})
    return truth
