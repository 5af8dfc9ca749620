"""The ideal-observer ceiling: how visible each planted focal finding is."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from models.phantom import Finding, PhantomSpec, dataset_spec
from models.phantom.detectability import ROSE_SNR, focal_signals, without_invisible_findings
from models.phantom.study import generate_study
from models.phantom.truth import StudyTruth
from models.training.data import SHOWN_SNR, make_phantoms, phantom_spec

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


def test_an_invisible_finding_is_dropped_and_the_visible_ones_kept() -> None:
    # SNR 1.3 in the venous phase, 8.7 in the arterial
    lesion = Finding("liver_lesion", {"size_mm": 14, "location": "right lobe"})
    nodule = Finding("lung_nodule", {"size_mm": 12, "lobe": "left lower lobe"})
    spec = replace(BASE, findings=(lesion, nodule, Finding("cardiomegaly", {})))
    kept = without_invisible_findings(spec)
    assert [f.key for f in kept.findings] == ["lung_nodule", "cardiomegaly"]
    assert kept == replace(spec, findings=(nodule, Finding("cardiomegaly", {})))
    with_arterial = replace(spec, phases=("arterial", "venous"))
    assert without_invisible_findings(with_arterial) == with_arterial


def test_training_and_held_out_phantoms_label_only_what_their_views_show() -> None:
    dropped = 0
    for index in range(40):
        spec = phantom_spec(index, seed=1)
        assert all(signal.detectable for signal in focal_signals(spec)), index
        sampled = {f.key for f in dataset_spec(index, seed=1, slices=24).findings}
        kept = {f.key for f in spec.findings}
        assert kept <= sampled
        dropped += len(sampled - kept)
    assert dropped > 0, "seed 1 plants liver lesions that its venous-only studies cannot show"


def test_each_view_series_of_the_answer_key_says_how_plainly_it_shows_each_finding() -> None:
    """`finding_snr` per series: the arterial series shows the liver lesion, the venous one
    hardly; the study's best series is what `focal_signals` reports, and only views carry it."""
    lesion = Finding("liver_lesion", {"size_mm": 30, "location": "right lobe"})
    nodule = Finding("lung_nodule", {"size_mm": 12, "lobe": "left lower lobe"})
    spec = replace(BASE, phases=("arterial", "venous"), findings=(lesion, nodule))
    truth = generate_study(spec).truth
    by_phase = {series.phase: series.finding_snr for series in truth.views}
    assert set(by_phase) == {"arterial", "venous"}
    assert by_phase["arterial"]["liver_lesion"] > SHOWN_SNR > by_phase["venous"]["liver_lesion"]
    assert min(snr["lung_nodule"] for snr in by_phase.values()) > SHOWN_SNR  # lung is dark in every phase
    best = {signal.key: signal.snr for signal in focal_signals(spec)}
    for key, snr in best.items():
        assert max(s[key] for s in by_phase.values()) == pytest.approx(snr, abs=0.01)
    assert truth.excluded and all(series.finding_snr == {} for series in truth.excluded)
    assert StudyTruth.from_json(truth.to_json()) == truth
