"""The source instances a report rests on: the SR's evidence, and the image that shows each
finding best, as the ledger knows them.

The SR references every instance the model read (its evidence) and, per placed finding,
the one image that shows it best (a key image). Both come from the grouping manifest and
the ledger, not from reading the files again: only the first instance is read, for the
patient and study modules the SR copies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.manifest import Manifest
from node.schema import Instance, Series
from node.sr import ImageReference


@dataclass(frozen=True)
class StoredInstance:
    """What the ledger knows of one source instance: its SOP class and where a viewer lists it."""

    sop_class_uid: str
    series_number: int | None
    instance_number: int | None


@dataclass(frozen=True)
class KeyImage:
    """The image that shows a finding best: what the SR references, where a viewer lists it,
    and where on it the model read the finding (`region`: left, top, right, bottom in its pixels)."""

    reference: ImageReference
    series_instance_uid: str
    series_number: int | None
    instance_number: int | None
    region: tuple[float, float, float, float] | None = None

    def as_json(self) -> dict[str, Any]:
        """The result's record of it (findings JSON): "series 4, image 2" and the UIDs."""
        frame = {"frame": self.reference.frame_number} if self.reference.frame_number else {}
        region = {"region": [round(v, 1) for v in self.region]} if self.region is not None else {}
        return {
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.reference.sop_instance_uid,
            "series_number": self.series_number,
            "instance_number": self.instance_number,
            **frame,
            **region,
        }


def stored_instances(factory: Callable[[], Session], study_instance_uid: str) -> dict[str, StoredInstance]:
    """SOP Instance UID -> the ledger's record of each of the study's instances."""
    with factory() as session:
        rows = session.execute(
            select(
                Instance.sop_instance_uid,
                Instance.sop_class_uid,
                Series.series_number,
                Instance.instance_number,
            )
            .outerjoin(Series, Series.series_instance_uid == Instance.series_instance_uid)
            .where(Instance.study_instance_uid == study_instance_uid)
        ).all()
    return {uid: StoredInstance(sop_class, series, instance) for uid, sop_class, series, instance in rows}


def evidence_for(root: Path, manifest: Manifest, stored: Mapping[str, StoredInstance]) -> list[Dataset]:
    """Every source instance used, as the SR builder wants them.

    Only the first is read from disk (patient and study modules are copied from
    it); the others need just their UIDs, which the ledger has — reading 300
    headers again would cost more than the whole SR.
    """
    refs = {
        ref.sop_instance_uid: (view.series_instance_uid, ref.path)
        for view in manifest.views
        for ref in view.slices
    }
    ordered = sorted(refs)
    first = dcmread(root / refs[ordered[0]][1], stop_before_pixels=True)
    evidence: list[Dataset] = [first]
    for sop in ordered[1:]:
        item = Dataset()
        item.StudyInstanceUID = manifest.study_instance_uid
        item.SeriesInstanceUID = refs[sop][0]
        item.SOPClassUID = stored[sop].sop_class_uid if sop in stored else first.SOPClassUID
        item.SOPInstanceUID = sop
        evidence.append(item)
    return evidence


def find_key_images(
    manifest: Manifest,
    sources: Sequence[Sequence[int]],
    key_slices: Mapping[str, tuple[int, int]],
    stored: Mapping[str, StoredInstance],
    key_regions: Mapping[str, tuple[float, float, float, float]] | None = None,
) -> dict[str, KeyImage]:
    """Per finding, the instance (and frame) of the slice the model says shows it best, and
    where on it (`key_regions`, in that slice's pixels, which are the instance's own).

    `key_slices` gives (view, slice) as the model counted them: the view's index in the
    manifest and the slice's in its loaded volume, which `sources` (`Volume.sources`, per view)
    maps back to the manifest's slices. An instance the ledger does not know is left out
    rather than referenced with a guessed SOP class.
    """
    out = {}
    for key, (view_index, index) in key_slices.items():
        view = manifest.views[view_index]
        ref = view.slices[sources[view_index][index]]
        known = stored.get(ref.sop_instance_uid)
        if known is None:
            continue
        out[key] = KeyImage(
            reference=ImageReference(
                sop_class_uid=known.sop_class_uid,
                sop_instance_uid=ref.sop_instance_uid,
                frame_number=None if ref.frame is None else ref.frame + 1,
            ),
            series_instance_uid=view.series_instance_uid,
            series_number=known.series_number,
            instance_number=known.instance_number,
            region=(key_regions or {}).get(key),
        )
    return out
