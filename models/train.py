"""Train MS-VLM (or the 3D-patch baseline) on a dataset folder and save a model folder.

    python -m models.train --preset demo --make-phantoms 400 --data /tmp/phantoms \\
        --out models/weights/demo [--seed 0] [--baseline] [--device auto|cpu|cuda|cuda:N]

The data folder holds study folders of DICOM files and `dataset.jsonl` (what
`models.phantom.write_dataset` writes); `--make-phantoms N` writes N phantom studies there
first. Every study is read once through the node's grouping and volume loader and kept
preprocessed in memory. Stages (see `models.training.stages`): 0 DINO on slices, 0b slice
findings (where the schedule has it), slice features cached, 1 masked embedding modelling,
2a LM warm-up on the reports, 2 bridge alignment with the LM frozen, 3a the findings alone
(where the schedule has it), 3 report tuning. `--encoder-from DIR` starts from the slice
encoder of a saved model and skips stages 0 and 0b (`--slice-passes N` continues stage 0b on
it instead). The output folder loads with
`ReportGenerator.from_pretrained` and carries `findings.json` (the coded finding vocabulary
the node's SR writer uses) and `training.json` (stages, losses, times, data,
device). `--device auto` trains on CUDA when torch sees a GPU (forward passes under bf16
autocast, see `models.training.device`), else on the CPU; the saved weights are float32 on
the CPU either way. Every option has an environment mirror, MSVLM_TRAIN_<OPTION>.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from models.msvlm import (
    MsVlmForReportGeneration,
    MsVlmProcessor,
    Placement,
    ProcessorSettings,
    ReportGenerator,
)
from models.msvlm.configuration_msvlm import SLICE_POOLINGS, MsVlmConfig, ReportModelConfig, SlicePooling
from models.msvlm.presets import PRESET_NAMES, msvlm_preset
from models.msvlm.report_model import ReportModelBase
from models.msvlm.tokenizer import build_word_tokenizer
from models.training.data import (
    DatasetError,
    IndexEntry,
    StudyRecord,
    add_phantom_arguments,
    load_dataset,
    make_phantoms,
    read_index,
)
from models.training.device import DEVICE_CHOICES, autocast_dtype, resolve_device
from models.training.dino import train_dino
from models.training.labeller import extract_findings
from models.training.stages import (
    Schedule,
    StageLog,
    baseline_stages,
    cache_slice_features,
    lm_warmup,
    schedule_for,
    slice_findings,
    stage1_mem,
    stage2_align,
    stage3_tune,
    stage3a_findings,
)

MODEL_VERSION = "7"
#: findings whose side is read from the token that shows them (`MsVlmConfig.token_side_findings`)
#: whenever the token head is trained: the lungs and pleurae lie either side of the body's
#: midline (an effusion is placed by its centroid when it is on one side, and read on both
#: when each side's token shows it). Not the liver lesion (the liver's left lobe reaches across the midline)
#: nor a rectal wall (its side is the rectum's, which lies on the midline)
TOKEN_SIDE_FINDINGS = ("lung_nodule", "pleural_effusion")
FINDINGS_FILE = "findings.json"
TRAINING_FILE = "training.json"


def finding_modalities() -> dict[str, list[str]]:
    """Where each phantom finding is planted and labelled (the head learns nothing elsewhere)."""
    from models.phantom import FINDINGS

    return {f.key: list(f.modalities) for f in FINDINGS}


def finding_vocabulary() -> list[dict[str, Any]]:
    """models.phantom.FINDINGS, with their sites' codes, as the node's findings.json entries."""
    from models.phantom.findings import vocabulary_entries

    return vocabulary_entries()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tokenizer(reports: Sequence[str], config: ReportModelConfig) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the training reports and every word a prompt can contain."""
    probe = MsVlmProcessor(
        tokenizer=build_word_tokenizer(["x"]), settings=ProcessorSettings.from_model_config(config)
    )
    return build_word_tokenizer([*reports, *probe.prompt_corpus()])


def make_config(preset: str, *, baseline: bool, vocab_size: int) -> ReportModelConfig:
    from models.phantom.findings import site_vocabulary

    labels = [entry["key"] for entry in finding_vocabulary()]
    config: ReportModelConfig
    if baseline:
        from models.baseline3d import baseline3d_preset

        config = baseline3d_preset(preset, vocab_size=vocab_size)
        config.model_name = f"msvlm-baseline3d-{preset}"
    else:
        config = msvlm_preset(preset, vocab_size=vocab_size)
        config.model_name = f"msvlm-{preset}"
    config.finding_labels = labels
    config.finding_modalities = finding_modalities()
    # Findings are small against a whole study: attention pooling per finding lets the head
    # pick, for each finding, the slices that show it (on the cached features of the session-11
    # demo it lifted held-out AUC of nodule 0.833 -> 0.858 and lymph nodes 0.699 -> 0.786
    # against one pooling shared by all findings), and a heavier findings loss pulls the
    # encoder towards them.
    config.findings_pooling = "per_finding"
    config.findings_loss_weight = 2.0
    if not baseline:
        # where each finding is, from the sites its reports name (the baseline keeps the
        # paper's comparison: its figures predate the site head)
        config.finding_sites = {key: list(sites) for key in labels if (sites := site_vocabulary(key))}
    config.model_version = MODEL_VERSION
    config.check()
    return config


def _labelled(entries: Sequence[IndexEntry]) -> list[IndexEntry]:
    """Entries without labels get them from the rule-based labeller on their report."""
    return [
        entry
        if entry.labels
        else IndexEntry(folder=entry.folder, report=entry.report, labels=extract_findings(entry.report))
        for entry in entries
    ]


def train_msvlm(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: list[StudyRecord],
    schedule: Schedule,
    seed: int,
    *,
    encoder_trained: bool = False,
) -> list[StageLog]:
    """MS-VLM's stages; with `encoder_trained` (a slice encoder loaded by `--encoder-from`)
    stage 0 (DINO) is skipped, and stage 0b runs only if the schedule still has it."""
    logs = _train_slice_encoder(model, processor, studies, schedule, seed, dino=not encoder_trained)
    start = time.perf_counter()
    features = cache_slice_features(model, studies)
    cache = StageLog(name="slice feature cache", seconds=time.perf_counter() - start)
    logs.append(cache)
    print(f"{cache.name}: {sum(len(f) for f in features)} views in {cache.seconds:.1f} s", flush=True)

    findings = schedule.findings
    steps: list[Callable[[], StageLog]] = [
        lambda: stage1_mem(
            model, processor, studies, features, schedule.mem, mask_ratio=schedule.mask_ratio, seed=seed
        ),
        lambda: lm_warmup(model, processor, studies, schedule.lm_warmup, seed=seed),
        lambda: stage2_align(model, processor, studies, features, schedule.align, seed=seed),
    ]
    if findings is not None:
        steps.append(
            lambda: stage3a_findings(
                model,
                processor,
                studies,
                features,
                findings,
                seed=seed,
                attention_weight=schedule.attention_supervision,
            )
        )
    steps.append(
        lambda: stage3_tune(
            model,
            processor,
            studies,
            features,
            schedule.tune,
            lora=schedule.lora,
            tune_vision_layers=schedule.tune_vision_layers,
            findings_learned=findings is not None,
            seed=seed,
        )
    )
    for run in steps:
        log = run()
        logs.append(log)
        print(log.line(), flush=True)
    return logs


def _token_side_findings(schedule: Schedule, encoder_from: Path | None) -> list[str]:
    """The findings whose side the model's token head can read: `TOKEN_SIDE_FINDINGS` when
    stage 0b trains it with its token loss, else those of the model the slice encoder comes
    from (`load_slice_encoder`), whose head learnt only those; none without a token head."""
    if schedule.slice_findings is not None and schedule.slice_token_weight > 0:
        return list(TOKEN_SIDE_FINDINGS)
    if encoder_from is None:
        return []
    return list(json.loads((encoder_from / "config.json").read_text()).get("token_side_findings") or [])


def load_slice_encoder(model: MsVlmForReportGeneration, folder: Path) -> None:
    """Copy the slice encoder of the MS-VLM saved in `folder` into `model` (same ViT config),
    and its token head where both have one."""
    source = MsVlmForReportGeneration.from_pretrained(str(folder))
    weights = source.vision_model.state_dict()
    wanted = model.vision_model.state_dict()
    if {k: v.shape for k, v in weights.items()} != {k: v.shape for k, v in wanted.items()}:
        raise ValueError(f"{folder}: its slice encoder's configuration differs from the preset's")
    model.vision_model.load_state_dict(weights)
    if source.token_head is not None and model.token_head is not None:
        if source.token_head.out_features != model.token_head.out_features:
            raise ValueError(f"{folder}: its token head scores other findings than the preset's")
        model.token_head.load_state_dict(source.token_head.state_dict())


def _model_identity(folder: Path) -> dict[str, str]:
    from node.modelinfo import model_identity

    identity = model_identity(folder)
    return {
        "folder": str(folder),
        "model_name": identity.name,
        "model_version": identity.version,
        "weights_sha256": identity.weights_sha256,
    }


def _train_slice_encoder(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: list[StudyRecord],
    schedule: Schedule,
    seed: int,
    *,
    dino: bool = True,
) -> list[StageLog]:
    """Stages 0 (DINO, unless `dino` is false) and 0b (slice findings): the slice encoder."""
    logs: list[StageLog] = []
    if dino:
        logs.append(_dino(model, studies, schedule, seed))
    if schedule.slice_findings is not None:
        logs.append(
            slice_findings(
                model,
                processor,
                studies,
                schedule.slice_findings,
                seed=seed,
                place_weight=schedule.slice_place_weight,
                token_weight=schedule.slice_token_weight,
            )
        )
        print(logs[-1].line(), flush=True)
    return logs


def _dino(
    model: MsVlmForReportGeneration, studies: list[StudyRecord], schedule: Schedule, seed: int
) -> StageLog:
    slices = torch.cat([view for study in studies for view in study.pixels])
    print(f"stage0 dino: {slices.shape[0]} slices, {schedule.dino.steps} steps", flush=True)
    start = time.perf_counter()
    teacher, losses = train_dino(model.vision_model, slices, schedule.dino, seed=seed)
    model.vision_model.load_state_dict(teacher.state_dict())
    dino = StageLog(
        name="stage0 dino",
        seconds=time.perf_counter() - start,
        first_loss=losses[0],
        last_loss=float(np.mean(losses[-10:])),
        epoch_losses=[],
    )
    print(dino.line(), flush=True)
    return dino


def train(
    *,
    preset: str,
    data: Path,
    out: Path,
    seed: int = 0,
    baseline: bool = False,
    make: int = 0,
    phantom_seed: int | None = None,
    matrix: int = 64,
    slices: int = 24,
    position_jitter_mm: float = 0.0,
    schedule: Schedule | None = None,
    device: str | torch.device = "cpu",
    encoder_from: Path | None = None,
    slice_passes: int | None = None,
    slice_pooling: SlicePooling | None = None,
) -> ReportGenerator:
    """Everything `python -m models.train` does; returns the trained generator (also saved).

    `encoder_from` (MS-VLM only) takes the slice encoder of a saved model folder and trains
    everything after it (stages 1-3); stages 0 and 0b, two thirds of the demo's budget, are
    skipped. Why: a new head or loss can then be tried on a known encoder, and the result
    compared with that encoder's model rather than with a new encoder's seed luck.
    `slice_passes` sets stage 0b's passes (0: none); with `encoder_from` it continues
    stage 0b on the loaded encoder, which otherwise is kept as it is. `slice_pooling`
    overrides the preset's (`MsVlmConfig.slice_pooling`).

    `schedule` overrides the preset's stage budgets (tests use a few steps). `device` is
    where every stage runs (see `models.training.device.resolve_device`; "cpu" here so that
    library callers and tests stay on the CPU, "auto" is the CLI's default). The returned
    generator, like the saved folder, is on the CPU in float32.
    """
    if baseline and encoder_from is not None:
        raise ValueError("--encoder-from takes an MS-VLM slice encoder; the baseline has none")
    target = resolve_device(str(device))
    schedule = schedule or schedule_for(preset, baseline=baseline)
    schedule = _with_slice_passes(schedule, slice_passes, encoder_loaded=encoder_from is not None)
    total_start = time.perf_counter()
    timings: dict[str, float] = {}
    if make:
        start = time.perf_counter()
        make_phantoms(
            data,
            make,
            seed=seed if phantom_seed is None else phantom_seed,
            matrix=matrix,
            slices=slices,
            position_jitter_mm=position_jitter_mm,
        )
        timings["make_phantoms"] = time.perf_counter() - start
        print(f"wrote {make} phantom studies to {data} in {timings['make_phantoms']:.1f} s", flush=True)
    entries = _labelled(read_index(data))
    seed_everything(seed)
    probe_config = make_config(preset, baseline=baseline, vocab_size=4096)
    tokenizer = build_tokenizer([e.report for e in entries], probe_config)
    vocab_size = -(-len(tokenizer) // 8) * 8
    config = make_config(preset, baseline=baseline, vocab_size=vocab_size)
    if slice_pooling is not None:
        if not isinstance(config, MsVlmConfig):
            raise ValueError("--slice-pooling is MS-VLM's; the baseline has no slice encoder")
        config.slice_pooling = slice_pooling
        config.check()
    processor = MsVlmProcessor.from_model_config(config, tokenizer)

    start = time.perf_counter()
    studies = load_dataset(entries, {"main": processor})["main"]
    timings["load"] = time.perf_counter() - start
    n_views = sum(len(s.pixels) for s in studies)
    n_slices = sum(v.shape[0] for s in studies for v in s.pixels)
    print(
        f"loaded {len(studies)} studies, {n_views} views, {n_slices} slices in {timings['load']:.1f} s "
        f"(vocabulary {len(tokenizer)} words)",
        flush=True,
    )

    seed_everything(seed)
    model: ReportModelBase
    source: dict[str, str] | None = None
    if baseline:
        from models.baseline3d import Baseline3dForReportGeneration

        model = Baseline3dForReportGeneration(config)  # type: ignore[arg-type]
        model.to(target)  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy
        logs = baseline_stages(model, processor, studies, schedule, seed=seed)
        for log in logs:
            print(log.line(), flush=True)
    else:
        assert isinstance(config, MsVlmConfig)
        sided = _token_side_findings(schedule, encoder_from)
        if sided:
            config.token_side_findings = sided
            config.check()
        model = MsVlmForReportGeneration(config)
        if encoder_from is not None:
            source = _model_identity(encoder_from)  # before `out` might overwrite it
            load_slice_encoder(model, encoder_from)
        model.to(target)  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy
        logs = train_msvlm(
            model, processor, studies, schedule, seed, encoder_trained=encoder_from is not None
        )

    # Placement "cpu" moves the weights back to the CPU in float32 before saving.
    generator = ReportGenerator(model=model, processor=processor, placement=Placement.for_device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    generator.save_pretrained(out)
    (out / FINDINGS_FILE).write_text(json.dumps(finding_vocabulary(), indent=2) + "\n")
    total = time.perf_counter() - total_start
    half = autocast_dtype(target)
    record = {
        "preset": preset,
        "model": "baseline3d" if baseline else "msvlm",
        "seed": seed,
        "data": {
            "studies": len(studies),
            "views": n_views,
            "slices": n_slices,
            "phantom_seed": phantom_seed if phantom_seed is not None else (seed if make else None),
            "position_jitter_mm": position_jitter_mm if make else None,
        },
        "schedule": asdict(schedule),
        "encoder_from": source,
        "stages": [asdict(log) for log in logs],
        "timings_s": {**timings, "total": total},
        "torch_threads": torch.get_num_threads(),
        "device": str(target),
        "autocast": None if half is None else str(half).removeprefix("torch."),
    }
    (out / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    print("\nstage times:")
    for log in logs:
        print(f"  {log.line()}")
    print(f"total {total:.1f} s; saved to {out}", flush=True)
    return generator


def _with_slice_passes(schedule: Schedule, passes: int | None, *, encoder_loaded: bool) -> Schedule:
    """The schedule with stage 0b's passes set: `passes` if given, else none for a loaded
    encoder (it is kept as trained) and the preset's otherwise."""
    if passes is None:
        return replace(schedule, slice_findings=None) if encoder_loaded else schedule
    if passes < 0:
        raise ValueError(f"--slice-passes must be 0 or more, not {passes}")
    if schedule.slice_findings is None:
        if passes:
            raise ValueError("--slice-passes: this preset has no stage 0b")
        return schedule
    return replace(
        schedule, slice_findings=replace(schedule.slice_findings, epochs=passes) if passes else None
    )


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"MSVLM_TRAIN_{name}", default)


def _env_number(name: str, kind: Callable[[str], float]) -> float | None:
    """An optional numeric option's environment mirror: None when unset, 0 when set empty."""
    value = _env(name)
    return None if value is None else kind(value or "0")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESET_NAMES, default=_env("PRESET", "demo"))
    parser.add_argument(
        "--data",
        type=Path,
        default=_env("DATA"),
        required=_env("DATA") is None,
        help="dataset folder with dataset.jsonl (written first with --make-phantoms)",
    )
    parser.add_argument("--out", type=Path, default=_env("OUT"), required=_env("OUT") is None)
    parser.add_argument("--seed", type=int, default=int(_env("SEED", "0") or 0))
    parser.add_argument(
        "--baseline",
        action="store_true",
        default=_env("BASELINE", "") in ("1", "true"),
        help="train the 3D-patch baseline instead of MS-VLM",
    )
    parser.add_argument(
        "--make-phantoms",
        type=int,
        default=int(_env("MAKE_PHANTOMS", "0") or 0),
        metavar="N",
        help="first write N phantom studies into --data",
    )
    parser.add_argument(
        "--phantom-seed",
        type=int,
        default=_env_number("PHANTOM_SEED", int),
        help="seed of the phantom studies (default: --seed)",
    )
    parser.add_argument(
        "--align-epochs",
        type=int,
        default=_env_number("ALIGN_EPOCHS", int),
        help="override the preset's stage 2 epochs",
    )
    parser.add_argument(
        "--tune-epochs",
        type=int,
        default=_env_number("TUNE_EPOCHS", int),
        help="override the preset's stage 3 epochs",
    )
    add_phantom_arguments(parser, _env)
    parser.add_argument(
        "--encoder-from",
        type=Path,
        default=_env("ENCODER_FROM"),
        metavar="MODEL_DIR",
        help="start from the slice encoder of this saved MS-VLM and train stages 1-3 only",
    )
    parser.add_argument(
        "--slice-passes",
        type=int,
        default=_env_number("SLICE_PASSES", int),
        metavar="N",
        help="stage 0b passes (default: the preset's; with --encoder-from none, N continues it)",
    )
    parser.add_argument(
        "--slice-place-weight",
        type=float,
        default=_env_number("SLICE_PLACE_WEIGHT", float),
        metavar="W",
        help="stage 0b: weight of the loss on where in the slice a located finding lies",
    )
    parser.add_argument(
        "--slice-token-weight",
        type=float,
        default=_env_number("SLICE_TOKEN_WEIGHT", float),
        metavar="W",
        help="stage 0b: weight of the loss on which patch token shows a located finding",
    )
    parser.add_argument(
        "--slice-pooling",
        choices=SLICE_POOLINGS,
        default=_env("SLICE_POOLING"),
        help="a slice's embedding: its CLS token, or that plus its patch tokens' maximum "
        "(default: the preset's)",
    )
    parser.add_argument(
        "--device",
        default=_env("DEVICE", "auto"),
        help=f"{DEVICE_CHOICES} (default auto: CUDA when available, else CPU)",
    )
    args = parser.parse_args(argv)
    schedule = schedule_for(args.preset, baseline=args.baseline)
    if args.slice_place_weight is not None:
        schedule = replace(schedule, slice_place_weight=args.slice_place_weight)
    if args.slice_token_weight is not None:
        schedule = replace(schedule, slice_token_weight=args.slice_token_weight)
    if args.align_epochs is not None:
        schedule = replace(schedule, align=replace(schedule.align, epochs=args.align_epochs))
    if args.tune_epochs is not None:
        schedule = replace(schedule, tune=replace(schedule.tune, epochs=args.tune_epochs))
    try:
        train(
            preset=args.preset,
            data=args.data,
            out=args.out,
            seed=args.seed,
            baseline=args.baseline,
            make=args.make_phantoms,
            phantom_seed=args.phantom_seed,
            matrix=args.matrix,
            slices=args.slices,
            position_jitter_mm=args.position_jitter,
            schedule=schedule,
            device=args.device,
            encoder_from=args.encoder_from,
            slice_passes=args.slice_passes,
            slice_pooling=args.slice_pooling,
        )
    except (DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
