"""The ideal-observer ceiling: how visible each planted focal finding is."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from models.phantom import Finding, PhantomSpec
from models.phantom.detectability import ROSE_SNR, focal_signals
from models.training.data import make_phantoms, phantom_spec

BASE = PhantomSpec(modality="CT", planes=("axial",), phases=("venous",), matrix=64, slices=24, seed=7)


def test_a_large_nodule_is_far_above_the_rose_criterion() -> None:
    spec = replace(BASE, findings=(Finding("lung_nodule", {"size_mm": 20, "lobe": "right upper lobe"}),))
    (signal,) = focal_signals(spec)
    assert signal.key == "lung_nodule" and signal.detectable
    assert signal.snr > 10 * ROSE_SNR
    assert signal.view == "axial venous"


def test_a_small_washed_out_liver_lesion_is_below_it_and_the_arterial_phase_shows_it_best() -> None:
    lesion = (Finding("liver_lesion", {"size_mm": 8, "location": "right lobe"}),)
    (venous,) = focal_signals(replace(BASE, findings=lesion))
    (both,) = focal_signals(replace(BASE, findings=lesion, phases=("arterial", "venous")))
    assert not venous.detectable  # -12 HU against liver under 8 HU of noise
    assert both.view == "axial arterial" and both.snr > 3 * venous.snr  # +82 HU


def test_the_snr_scales_inversely_with_the_noise() -> None:
    spec = replace(
        BASE, findings=(Finding("lymphadenopathy", {"short_axis_mm": 15, "station": "mediastinal"}),)
    )
    (normal,) = focal_signals(spec)
    (noisy,) = focal_signals(replace(spec, noise=2.0))
    assert noisy.snr == pytest.approx(normal.snr / 2, rel=1e-6)


def test_a_study_without_focal_findings_has_no_signals() -> None:
    spec = replace(BASE, findings=(Finding("cardiomegaly", {}),))
    assert focal_signals(spec) == []


def test_phantom_spec_is_the_spec_make_phantoms_writes(tmp_path: Path) -> None:
    make_phantoms(tmp_path, 3, seed=5, matrix=16, slices=8)
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    for index, folder in enumerate(folders):
        written = json.loads((folder / "truth.json").read_text())["spec"]
        assert phantom_spec(index, seed=5, matrix=16, slices=8).to_dict() == written
