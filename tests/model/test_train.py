"""models.train: a tiny run of every stage on a few phantom studies lowers the losses and saves
a folder that loads; the baseline trains on the same data; training is reproducible."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import ViTConfig, ViTModel

from models.baseline3d import Baseline3dForReportGeneration
from models.msvlm import MsVlmForReportGeneration, ReportGenerator
from models.msvlm.presets import vit_config
from models.phantom import FINDINGS
from models.train import TOKEN_SIDE_FINDINGS, main, seed_everything, train
from models.training.data import epoch_order, make_phantoms
from models.training.dino import train_dino
from models.training.stages import StageSettings, schedule_for

pytestmark = pytest.mark.model

SCHEDULE = replace(
    schedule_for("tiny"),
    mem=StageSettings(epochs=3, lr=3e-3, batch_size=2),
    lm_warmup=StageSettings(epochs=2, lr=5e-3, batch_size=2),
    align=StageSettings(epochs=2, lr=3e-3, batch_size=2),
    tune=StageSettings(epochs=4, lr=5e-3, batch_size=2, warmup_fraction=0.0),
    # all four studies in one batch: the attention loss is a mean over the batch's located
    # findings, so epochs batched differently would not be comparable
    findings=StageSettings(epochs=4, lr=3e-3, batch_size=4, warmup_fraction=0.0),
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms")
    make_phantoms(folder, 4, seed=5, matrix=16, slices=8)
    return folder


def test_tiny_run_of_all_stages_lowers_the_loss_and_saves_a_loadable_model(
    dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    train(preset="tiny", data=dataset, out=out, seed=0, schedule=SCHEDULE)
    record = json.loads((out / "training.json").read_text())
    stages = {stage["name"]: stage for stage in record["stages"]}
    assert list(stages) == [
        "stage0 dino",
        "stage0b slice findings",
        "slice feature cache",
        "stage1 mem",
        "stage2a lm warm-up",
        "stage2 bridge alignment",
        "stage3a findings",
        "stage3 report tuning",
    ]
    for name in ("stage1 mem", "stage2a lm warm-up", "stage3a findings", "stage3 report tuning"):
        assert stages[name]["last_loss"] < stages[name]["first_loss"], name

    config = json.loads((out / "config.json").read_text())
    assert config["model_name"] == "msvlm-tiny" and config["model_version"]
    assert config["finding_modalities"] == {f.key: list(f.modalities) for f in FINDINGS}
    findings = json.loads((out / "findings.json").read_text())
    assert [f["key"] for f in findings] == [f.key for f in FINDINGS]
    assert set(findings[0]) == {"key", "display", "code_value", "coding_scheme", "code_meaning", "sites"}
    # the site head covers the findings that have sites, and the node can code each of its sites
    assert config["finding_sites"] == {
        f["key"]: [s["name"] for s in f["sites"]] for f in findings if "sites" in f
    }
    assert "cardiomegaly" not in config["finding_sites"] and len(config["finding_sites"]) == 5

    generator = ReportGenerator.from_pretrained(out)
    assert isinstance(generator.model, MsVlmForReportGeneration)
    from models.training.data import load_study_views

    study = load_study_views(sorted(p for p in dataset.iterdir() if p.is_dir())[0])
    report = generator.generate_report(study, max_new_tokens=8)
    modalities = {view.modality for view in study}
    assert set(report.findings) == {f.key for f in FINDINGS if any(f.applies_to(m) for m in modalities)}


def test_encoder_from_trains_stages_1_to_3_on_a_saved_slice_encoder(dataset: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(preset="tiny", data=dataset, out=first, seed=0, schedule=SCHEDULE)
    second = tmp_path / "second"
    # without stage 3's tuning of the encoder's top layer, the encoder is the one it was given
    frozen = replace(SCHEDULE, tune_vision_layers=0)
    train(preset="tiny", data=dataset, out=second, seed=1, schedule=frozen, encoder_from=first)
    record = json.loads((second / "training.json").read_text())
    assert [stage["name"] for stage in record["stages"]][:2] == ["slice feature cache", "stage1 mem"]
    assert (
        record["encoder_from"]["folder"] == str(first) and len(record["encoder_from"]["weights_sha256"]) == 64
    )
    a = MsVlmForReportGeneration.from_pretrained(first).vision_model.state_dict()
    b = MsVlmForReportGeneration.from_pretrained(second).vision_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the token head that reads a nodule's side (trained by the first run's stage 0b) comes along
    head_a = MsVlmForReportGeneration.from_pretrained(first).token_head
    head_b = MsVlmForReportGeneration.from_pretrained(second).token_head
    assert head_a is not None and head_b is not None and torch.equal(head_a.weight, head_b.weight)
    sided = [json.loads((run / "config.json").read_text())["token_side_findings"] for run in (first, second)]
    assert sided == [list(TOKEN_SIDE_FINDINGS)] * 2
    # --slice-passes continues stage 0b on the loaded encoder (with the place and token losses,
    # here with the patch tokens' maximum pooled in); DINO stays skipped
    third = tmp_path / "third"
    train(
        preset="tiny",
        data=dataset,
        out=third,
        seed=1,
        schedule=frozen,
        encoder_from=first,
        slice_passes=1,
        slice_pooling="cls_max",
    )
    names = [stage["name"] for stage in json.loads((third / "training.json").read_text())["stages"]]
    assert names[:2] == ["stage0b slice findings", "slice feature cache"] and "stage0 dino" not in names
    assert json.loads((third / "config.json").read_text())["slice_pooling"] == "cls_max"
    c = MsVlmForReportGeneration.from_pretrained(third).vision_model.state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # nothing trains a token head without the token loss: the model keeps none
    untrained = tmp_path / "untrained"
    train(
        preset="tiny", data=dataset, out=untrained, seed=1, schedule=replace(frozen, slice_token_weight=0.0)
    )
    assert MsVlmForReportGeneration.from_pretrained(untrained).token_head is None
    with pytest.raises(ValueError, match="0 or more"):
        train(preset="tiny", data=dataset, out=tmp_path / "n", schedule=SCHEDULE, slice_passes=-1)
    with pytest.raises(ValueError, match="baseline has none"):
        train(
            preset="tiny",
            data=dataset,
            out=tmp_path / "b",
            baseline=True,
            schedule=SCHEDULE,
            encoder_from=first,
        )
    with pytest.raises(ValueError, match="baseline has no slice encoder"):
        train(
            preset="tiny",
            data=dataset,
            out=tmp_path / "p",
            baseline=True,
            schedule=SCHEDULE,
            slice_pooling="cls_max",
        )
    with pytest.raises(ValueError, match="configuration differs"):
        train(preset="demo", data=dataset, out=tmp_path / "d", schedule=SCHEDULE, encoder_from=first)


def test_baseline_trains_on_the_same_data(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "baseline"
    train(preset="tiny", data=dataset, out=out, seed=0, baseline=True, schedule=SCHEDULE)
    record = json.loads((out / "training.json").read_text())
    stages = {stage["name"]: stage for stage in record["stages"]}
    assert list(stages) == [
        "stage2a lm warm-up",
        "stage3a findings from pixels",
        "volume token cache",
        "stage2 bridge alignment",
        "stage3 report tuning",
    ]
    for name in ("stage3a findings from pixels", "stage3 report tuning"):
        assert stages[name]["last_loss"] < stages[name]["first_loss"], name
    loaded = ReportGenerator.from_pretrained(out)
    assert type(loaded.model).__name__ == "Baseline3dForReportGeneration"


def test_baseline_report_stages_leave_the_volume_encoder_as_the_findings_stage_left_it(
    dataset: Path, tmp_path: Path
) -> None:
    """With no findings epochs, the saved encoder must be the seeded initial one, bit for bit."""
    out = tmp_path / "baseline"
    assert SCHEDULE.findings is not None
    schedule = replace(SCHEDULE, findings=replace(SCHEDULE.findings, epochs=0))
    train(preset="tiny", data=dataset, out=out, seed=0, baseline=True, schedule=schedule)
    trained = ReportGenerator.from_pretrained(out).model
    seed_everything(0)
    initial = Baseline3dForReportGeneration(trained.config)
    for name, value in initial.volume_encoder.state_dict().items():
        assert torch.equal(value, trained.get_submodule("volume_encoder").state_dict()[name]), name
    bridge = dict(initial.bridge.named_parameters())
    assert any(not torch.equal(p, bridge[n]) for n, p in trained.bridge.named_parameters())


def test_baseline_without_a_findings_stage_trains_its_encoder_with_the_report(
    dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "baseline"
    train(
        preset="tiny", data=dataset, out=out, seed=0, baseline=True, schedule=replace(SCHEDULE, findings=None)
    )
    names = [stage["name"] for stage in json.loads((out / "training.json").read_text())["stages"]]
    assert names == ["stage2a lm warm-up", "stage2 encoder+bridge alignment", "stage3 report tuning"]


def test_the_baseline_demo_budget_differs_only_in_its_findings_stage() -> None:
    msvlm, baseline = schedule_for("demo"), schedule_for("demo", baseline=True)
    assert baseline.findings is not None and baseline.findings != msvlm.findings
    assert replace(baseline, findings=msvlm.findings) == msvlm
    assert schedule_for("tiny", baseline=True) == schedule_for("tiny")


def test_data_order_and_dino_are_reproducible() -> None:
    assert epoch_order(10, seed=1, epoch=2) == epoch_order(10, seed=1, epoch=2)
    assert epoch_order(10, seed=1, epoch=2) != epoch_order(10, seed=1, epoch=3)
    settings = schedule_for("tiny").dino
    slices = torch.randn(12, 3, 32, 32)

    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        backbone = ViTModel(
            ViTConfig(**vit_config(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=4)),
            add_pooling_layer=False,
        )
        teacher, losses = train_dino(backbone, slices, replace(settings, steps=3), seed=4)
        assert len(losses) == 3
        return teacher.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_train_cli_refuses_a_folder_without_an_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every option parses (the phantom ones from `add_phantom_arguments`); the error names the folder."""
    missing = tmp_path / "nothing-here"
    code = main(
        [
            *("--data", str(missing), "--out", str(tmp_path / "out"), "--position-jitter", "5"),
            *("--matrix", "32", "--slice-passes", "1", "--slice-place-weight", "2"),
            *("--slice-token-weight", "1", "--slice-pooling", "cls_max"),
        ]
    )
    assert code == 1
    assert f"{missing} has no dataset.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
