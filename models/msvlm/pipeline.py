"""One call per study for the node's worker: views in, report text and finding probabilities out.

The worker loads a `ReportGenerator` once and keeps it resident (the design's warm GPU
model). Device and dtype are decided in one place, `Placement`: CPU runs float32 without
autocast; CUDA runs bf16 autocast (fp16 where bf16 is unsupported) over float32 weights, or
over bf16 weights when asked (`weight_dtype`, for LMs too large for float32). Generation
runs under `torch.inference_mode`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel

from .processing_msvlm import MsVlmProcessor, ViewInput
from .report_model import ReportModelBase

#: Packages whose import registers a model type with AutoModel (the baseline lives apart).
MODEL_PACKAGES: dict[str, str] = {"msvlm": "models.msvlm", "msvlm_baseline3d": "models.baseline3d"}


@dataclass(frozen=True)
class ReportOutput:
    """The generated findings text and a probability per configured finding label."""

    text: str
    findings: dict[str, float]


@dataclass(frozen=True)
class Placement:
    """Where the model runs and in which precision."""

    device: torch.device
    weight_dtype: torch.dtype
    autocast_dtype: torch.dtype | None

    @classmethod
    def for_device(cls, device: str | torch.device, *, weight_dtype: torch.dtype | None = None) -> Placement:
        target = torch.device(device)
        if target.type == "cuda":
            half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return cls(device=target, weight_dtype=weight_dtype or torch.float32, autocast_dtype=half)
        if weight_dtype not in (None, torch.float32):
            raise ValueError(f"{target.type} runs in float32, got weight_dtype={weight_dtype}")
        return cls(device=target, weight_dtype=torch.float32, autocast_dtype=None)

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
        weight_dtype: torch.dtype | None = None,
    ) -> ReportGenerator:
        """Load model and processor saved in one folder (see `save_pretrained`)."""
        path = Path(directory)
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type not in MODEL_PACKAGES:
            raise ValueError(
                f"{path} holds model_type {model_type!r}, expected one of {sorted(MODEL_PACKAGES)}"
            )
        importlib.import_module(MODEL_PACKAGES[model_type])
        placement = Placement.for_device(device, weight_dtype=weight_dtype)
        model = AutoModel.from_pretrained(str(path), dtype=placement.weight_dtype)
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
            )
        assert output.sequences is not None and output.findings_logits is not None
        texts = self.processor.decode(output.sequences.cpu())
        probabilities = torch.sigmoid(output.findings_logits.float()).cpu().tolist()
        labels = self.processor.settings.finding_labels
        return [
            ReportOutput(text=text, findings=dict(zip(labels, probs, strict=True)))
            for text, probs in zip(texts, probabilities, strict=True)
        ]

    def generate_report(
        self, views: Sequence[ViewInput], *, max_new_tokens: int = 256, num_beams: int = 1
    ) -> ReportOutput:
        """Report for one study (its views in the order the node grouped them)."""
        return self.generate_reports([views], max_new_tokens=max_new_tokens, num_beams=num_beams)[0]
