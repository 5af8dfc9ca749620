"""The multi-view manifest: grouping's output, the job payload, the SR's evidence list.

A manifest is stored as JSON in the job row and read back by a worker that may run
on another machine, days later, under a newer code version. So it is a frozen,
validated record with ``extra="forbid"`` (a misspelt field fails loudly instead of
being dropped), it carries its own ``grouping_version``, and it holds everything
the loader needs (paths, frames, order) so the worker never regroups.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

#: Bumped whenever the grouping rules change what a given study produces; part of
#: the job identity so an old job is never confused with a regrouped one.
GROUPING_VERSION = "1"


class ExclusionReason(StrEnum):
    """Why a series or stack did not become a view (stable codes, used in SQL and SR)."""

    UNSUPPORTED_MODALITY = "unsupported_modality"
    LOCALIZER = "localizer"
    DOSE_REPORT = "dose_report"
    SCREEN_CAPTURE = "screen_capture"
    DERIVED = "derived"
    BROKEN_GEOMETRY = "broken_geometry"
    TOO_FEW_SLICES = "too_few_slices"
    OBLIQUE = "oblique"
    UNWANTED_VIEW = "unwanted_view"
    DUPLICATE_VIEW = "duplicate_view"
    MAX_VIEWS = "max_views"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SliceRef(_Frozen):
    """One slice of a view: a single-frame instance, or one frame of a multi-frame one.

    ``frame`` is the 0-based frame index (None for single-frame instances);
    ``position`` is the slice position in mm along the view's stack normal, the
    key the slices are sorted by. ``path`` is as the store recorded it (relative
    paths are resolved against the store root by the loader).
    """

    sop_instance_uid: str
    frame: int | None = None
    path: str
    position: float


class View(_Frozen):
    """One input view of the model: a sorted stack of slices with its label and why.

    ``key`` is ``MODALITY:plane:label`` (e.g. ``CT:axial:arterial``,
    ``MR:axial:dwi``); the model learns one embedding per key. ``evidence`` maps
    each decision (``plane``, ``phase``/``sequence``, ``stack``, ``selection``) to
    the human-readable reason it was taken, which the SR and the admin views show.
    """

    key: str
    series_instance_uid: str
    stack_key: str
    modality: str
    plane: str
    phase: str | None = None
    sequence: str | None = None
    b_value: float | None = None
    slice_count: int = Field(ge=1)
    spacing_mm: float = Field(ge=0)
    pixel_spacing: tuple[float, float] | None = None
    evidence: dict[str, str] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    slices: list[SliceRef]


class Exclusion(_Frozen):
    """A series (``stack_key`` None) or one stack of it that is not a view, and why."""

    series_instance_uid: str
    stack_key: str | None = None
    reason_code: ExclusionReason
    reason: str


class Manifest(_Frozen):
    """Every view of one study, in model input order, plus every exclusion."""

    study_instance_uid: str
    views: list[View]
    excluded: list[Exclusion]
    grouping_version: str = GROUPING_VERSION

    def to_json(self) -> str:
        """Serialise for the job row (stable field order)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate a stored manifest; raises pydantic's ValidationError."""
        return cls.model_validate_json(text)

    def input_series(self) -> tuple[str, ...]:
        """Sorted, distinct series UIDs feeding the views (part of the job identity)."""
        return tuple(sorted({view.series_instance_uid for view in self.views}))

    def fingerprint(self) -> str:
        """SHA-256 over the grouping version and every view's key and slice UIDs.

        Two manifests with the same fingerprint feed the model the same input, so
        a job can be deduplicated on it.
        """
        digest = hashlib.sha256(self.grouping_version.encode())
        for view in self.views:
            digest.update(b"\x00" + view.key.encode())
            for ref in view.slices:
                digest.update(b"\x01" + ref.sop_instance_uid.encode() + f"#{ref.frame}".encode())
        return digest.hexdigest()
