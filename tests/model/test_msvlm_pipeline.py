"""ReportGenerator: the worker's one call per study, device placement, one-folder persistence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from models.baseline3d import Baseline3dForReportGeneration, baseline3d_preset
from models.msvlm import (
    MsVlmForReportGeneration,
    MsVlmProcessor,
    Placement,
    ReportGenerator,
    ReportOutput,
    ViewInput,
)

pytestmark = pytest.mark.model

StudyFactory = Callable[..., list[ViewInput]]


@pytest.fixture
def generator(tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor) -> ReportGenerator:
    return ReportGenerator(model=tiny_model, processor=processor, placement=Placement.for_device("cpu"))


def test_generate_report_returns_text_and_probabilities(
    generator: ReportGenerator, make_study: StudyFactory
) -> None:
    study = make_study([("CT", "CT:axial:venous", 9), ("CT", "CT:coronal:venous", 4)])
    report = generator.generate_report(study, max_new_tokens=8)
    assert isinstance(report, ReportOutput) and isinstance(report.text, str)
    assert list(report.findings) == list(generator.processor.settings.finding_labels)
    assert all(0.0 <= p <= 1.0 for p in report.findings.values())
    threshold = generator.model.config.findings_threshold
    assert report.present == {k: p >= threshold for k, p in report.findings.items()}
    assert generator.generate_report(study, max_new_tokens=8) == report
    assert not generator.model.training
    assert not any(p.requires_grad for p in generator.model.parameters())


def test_findings_the_model_does_not_assess_in_a_modality_are_left_out(
    generator: ReportGenerator, make_study: StudyFactory
) -> None:
    generator.model.config.finding_modalities = {"lung_nodule": ["CT"], "rectal_lesion": ["MR"]}
    ct, mr = make_study([("CT", "CT:axial:venous", 5)]), make_study([("MR", "MR:axial:t2", 5)])
    ct_report, mr_report = generator.generate_reports([ct, mr], max_new_tokens=4)
    every = set(generator.processor.settings.finding_labels)
    assert set(ct_report.findings) == set(ct_report.present) == every - {"rectal_lesion"}
    assert set(mr_report.findings) == set(mr_report.present) == every - {"lung_nodule"}


def test_folder_round_trip_for_both_model_kinds(
    generator: ReportGenerator, tokenizer: PreTrainedTokenizerFast, make_study: StudyFactory, tmp_path: Path
) -> None:
    study = make_study([("MR", "MR:axial:t2", 7)])
    generator.save_pretrained(tmp_path / "msvlm")
    loaded = ReportGenerator.from_pretrained(tmp_path / "msvlm")
    assert isinstance(loaded.model, MsVlmForReportGeneration)
    assert loaded.generate_report(study, max_new_tokens=6) == generator.generate_report(
        study, max_new_tokens=6
    )

    config = baseline3d_preset("tiny", vocab_size=len(tokenizer))
    baseline = ReportGenerator(
        model=Baseline3dForReportGeneration(config),
        processor=MsVlmProcessor.from_model_config(config, tokenizer),
        placement=Placement.for_device("cpu"),
    )
    baseline.save_pretrained(tmp_path / "baseline")
    reloaded = ReportGenerator.from_pretrained(tmp_path / "baseline")
    assert isinstance(reloaded.model, Baseline3dForReportGeneration)
    assert reloaded.generate_report(study, max_new_tokens=6) == baseline.generate_report(
        study, max_new_tokens=6
    )


def test_placement_is_explicit() -> None:
    cpu = Placement.for_device("cpu")
    assert (cpu.weight_dtype, cpu.autocast_dtype, cpu.static_cache) == (torch.float32, None, False)
    assert Placement.for_device("cpu", precision="float32") == cpu
    for precision in ("mixed", "bfloat16"):
        with pytest.raises(ValueError, match="cpu runs in float32"):
            Placement.for_device("cpu", precision=precision)
    with pytest.raises(ValueError, match="precision must be one of"):
        Placement.for_device("cpu", precision="fp8")
    if torch.cuda.is_available():
        cuda = Placement.for_device("cuda:0")
        assert cuda.autocast_dtype in (torch.bfloat16, torch.float16)
        assert cuda.static_cache == (cuda.weight_dtype == torch.bfloat16)


def test_node_precision_setting_matches_the_pipeline() -> None:
    from typing import get_args

    from models.msvlm.pipeline import PRECISIONS
    from node.config import ModelSection

    assert get_args(ModelSection.model_fields["precision"].annotation) == PRECISIONS


def test_static_cache_decodes_the_same_tokens(
    tiny_model: MsVlmForReportGeneration, processor: MsVlmProcessor, make_study: StudyFactory
) -> None:
    """The static cache (compiled on CUDA) changes speed, never the report."""
    study = make_study([("CT", "CT:axial:venous", 9), ("CT", "CT:sagittal:venous", 5)])
    dynamic = ReportGenerator(model=tiny_model, processor=processor, placement=Placement.for_device("cpu"))
    expected = dynamic.generate_report(study, max_new_tokens=12)
    static_placement = Placement(
        device=torch.device("cpu"), weight_dtype=torch.float32, autocast_dtype=None, static_cache=True
    )
    static = ReportGenerator(model=tiny_model, processor=processor, placement=static_placement)
    static.warm_up(max_new_tokens=12)
    # One cache size for every study (visual tokens + longest text + new tokens), so the
    # compiled decoding step is never recompiled for a longer prompt.
    config = tiny_model.config
    expected_len = config.num_latents + config.max_text_tokens + 12
    assert tiny_model.language_model._previous_max_cache_length == expected_len
    assert static.generate_report(study, max_new_tokens=12) == expected
    assert tiny_model.language_model._previous_max_cache_length == expected_len


def test_failed_compilation_falls_back_to_eager_decoding(
    tiny_model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    make_study: StudyFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A GPU image without a C compiler cannot compile; the worker must still come up."""
    study = make_study([("MR", "MR:axial:t2", 6)])
    expected = ReportGenerator(
        model=tiny_model, processor=processor, placement=Placement.for_device("cpu")
    ).generate_report(study, max_new_tokens=6)
    static_placement = Placement(
        device=torch.device("cpu"), weight_dtype=torch.float32, autocast_dtype=None, static_cache=True
    )
    generator = ReportGenerator(model=tiny_model, processor=processor, placement=static_placement)
    real_generate = tiny_model.generate

    def generate(**kwargs: Any) -> Any:
        if kwargs.get("static_cache"):
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
        return real_generate(**kwargs)

    monkeypatch.setattr(tiny_model, "generate", generate)
    with caplog.at_level("WARNING", logger="models.msvlm.pipeline"):
        generator.warm_up(max_new_tokens=6)
    assert not generator.placement.static_cache
    assert [r.getMessage() for r in caplog.records] == ["model.compile_failed"]
    assert "C compiler" in caplog.records[0].error
    assert generator.generate_report(study, max_new_tokens=6) == expected


def test_warm_up_does_nothing_without_a_static_cache(generator: ReportGenerator) -> None:
    generator.warm_up(max_new_tokens=4)
    assert not hasattr(generator.model.language_model, "_previous_max_cache_length")


def test_from_pretrained_rejects_foreign_folders(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type"):
        ReportGenerator.from_pretrained(tmp_path)
