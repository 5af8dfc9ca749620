"""One call per study for the node's worker: views in, report text and finding probabilities out.

The worker loads a `ReportGenerator` once and keeps it resident (the design's warm GPU
model). Device and dtype are decided in one place, `Placement`, from a `precision`:

* "float32": float32 weights, no autocast; what CPU always runs, and the GPU reference.
* "mixed": float32 weights under bf16 autocast (fp16 where bf16 is unsupported).
* "bfloat16": bf16 weights under bf16 autocast, and a static KV cache so that transformers
  compiles the decoding step (torch.compile). On an H100 with the full preset this decodes
  4.5-6x faster than "mixed" (338-370 against 62-75 tokens/s, bench/model.py) in about half
  the memory; the price is a one-off compilation (~20 s) that `warm_up` pays at start.

"auto" is "bfloat16" on CUDA with bf16 support, "mixed" on older GPUs, "float32" elsewhere.
(A static cache needs weights in the compute dtype: under autocast over float32 weights,
Llama's rotary step promotes keys to float32 while values stay bf16.)
Generation runs under `torch.inference_mode`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from transformers import AutoModel

from .laterality import SIDE_NAMES
from .processing_msvlm import MsVlmProcessor, ViewInput
from .report_model import ReportModelBase

log = logging.getLogger(__name__)

#: Packages whose import registers a model type with AutoModel (the baseline lives apart).
MODEL_PACKAGES: dict[str, str] = {"msvlm": "models.msvlm", "msvlm_baseline3d": "models.baseline3d"}


@dataclass(frozen=True)
class ReportOutput:
    """The generated text and, per finding that applies to the study, the head's probability
    and call.

    `present` is the call at the model's `findings_threshold`, the same one its narrative was
    generated from, so the SR's coded findings and its text say the same. Findings the model
    was not trained to assess in the study's modalities (`finding_modalities`) are left out.

    `sites` gives, for each finding called present that has sites (`finding_sites`), the site
    head's call and its probability: the site the finding token told the narrative. Empty for
    a model without a site head.

    `image_sides` gives, for each of those findings whose side was read from the images (the
    token that shows it and the views' orientation, `laterality`), that side ("right", "left"
    or "both"); its site in `sites` lies on it.

    `key_slices` gives, for each finding called present whose token shows it on some slice
    (`MsVlmForReportGeneration.key_slices`), the (view, slice) that shows it best: the index of
    the view in the study as given and of the slice in that view's pixels.

    `key_regions` gives, for those findings, where on that slice: the square of the patch token
    that shows it, in the slice's pixels (`MsVlmProcessor.token_region`: left, top, right,
    bottom), left out where that square lies in the padding around a non-square slice.
    """

    text: str
    findings: dict[str, float]
    present: dict[str, bool]
    sites: dict[str, tuple[str, float]] = field(default_factory=dict)
    image_sides: dict[str, str] = field(default_factory=dict)
    key_slices: dict[str, tuple[int, int]] = field(default_factory=dict)
    key_regions: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


Precision = Literal["auto", "float32", "mixed", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class Placement:
    """Where the model runs and in which precision (see the module docstring)."""

    device: torch.device
    weight_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    #: decode with a fixed-size KV cache (compiled by transformers on CUDA)
    static_cache: bool = False

    @classmethod
    def for_device(cls, device: str | torch.device, *, precision: str = "auto") -> Placement:
        target = torch.device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "float32":
            return cls(device=target, weight_dtype=torch.float32, autocast_dtype=None)
        if target.type != "cuda":
            if precision != "auto":
                raise ValueError(f"{target.type} runs in float32, got precision {precision!r}")
            return cls(device=target, weight_dtype=torch.float32, autocast_dtype=None)
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "bfloat16" and not bf16:
            raise ValueError(f"{torch.cuda.get_device_name(target)} does not support bfloat16")
        if precision == "mixed" or not bf16:
            half = torch.bfloat16 if bf16 else torch.float16
            return cls(device=target, weight_dtype=torch.float32, autocast_dtype=half)
        return cls(
            device=target, weight_dtype=torch.bfloat16, autocast_dtype=torch.bfloat16, static_cache=True
        )

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


class ReportGenerator:
    """A model and its processor, resident on one device, in eval mode."""

    def __init__(self, *, model: ReportModelBase, processor: MsVlmProcessor, placement: Placement) -> None:
        self.placement = placement
        # (the ignore: transformers' decorated `to` confuses mypy's view of the signature)
        self.model = model.to(device=placement.device, dtype=placement.weight_dtype).eval()  # type: ignore[call-arg]
        self.model.requires_grad_(False)
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        precision: str = "auto",
    ) -> ReportGenerator:
        """Load model and processor saved in one folder (see `save_pretrained`)."""
        path = Path(directory)
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type not in MODEL_PACKAGES:
            raise ValueError(
                f"{path} holds model_type {model_type!r}, expected one of {sorted(MODEL_PACKAGES)}"
            )
        importlib.import_module(MODEL_PACKAGES[model_type])
        placement = Placement.for_device(device, precision=precision)
        model, info = AutoModel.from_pretrained(
            str(path), dtype=placement.weight_dtype, output_loading_info=True
        )
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            # transformers would fill them with random values: a report from those is noise
            raise ValueError(
                f"{path}: its weights lack {len(missing)} parameter(s) that its config.json needs "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); train or export "
                "them, or remove what needs them from config.json (e.g. token_side_findings needs a "
                "trained token_head)"
            )
        if not isinstance(model, ReportModelBase):
            raise TypeError(f"{path} did not load a report model but {type(model).__name__}")
        return cls(model=model, processor=MsVlmProcessor.from_pretrained(path), placement=placement)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(str(directory))
        self.processor.save_pretrained(directory)

    def generate_reports(
        self, studies: Sequence[Sequence[ViewInput]], *, max_new_tokens: int = 256, num_beams: int = 1
    ) -> list[ReportOutput]:
        batch = self.processor(studies).to(self.placement.device)
        with torch.inference_mode(), self.placement.autocast():
            output = self.model.generate(
                pixel_values=batch.pixel_values,
                slice_mask=batch.slice_mask,
                view_ids=batch.view_ids,
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                static_cache=self.placement.static_cache,
                orientations=batch.orientations,
            )
        assert output.sequences is not None and output.findings_logits is not None
        texts = self.processor.decode(output.sequences.cpu())
        probabilities = torch.sigmoid(output.findings_logits.float()).cpu().tolist()
        calls = self.model.findings_present(output.findings_logits).cpu().tolist()
        labels = self.processor.settings.finding_labels
        site_calls = site_probabilities = None
        if output.site_logits is not None and self.model.site_head is not None:
            # the same call the finding token was made from, so the SR codes the narrative's site
            site_calls = self.model.site_head.calls(output.site_logits).cpu().tolist()
            site_probabilities = torch.softmax(output.site_logits.float(), dim=-1).cpu()
        read_sides = None if output.finding_sides is None else output.finding_sides.cpu().tolist()
        key_slices = None if output.key_slices is None else output.key_slices.cpu().tolist()
        # the token grid of a model with a token head (the only kind that gives key slices)
        grid = 0 if key_slices is None else self.model.config.image_size // self.model.config.patch_size
        outputs = []
        for b, (study, text, probs, called) in enumerate(
            zip(studies, texts, probabilities, calls, strict=True)
        ):
            applies = set(self.model.config.findings_for(view.modality for view in study))
            present = {k: c for k, c in zip(labels, called, strict=True) if k in applies}
            sites = {}
            image_sides = {}
            if site_calls is not None and site_probabilities is not None:
                for j, key in enumerate(labels):
                    call = site_calls[b][j]
                    if call >= 0 and present.get(key):
                        sites[key] = (
                            self.model.config.sites_of(key)[call],
                            float(site_probabilities[b, j, call]),
                        )
                        if read_sides is not None and read_sides[b][j] >= 0:
                            image_sides[key] = SIDE_NAMES[read_sides[b][j]]
            shown = {}
            regions = {}
            for j, key in enumerate(labels):
                view, index, token = key_slices[b][j] if key_slices is not None else (-1, -1, -1)
                if view >= 0 and present.get(key):
                    n, rows, columns = study[view].pixels.shape
                    shown[key] = (view, self.processor.source_slice(n, index))
                    region = self.processor.token_region(rows, columns, token, grid)
                    if region[2] > region[0] and region[3] > region[1]:
                        regions[key] = region
            outputs.append(
                ReportOutput(
                    text=text,
                    findings={k: p for k, p in zip(labels, probs, strict=True) if k in applies},
                    present=present,
                    sites=sites,
                    image_sides=image_sides,
                    key_slices=shown,
                    key_regions=regions,
                )
            )
        return outputs

    def generate_report(
        self, views: Sequence[ViewInput], *, max_new_tokens: int = 256, num_beams: int = 1
    ) -> ReportOutput:
        """Report for one study (its views in the order the node grouped them)."""
        return self.generate_reports([views], max_new_tokens=max_new_tokens, num_beams=num_beams)[0]

    def warm_up(self, *, max_new_tokens: int = 256, num_beams: int = 1) -> None:
        """Run one small synthetic study so the first real one does not pay for compilation.

        Only a static cache compiles (once per cache size, which depends on `max_new_tokens`
        and `num_beams` alone, so pass the worker's values); elsewhere this does nothing.
        If compilation fails (Triton needs a C compiler at run time, which slim images lack),
        the generator falls back to eager decoding with a dynamic cache, logs why, and keeps
        serving: slower, never down.
        """
        if not self.placement.static_cache:
            return
        settings = self.processor.settings
        key = settings.view_vocabulary[0] if settings.view_vocabulary else "CT:axial:non_contrast"
        modality: Literal["CT", "MR"] = "MR" if key.startswith("MR") else "CT"
        size = settings.image_size
        view = ViewInput(pixels=np.zeros((2, size, size), dtype=np.float32), modality=modality, view_key=key)
        try:
            self.generate_report([view], max_new_tokens=max_new_tokens, num_beams=num_beams)
        except Exception as exc:  # torch.compile raises many kinds; any of them means: don't compile
            log.warning(
                "model.compile_failed",
                extra={"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"},
            )
            self.placement = replace(self.placement, static_cache=False)
            self.generate_report([view], max_new_tokens=max_new_tokens, num_beams=num_beams)
