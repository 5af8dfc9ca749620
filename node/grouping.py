"""Group one study's instances into the model's multi-view input (a :class:`Manifest`).

Pure function of the headers and the settings: no database, no pixels, no clock.
The same study grouped twice gives the same manifest, which is what lets a job be
identified by its input and re-run safely.

The steps, in order, each recorded as evidence or as an exclusion with a code:

1. whole-series exclusions: dose reports, screen captures, localizers, non-CT/MR
   modalities, derived images (reformats, MIPs; never diffusion maps);
2. geometry: every slice needs a position and an orthonormal orientation;
3. stacks: each series is cut by orientation, matrix, b-value, echo and repeated
   positions (:mod:`node.stacks`); localizers without the LOCALIZER type are
   recognised as several orientations with few images each;
4. labels: plane from the stack normal, CT phase (:mod:`node.phase`), MR sequence
   class (:mod:`node.sequence`);
5. selection: keep the wanted keys in preference order, one stack per key (thinner
   slices, then more slices), at most ``max_views``; subsample long stacks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from node.errors import GroupingError
from node.headers import InstanceHeader
from node.manifest import Exclusion, ExclusionReason, Manifest
from node.phase import PHASES, assign_phases
from node.selection import Candidate, select_views
from node.sequence import SEQUENCES, assign_sequences
from node.stacks import Stack, classify_plane, expand, split_series

logger = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")
WANTED_SEQUENCES = ("t1", "t1_post", "t2", "flair", "dwi", "adc")
DEFAULT_WANTED_VIEWS: tuple[str, ...] = (
    *(f"CT:{plane}:{phase}" for plane in PLANES for phase in PHASES),
    *(f"MR:{plane}:{seq}" for plane in PLANES for seq in WANTED_SEQUENCES),
    *(f"MR:{plane}:other" for plane in PLANES),
)
DEFAULT_PHASE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "non_contrast": (
        "W/O",
        "NC",
        "NON CON",
        "NONCON",
        "NON-CON",
        "NONCONTRAST",
        "PLAIN",
        "NATIVE",
        "UNENHANCED",
        "PRE",
        "WO",
    ),
    "arterial": ("ART", "ARTERIAL", "CTA", "ANGIO", "EARLY"),
    "venous": ("PV", "PVP", "PORTAL", "VEN", "VENOUS", "NEPHRO"),
    "delayed": ("DELAY", "DELAYED", "DEL", "LATE", "EQUILIBRIUM", "EXCRETORY", "URO"),
}

DEFAULT_SEQUENCE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "adc": ("ADC", "APPARENT"),
    "dwi": ("DWI", "DIFF", "DIFFUSION", "TRACE", "TRACEW"),
    "flair": ("FLAIR", "TIRM", "DARK FLUID"),
    "t2": ("T2", "T2W", "T2WI", "TSE T2"),
    "t1": ("T1", "T1W", "T1WI", "MPRAGE", "SPGR", "VIBE", "LAVA", "BRAVO"),
}

_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
_DIFFUSION_MAPS = {"ADC", "EADC", "TRACEW", "TRACE", "DIFFUSION", "ISODWI"}
_PROJECTIONS = {"MIP", "MINIP", "MNIP", "PROJECTION IMAGE", "VOLUME RENDERING"}


class EmptyStudyError(GroupingError):
    """group_study was given no instances."""


class MixedStudyError(GroupingError):
    """The instances given to group_study belong to more than one study."""


class GroupingSettings(BaseModel):
    """The ``[grouping]`` table of the node's configuration; every default documented."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: view keys (``MODALITY:plane:label``, fnmatch patterns allowed) in order of
    #: preference; a stack whose key matches none is excluded as ``unwanted_view``
    wanted_views: tuple[str, ...] = DEFAULT_WANTED_VIEWS
    #: most views per study; the least preferred beyond it are excluded as ``max_views``
    max_views: int = Field(default=24, ge=1)
    #: longer stacks are subsampled uniformly to this many slices
    max_slices_per_view: int = Field(default=512, ge=1)
    #: stacks with fewer slices are not volumes (``too_few_slices``)
    min_slices: int = Field(default=8, ge=1)
    #: also exclude DERIVED reformats (MPR); diffusion maps (ADC, trace) are always kept
    #: and projections (MIP/MinIP/VR) always excluded. Off by default: coronal and
    #: sagittal CT are usually reformats of the axial acquisition.
    exclude_derived: bool = False
    #: a normal within this angle of a patient axis is axial/coronal/sagittal
    plane_tolerance_deg: float = Field(default=20.0, gt=0, le=45)
    #: slices whose orientations differ by more than this belong to different stacks
    orientation_tolerance_deg: float = Field(default=1.0, gt=0)
    #: positions along the normal closer than this are "the same position"
    position_tolerance_mm: float = Field(default=0.01, gt=0)
    #: CT phase by delay after ContrastBolusStartTime: < arterial_max -> arterial,
    #: < venous_max -> venous, else delayed (seconds)
    arterial_max_delay_s: float = Field(default=45.0, gt=0)
    venous_max_delay_s: float = Field(default=120.0, gt=0)
    #: post-contrast stacks acquired within this many seconds of each other are one
    #: acquisition (reformats) when ranking acquisitions without timing
    same_acquisition_window_s: float = Field(default=10.0, ge=0)
    #: phases given to post-contrast acquisitions in time order when there is no timing
    order_phases: tuple[str, ...] = ("arterial", "venous", "delayed")
    #: the phase of a lone post-contrast acquisition without timing
    single_post_contrast_phase: str = "venous"
    #: with no contrast evidence at all, call a CT non_contrast (else ``unknown``)
    assume_non_contrast: bool = True
    #: CT phase keywords in SeriesDescription (last resort), tried in this order
    phase_keywords: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(DEFAULT_PHASE_KEYWORDS))
    #: MR: TR/TE (ms) bounds of T1- and T2-weighting, FLAIR's minimum TI, the TI
    #: range of inversion-prepared T1 (MPRAGE); shorter TI is STIR (other)
    t1_max_tr_ms: float = 800.0
    t1_max_te_ms: float = 30.0
    t2_min_tr_ms: float = 1500.0
    t2_min_te_ms: float = 60.0
    flair_min_ti_ms: float = 1500.0
    t1_ir_ti_ms: tuple[float, float] = (300.0, 1500.0)
    #: a 2D gradient echo (in/opposed-phase, T2*, FLASH) is ``other``, not t1
    mr_2d_gre_is_other: bool = True
    #: MR keywords (last resort, only without TR/TE), tried in this order
    sequence_keywords: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_SEQUENCE_KEYWORDS)
    )
    #: keywords marking a T1 as post-contrast when the study has no contrast tags
    post_contrast_keywords: tuple[str, ...] = ("POST", "+C", "C+", "GAD", "GD", "CE", "CONTRAST")
    #: DWI stacks compete for one key per plane: the b-value closest to this wins
    preferred_b_value: float = 1000.0
    #: a series with several orientations, all below min_slices, is a localizer
    localizer_max_images: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> GroupingSettings:
        """Reject settings that cannot mean anything (the message names the key)."""
        if self.venous_max_delay_s <= self.arterial_max_delay_s:
            raise ValueError("venous_max_delay_s must be greater than arterial_max_delay_s")
        for name, values in (
            ("order_phases", self.order_phases),
            ("single_post_contrast_phase", (self.single_post_contrast_phase,)),
            ("phase_keywords", tuple(self.phase_keywords)),
        ):
            unknown = sorted(set(values) - set(PHASES))
            if unknown or not values:
                raise ValueError(f"{name}: unknown or no phases {unknown}; known: {PHASES}")
        unknown = sorted(set(self.sequence_keywords) - set(SEQUENCES))
        if unknown:
            raise ValueError(f"sequence_keywords: unknown classes {unknown}; known: {SEQUENCES}")
        if self.t1_ir_ti_ms[0] >= self.t1_ir_ti_ms[1]:
            raise ValueError("t1_ir_ti_ms must be (low, high) with low < high")
        return self


# ----------------------------------------------------------------- series level


def _series_exclusion(
    headers: Sequence[InstanceHeader], settings: GroupingSettings
) -> tuple[ExclusionReason, str] | None:
    """Reasons that apply to a whole series, from its first instance's type and class."""
    first = headers[0]
    image_type = set(first.image_type)
    words = {w for t in first.image_type for w in t.split()}
    description = first.series_description.upper()
    if first.sop_class_uid == _DOSE_SR or {"DOSE INFO", "DOSE_INFO", "DOSE REPORT"} & image_type:
        return ExclusionReason.DOSE_REPORT, "radiation dose report (SOP class or ImageType)"
    if first.sop_class_uid.startswith(_SECONDARY_CAPTURE_PREFIX):
        if "DOSE" in description:
            return ExclusionReason.DOSE_REPORT, "secondary capture of a dose report"
        return ExclusionReason.SCREEN_CAPTURE, "Secondary Capture SOP class: not a volume"
    if {"SCREEN SHOT", "SCREENSHOT", "SCREEN SAVE"} & image_type or first.samples_per_pixel > 1:
        return ExclusionReason.SCREEN_CAPTURE, "screen capture (ImageType or colour pixels)"
    if "LOCALIZER" in words or "SCOUT" in words:
        return ExclusionReason.LOCALIZER, "ImageType says LOCALIZER"
    if first.modality not in ("CT", "MR"):
        return ExclusionReason.UNSUPPORTED_MODALITY, f"modality {first.modality or '?'}"
    if image_type & _PROJECTIONS:
        return ExclusionReason.DERIVED, "projection image (MIP/MinIP/VR): not a slice stack"
    derived = bool(first.image_type) and first.image_type[0] == "DERIVED"
    if settings.exclude_derived and derived and not image_type & _DIFFUSION_MAPS:
        return ExclusionReason.DERIVED, "DERIVED image (reformat/secondary), not wanted"
    return None


def _series_stacks(
    uid: str, headers: Sequence[InstanceHeader], settings: GroupingSettings
) -> tuple[list[Stack], list[Exclusion]]:
    items, broken = [], 0
    for header in headers:
        got, bad = expand(header)
        items.extend(got)
        broken += bad
    if broken:
        total = broken + len(items)
        if not items and total <= 2:
            return [], [
                Exclusion(
                    series_instance_uid=uid,
                    reason_code=ExclusionReason.SCREEN_CAPTURE,
                    reason=f"{total} image(s) without any patient geometry: a screen capture or report page",
                )
            ]
        return [], [
            Exclusion(
                series_instance_uid=uid,
                reason_code=ExclusionReason.BROKEN_GEOMETRY,
                reason=f"{broken} of {total} slices lack a position or an orthonormal "
                "orientation (ImagePositionPatient/ImageOrientationPatient)",
            )
        ]
    stacks = split_series(
        uid,
        items,
        orientation_tolerance_deg=settings.orientation_tolerance_deg,
        position_tolerance_mm=settings.position_tolerance_mm,
    )
    orientations = {s.stack_key.split("|")[1] for s in stacks if "|o" in s.stack_key}
    if (
        len(orientations) >= 2
        and len(items) <= settings.localizer_max_images
        and all(len(s.items) < settings.min_slices for s in stacks)
    ):
        return [], [
            Exclusion(
                series_instance_uid=uid,
                reason_code=ExclusionReason.LOCALIZER,
                reason=f"{len(orientations)} orientations with {len(items)} images in all: a localizer",
            )
        ]
    kept, excluded = [], []
    for stack in stacks:
        if len(stack.items) < settings.min_slices:
            excluded.append(
                Exclusion(
                    series_instance_uid=uid,
                    stack_key=stack.stack_key,
                    reason_code=ExclusionReason.TOO_FEW_SLICES,
                    reason=f"{len(stack.items)} slices, fewer than min_slices {settings.min_slices}",
                )
            )
        else:
            kept.append(stack)
    return kept, excluded


# ----------------------------------------------------------------- entry point


def group_study(headers: Sequence[InstanceHeader], settings: GroupingSettings) -> Manifest:
    """Turn one study's instance headers into its manifest (views + exclusions).

    Raises :class:`EmptyStudyError` or :class:`MixedStudyError`; everything
    wrong with a single series becomes an :class:`Exclusion` instead.
    """
    if not headers:
        raise EmptyStudyError("no instances to group")
    studies = {h.study_instance_uid for h in headers}
    if len(studies) > 1:
        raise MixedStudyError(f"instances of {len(studies)} studies given to group_study")
    study_uid = studies.pop()
    by_series: dict[str, dict[str, InstanceHeader]] = defaultdict(dict)
    for header in headers:  # the same SOP instance stored twice counts once
        by_series[header.series_instance_uid].setdefault(header.sop_instance_uid, header)
    excluded: list[Exclusion] = []
    stacks: list[Stack] = []
    for uid in sorted(by_series, key=lambda u: _series_order(by_series[u].values(), u)):
        series = sorted(by_series[uid].values(), key=lambda h: h.sop_instance_uid)
        reason = _series_exclusion(series, settings)
        if reason is not None:
            excluded.append(Exclusion(series_instance_uid=uid, reason_code=reason[0], reason=reason[1]))
            continue
        kept, dropped = _series_stacks(uid, series, settings)
        stacks.extend(kept)
        excluded.extend(dropped)
    candidates = _label(stacks, settings)
    views, dropped = select_views(
        candidates,
        wanted_views=settings.wanted_views,
        max_views=settings.max_views,
        max_slices_per_view=settings.max_slices_per_view,
        preferred_b_value=settings.preferred_b_value,
    )
    excluded.extend(dropped)
    for item in excluded:
        logger.info(
            "grouping.excluded",
            extra={
                "study_instance_uid": study_uid,
                "series_instance_uid": item.series_instance_uid,
                "stack_key": item.stack_key,
                "reason_code": str(item.reason_code),
            },
        )
    logger.info(
        "grouping.done",
        extra={"study_instance_uid": study_uid, "views": [v.key for v in views], "excluded": len(excluded)},
    )
    return Manifest(study_instance_uid=study_uid, views=views, excluded=excluded)


def _series_order(headers: Iterable[InstanceHeader], uid: str) -> tuple[int, str]:
    numbers = [h.series_number for h in headers if h.series_number is not None]
    return (min(numbers) if numbers else 1 << 30, uid)


def _label(stacks: list[Stack], settings: GroupingSettings) -> list[Candidate]:
    """Plane for every stack, then CT phases and MR classes (study-wide context)."""
    planes = {s.stack_key: classify_plane(s.normal, settings.plane_tolerance_deg) for s in stacks}
    ct = [s for s in stacks if s.header.modality == "CT"]
    mr = [s for s in stacks if s.header.modality == "MR"]
    labels = assign_phases(
        ct,
        arterial_max_delay_s=settings.arterial_max_delay_s,
        venous_max_delay_s=settings.venous_max_delay_s,
        same_acquisition_window_s=settings.same_acquisition_window_s,
        order_phases=settings.order_phases,
        single_post_contrast_phase=settings.single_post_contrast_phase,
        keywords=settings.phase_keywords,
        assume_non_contrast=settings.assume_non_contrast,
    )
    labels.update(
        assign_sequences(
            mr,
            t1_max_tr_ms=settings.t1_max_tr_ms,
            t1_max_te_ms=settings.t1_max_te_ms,
            t2_min_tr_ms=settings.t2_min_tr_ms,
            t2_min_te_ms=settings.t2_min_te_ms,
            flair_min_ti_ms=settings.flair_min_ti_ms,
            t1_ir_ti_ms=settings.t1_ir_ti_ms,
            gre_2d_is_other=settings.mr_2d_gre_is_other,
            keywords=settings.sequence_keywords,
            post_keywords=settings.post_contrast_keywords,
        )
    )
    return [
        Candidate(
            stack=s,
            modality=s.header.modality,
            plane=planes[s.stack_key][0],
            plane_evidence=planes[s.stack_key][1],
            label=labels[s.stack_key],
        )
        for s in stacks
    ]


__all__ = [
    "DEFAULT_WANTED_VIEWS",
    "EmptyStudyError",
    "GroupingSettings",
    "MixedStudyError",
    "group_study",
]
