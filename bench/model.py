"""Benchmark: MS-VLM speed and memory per study, in the product's precision and a reference.

Builds a preset with random weights directly on the device (nothing is downloaded or
loaded), then for each study size runs the model the way the worker does and prints:

* slice encoder throughput (slices/s) and its peak device memory,
* Z-former time over all slices of all views,
* generation throughput (new tokens/s; the length is forced to `--new-tokens` so random
  weights cannot stop early) and its peak device memory,
* whole-study latency (encode + Z-former + bridge + decode).

Side by side in the same run, for every study size, the worker's precisions
(`models.msvlm.pipeline`; the node's `[model] precision`):

* `bfloat16`: the default on CUDA: bf16 weights, static KV cache, compiled decoding,
* `mixed`: float32 weights under bf16 autocast, dynamic KV cache,
* `float32`: float32 without autocast, the reference,
* `unchunked`: `bfloat16` with the whole study encoded in one ViT batch, the reference
  for what `slice_chunk_size` saves in memory.

With `--sides`, each mode also runs as "MODE+sides": the model keeps a token head that reads
the nodule's and the effusion's side (`MsVlmConfig.token_side_findings`, `laterality`), and
each view comes with an axial orientation, so the encoder also scores every patch token, finds
each slice's body centre and each half's best token, and generation constrains the sites:
what reading sides costs.

"first s" is the warm-up study, which pays for compilation: the worker runs it at start.

Study sizes are "SLICES" (one view) or "SLICESxVIEWS" (that many views of SLICES each, one
Z-former sequence of SLICES*VIEWS tokens). It prints numbers; it asserts nothing.

    python bench/model.py --preset full --device cuda --studies 240 250x4 --json out.json
    python bench/model.py --preset demo --device cpu --modes float32 --sides --studies 64 32x4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.msvlm import MsVlmForReportGeneration  # noqa: E402
from models.msvlm.pipeline import Placement  # noqa: E402
from models.msvlm.presets import PRESET_NAMES, msvlm_preset  # noqa: E402

MODES = ("bfloat16", "mixed", "float32", "unchunked")
PROMPT_TOKENS = 16


@dataclass(frozen=True)
class StudySize:
    slices_per_view: int
    views: int

    @property
    def slices(self) -> int:
        return self.slices_per_view * self.views

    @classmethod
    def parse(cls, text: str) -> StudySize:
        per_view, _, views = text.partition("x")
        return cls(int(per_view), int(views or 1))

    def label(self) -> str:
        return f"{self.slices} ({self.views}x{self.slices_per_view})" if self.views > 1 else str(self.slices)


@dataclass
class Result:
    mode: str
    study: str
    slices: int
    encoder_s: float
    encoder_slices_per_s: float
    encoder_peak_mib: float | None
    zformer_s: float
    generate_s: float
    new_tokens: int
    tokens_per_s: float
    generate_peak_mib: float | None
    study_s: float
    study_peak_mib: float | None
    #: the warm-up study: what the worker's first study after start pays (compilation included)
    first_study_s: float


class Clock:
    """Wall time and peak device memory of a block, synchronising CUDA around it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def measure(self, into: dict[str, float | None]) -> Iterator[None]:
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        self._sync()
        into["seconds"] = time.perf_counter() - start
        into["peak_mib"] = (
            torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        )


LOBES = ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe"]


def build_model(
    preset: str, device: torch.device, weight_dtype: torch.dtype, *, sides: bool = False
) -> MsVlmForReportGeneration:
    """Random weights, created on the device (a 1B LM initialised on CPU takes minutes); with
    `sides`, a site head and the token head that reads the nodule's and the effusion's side."""
    torch.manual_seed(0)
    config = msvlm_preset(preset)
    if sides:
        config.findings_pooling = "per_finding"
        config.finding_sites = {"lung_nodule": LOBES, "pleural_effusion": ["right", "left", "bilateral"]}
        config.token_side_findings = ["lung_nodule", "pleural_effusion"]
    with torch.device(device):
        model = MsVlmForReportGeneration(config)
    model = model.to(dtype=weight_dtype).eval()  # type: ignore[call-arg]
    model.requires_grad_(False)
    # Random weights may emit EOS at any step; force the length so tokens/s counts them all.
    base = model.generation_config_for

    def forced_length(*, max_new_tokens: int, num_beams: int, static_cache: bool = False) -> GenerationConfig:
        config = base(max_new_tokens=max_new_tokens, num_beams=num_beams, static_cache=static_cache)
        config.min_new_tokens = max_new_tokens
        return config

    model.generation_config_for = forced_length  # type: ignore[method-assign]
    return model


def study_inputs(
    model: MsVlmForReportGeneration, size: StudySize, device: torch.device
) -> dict[str, torch.Tensor]:
    config = model.config
    generator = torch.Generator(device="cpu").manual_seed(size.slices)
    pixels = torch.randn(
        (1, size.views, size.slices_per_view, 3, config.image_size, config.image_size), generator=generator
    )
    vocab = config.text.vocab_size
    return {
        "pixel_values": pixels.to(device),
        "slice_mask": torch.ones((1, size.views, size.slices_per_view), dtype=torch.bool, device=device),
        "view_ids": torch.arange(1, size.views + 1, device=device).unsqueeze(0),
        "input_ids": torch.randint(3, vocab, (1, PROMPT_TOKENS), generator=generator).to(device),
        "attention_mask": torch.ones((1, PROMPT_TOKENS), dtype=torch.long, device=device),
        # every view axial (ImageOrientationPatient); only read by a model with a token head
        "orientations": torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]] * size.views, device=device)[None],
    }


def run_once(
    model: MsVlmForReportGeneration,
    inputs: dict[str, torch.Tensor],
    placement: Placement,
    clock: Clock,
    new_tokens: int,
) -> dict[str, Any]:
    """One study through the worker's path, each stage timed on its own."""
    enc: dict[str, float | None] = {}
    zf: dict[str, float | None] = {}
    gen: dict[str, float | None] = {}
    with torch.inference_mode(), placement.autocast():
        with clock.measure(enc):
            features, halves, best = model.encode_views_with_tokens(
                inputs["pixel_values"], inputs["slice_mask"]
            )
        with clock.measure(zf):
            encoding = model.encode_study(
                slice_features=features, slice_mask=inputs["slice_mask"], view_ids=inputs["view_ids"]
            )
        encoding = replace(encoding, token_halves=halves, best_tokens=best)
        with clock.measure(gen):
            output = model.generate_from_encoding(
                encoding,
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                max_new_tokens=new_tokens,
                static_cache=placement.static_cache,
                orientations=inputs["orientations"],
            )
    assert output.sequences is not None
    return {"enc": enc, "zf": zf, "gen": gen, "tokens": int(output.sequences.shape[1])}


def measure_study(
    model: MsVlmForReportGeneration,
    mode: str,
    size: StudySize,
    placement: Placement,
    clock: Clock,
    *,
    repeats: int,
    new_tokens: int,
) -> Result:
    inputs = study_inputs(model, size, placement.device)
    started = time.perf_counter()
    run_once(model, inputs, placement, clock, new_tokens)  # warm-up: kernels, allocator, compilation
    first_s = time.perf_counter() - started
    runs = [run_once(model, inputs, placement, clock, new_tokens) for _ in range(repeats)]
    # A whole study in one block, for its true peak (the stages above reset it in between).
    whole: dict[str, float | None] = {}
    with clock.measure(whole), torch.inference_mode(), placement.autocast():
        model.generate(
            pixel_values=inputs["pixel_values"],
            slice_mask=inputs["slice_mask"],
            view_ids=inputs["view_ids"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=new_tokens,
            static_cache=placement.static_cache,
            orientations=inputs["orientations"],
        )

    def median(stage: str) -> float:
        return statistics.median(float(run[stage]["seconds"]) for run in runs)

    encoder_s, zformer_s, generate_s = median("enc"), median("zf"), median("gen")
    tokens = runs[-1]["tokens"]
    return Result(
        mode=mode,
        study=size.label(),
        slices=size.slices,
        encoder_s=encoder_s,
        encoder_slices_per_s=size.slices / encoder_s,
        encoder_peak_mib=runs[-1]["enc"]["peak_mib"],
        zformer_s=zformer_s,
        generate_s=generate_s,
        new_tokens=tokens,
        tokens_per_s=tokens / generate_s,
        generate_peak_mib=runs[-1]["gen"]["peak_mib"],
        study_s=float(whole["seconds"] or 0.0),
        study_peak_mib=whole["peak_mib"],
        first_study_s=first_s,
    )


def placement_for(mode: str, device: torch.device) -> Placement:
    return Placement.for_device(device, precision="bfloat16" if mode == "unchunked" else mode)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[Result]) -> None:
    header = (
        f"{'mode':<14} {'study':>13} {'enc slices/s':>13} {'enc peak MiB':>13} {'zformer s':>10} "
        f"{'gen tok/s':>10} {'gen peak MiB':>13} {'study s':>8} {'study peak MiB':>15}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.mode:<14} {r.study:>13} {r.encoder_slices_per_s:>13.1f} "
            f"{_fmt(r.encoder_peak_mib, '.0f'):>13} "
            f"{r.zformer_s:>10.4f} {r.tokens_per_s:>10.1f} {_fmt(r.generate_peak_mib, '.0f'):>13} "
            f"{r.study_s:>8.3f} {_fmt(r.study_peak_mib, '.0f'):>15} {r.first_study_s:>8.2f}"
        )


def describe(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    import transformers

    info["transformers"] = transformers.__version__
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESET_NAMES, default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--studies", nargs="+", type=StudySize.parse, default=[StudySize(240, 1), StudySize(250, 4)]
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--sides", action="store_true", help="also run each mode reading sides (MODE+sides)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    clock = Clock(device)
    info = describe(device)
    print(json.dumps(info))
    modes = list(args.modes)
    if device.type != "cuda":
        modes = ["float32"]  # Placement runs nothing else off CUDA
    results: list[Result] = []
    models: dict[tuple[torch.dtype, bool], MsVlmForReportGeneration] = {}

    def model_for(placement: Placement, sides: bool) -> MsVlmForReportGeneration:
        # One model per weight dtype and head; free the other first so both never sit on the device.
        key = (placement.weight_dtype, sides)
        if key not in models:
            models.clear()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            models[key] = build_model(args.preset, device, placement.weight_dtype, sides=sides)
        return models[key]

    arms = [(mode, False) for mode in modes] + ([(mode, True) for mode in modes] if args.sides else [])
    # arms with the same weight dtype and head run one after another, so each model is built once
    for mode, sides in sorted(
        arms, key=lambda arm: (placement_for(arm[0], device).weight_dtype == torch.bfloat16, arm[1])
    ):
        placement = placement_for(mode, device)
        model = model_for(placement, sides)
        chunk = model.config.slice_chunk_size
        for size in args.studies:
            if mode == "unchunked":
                model.config.slice_chunk_size = size.slices
            try:
                name = f"{mode}+sides" if sides else mode
                results.append(
                    measure_study(
                        model, name, size, placement, clock, repeats=args.repeats, new_tokens=args.new_tokens
                    )
                )
            finally:
                model.config.slice_chunk_size = chunk
            print(f"done: {mode}{'+sides' if sides else ''} {size.label()}", file=sys.stderr, flush=True)
    parameters = {
        name: sum(p.numel() for p in getattr(next(iter(models.values())), name).parameters())
        for name in ("vision_model", "zformer", "bridge", "language_model")
    }
    print(json.dumps({"parameters": parameters, "chunk": msvlm_preset(args.preset).slice_chunk_size}))
    print_table(results)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {peak_rss_mib:.0f} MiB")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"info": info, "parameters": parameters, "results": [asdict(r) for r in results]}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
