"""Key images: from the model's (view, slice) back to the instance and frame the SR references."""

from __future__ import annotations

from node.evidence import StoredInstance, find_key_images
from node.manifest import Manifest, SliceRef, View

CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def _view(series: str, refs: list[SliceRef], key: str) -> View:
    return View(
        key=key,
        series_instance_uid=series,
        stack_key=series,
        modality=key.split(":")[0],
        plane=key.split(":")[1],
        slice_count=len(refs),
        spacing_mm=5.0,
        slices=refs,
    )


def test_a_key_slice_is_traced_to_its_instance_and_frame_as_a_viewer_lists_it() -> None:
    ct = [SliceRef(sop_instance_uid=f"1.2.3.{i}", path=f"ct/{i}.dcm", position=float(i)) for i in range(3)]
    # one multi-frame instance: frames 0..3, listed out of position order
    mr = [
        SliceRef(sop_instance_uid="1.2.4.1", frame=f, path="mr/1.dcm", position=float(f))
        for f in (2, 0, 3, 1)
    ]
    manifest = Manifest(
        study_instance_uid="1.2",
        views=[_view("1.2.3", ct, "CT:axial:venous"), _view("1.2.4", mr, "MR:axial:t2")],
        excluded=[],
    )
    stored = {
        "1.2.3.0": StoredInstance(CT, 3, 7),
        "1.2.3.2": StoredInstance(CT, 3, 9),
        "1.2.4.1": StoredInstance(ENHANCED_MR, 5, 1),
    }
    # the volumes sorted the slices: CT as listed, MR by frame; the model counts in that order
    sources = [(0, 1, 2), (1, 3, 0, 2)]
    found = find_key_images(
        manifest,
        sources,
        {"lung_nodule": (0, 2), "rectal_lesion": (1, 2), "liver_lesion": (0, 1)},
        stored,
        {"lung_nodule": (32.0, 16.25, 40.0, 24.0)},
    )
    nodule, rectal = found["lung_nodule"], found["rectal_lesion"]
    assert (nodule.reference.sop_instance_uid, nodule.reference.frame_number) == ("1.2.3.2", None)
    assert nodule.as_json() == {
        "series_instance_uid": "1.2.3",
        "sop_instance_uid": "1.2.3.2",
        "series_number": 3,
        "instance_number": 9,
        "region": [32.0, 16.2, 40.0, 24.0],  # where on it, to a tenth of a pixel
    }
    # the volume's third slice is the manifest's first ref, frame 2: DICOM frame number 3
    assert (rectal.reference.sop_class_uid, rectal.reference.frame_number) == (ENHANCED_MR, 3)
    assert rectal.as_json()["frame"] == 3
    assert rectal.region is None and "region" not in rectal.as_json()  # the model gave none
    assert "liver_lesion" not in found  # its instance is not in the ledger: no guessed reference
