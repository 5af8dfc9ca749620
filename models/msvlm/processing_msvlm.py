"""Turns studies (lists of `ViewInput`) and report texts into model-ready padded tensors.

The processor owns everything that depends on pixels or words and not on weights: CT
windowing into 3 channels, square padding and resizing to `image_size`, z-resampling of
views with too many slices (or, for the 3D baseline, to a fixed depth), view key -> id, the
prompt, tokenisation, and padding with masks. It saves its settings next to the tokenizer
so a model folder carries everything needed to run it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from .configuration_msvlm import ReportModelConfig
from .report_model import IGNORE_INDEX

PROCESSOR_FILE = "msvlm_processor.json"
MODALITIES = ("CT", "MR")


class LoadedVolume(Protocol):
    """What `ViewInput.from_volume` reads of a loaded view (`node.volume.Volume` has it)."""

    @property
    def pixels(self) -> np.ndarray: ...
    @property
    def modality(self) -> str: ...
    @property
    def view_key(self) -> str: ...
    @property
    def orientation(self) -> tuple[float, ...]: ...


@dataclass(frozen=True, eq=False)
class ViewInput:
    """One view of a study: a z-sorted slice stack, its modality and its view key.

    pixels: (n, h, w) float32, Hounsfield units for CT, ~0..1 normalised for MR.
    view_key: "MODALITY:plane:phase", e.g. "CT:axial:arterial"; unknown keys are allowed.
    orientation: its ImageOrientationPatient (row, then column direction cosines), which says
        where the patient's left is in the pixels; None where unknown (no side is read from it).
    """

    pixels: np.ndarray
    modality: Literal["CT", "MR"]
    view_key: str
    orientation: tuple[float, ...] | None = None

    @classmethod
    def from_volume(cls, volume: LoadedVolume) -> ViewInput:
        """The view as the node's volume loader gives it (`node.volume.Volume`)."""
        return cls(
            pixels=volume.pixels,
            modality=volume.modality,  # type: ignore[arg-type]  # checked in __post_init__
            view_key=volume.view_key,
            orientation=volume.orientation,
        )

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if not isinstance(self.pixels, np.ndarray) or self.pixels.ndim != 3 or 0 in self.pixels.shape:
            raise ValueError("pixels must be a non-empty (slices, height, width) array")
        if not np.issubdtype(self.pixels.dtype, np.floating):
            raise ValueError(f"pixels must be floating point, got {self.pixels.dtype}")
        if not self.view_key.strip():
            raise ValueError("view_key must not be empty")
        if self.orientation is not None and (
            len(self.orientation) != 6 or not all(math.isfinite(float(c)) for c in self.orientation)
        ):
            raise ValueError(f"orientation must be 6 finite direction cosines, got {self.orientation!r}")


@dataclass(frozen=True)
class ProcessorSettings:
    """Everything the processor needs from the model config, saved with the tokenizer."""

    image_size: int
    max_slices_per_view: int
    fixed_slices_per_view: int | None
    ct_windows: tuple[tuple[float, float], ...]
    view_vocabulary: tuple[str, ...]
    finding_labels: tuple[str, ...]
    prompt_template: str
    max_text_tokens: int
    pixel_mean: float = 0.5
    pixel_std: float = 0.5

    @classmethod
    def from_model_config(cls, config: ReportModelConfig) -> ProcessorSettings:
        assert config.ct_windows is not None and config.view_vocabulary is not None
        assert config.finding_labels is not None
        return cls(
            image_size=config.image_size,
            max_slices_per_view=config.max_slices_per_view,
            fixed_slices_per_view=config.fixed_slices_per_view,
            ct_windows=tuple((float(w), float(level)) for w, level in config.ct_windows),
            view_vocabulary=tuple(config.view_vocabulary),
            finding_labels=tuple(config.finding_labels),
            prompt_template=config.prompt_template,
            max_text_tokens=config.max_text_tokens,
        )

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ProcessorSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown processor settings: {sorted(unknown)}")
        values = dict(data)
        values["ct_windows"] = tuple((float(w), float(level)) for w, level in data["ct_windows"])
        values["view_vocabulary"] = tuple(data["view_vocabulary"])
        values["finding_labels"] = tuple(data["finding_labels"])
        return cls(**values)


@dataclass(frozen=True)
class MsVlmBatch:
    """A padded batch of studies (B studies, V views, Z slices, T text tokens, F findings).

    pixel_values (B, V, Z, 3, S, S) float32; slice_mask (B, V, Z) bool; view_ids (B, V) long
    (0 = other or padding); input_ids / attention_mask (B, T), left-padded for generation and
    right-padded for training; labels (B, T) with -100 outside the report; findings_labels
    (B, F) with 1/0 and -1 for "not annotated"; orientations (B, V, 6) each view's
    ImageOrientationPatient, zeros where unknown or padding.
    """

    pixel_values: torch.Tensor
    slice_mask: torch.Tensor
    view_ids: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    findings_labels: torch.Tensor | None = None
    orientations: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> MsVlmBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return MsVlmBatch(
            pixel_values=self.pixel_values.to(device, non_blocking=True),
            slice_mask=self.slice_mask.to(device, non_blocking=True),
            view_ids=self.view_ids.to(device, non_blocking=True),
            input_ids=self.input_ids.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
            labels=move(self.labels),
            findings_labels=move(self.findings_labels),
            orientations=move(self.orientations),
        )


def resample_slices(volume: torch.Tensor, target: int) -> torch.Tensor:
    """Linear interpolation along z of an (n, h, w) stack to `target` slices (ends kept)."""
    n, h, w = volume.shape
    if n == target:
        return volume
    if n == 1:
        return volume.expand(target, h, w).clone()
    columns = volume.reshape(n, h * w).T.unsqueeze(0)  # (1, h*w, n)
    resampled = F.interpolate(columns, size=target, mode="linear", align_corners=True)
    return resampled[0].T.reshape(target, h, w).contiguous()


def window_ct(hu: torch.Tensor, windows: Sequence[tuple[float, float]]) -> torch.Tensor:
    """(n, h, w) HU -> (n, len(windows), h, w) in 0..1, one channel per (width, level) window."""
    channels = [((hu - (level - width / 2.0)) / width).clamp(0.0, 1.0) for width, level in windows]
    return torch.stack(channels, dim=1)


class MsVlmProcessor:
    """Pixels + text -> `MsVlmBatch`; generated ids -> text. Wraps a fast tokenizer."""

    def __init__(self, *, tokenizer: PreTrainedTokenizerFast, settings: ProcessorSettings) -> None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, name) is None:
                raise ValueError(f"the tokenizer needs a {name.removesuffix('_id')}")
        self.tokenizer = tokenizer
        self.settings = settings
        self._view_ids = {key.strip().casefold(): i + 1 for i, key in enumerate(settings.view_vocabulary)}

    @classmethod
    def from_model_config(
        cls, config: ReportModelConfig, tokenizer: PreTrainedTokenizerFast
    ) -> MsVlmProcessor:
        """Processor matching `config`; refuses a tokenizer whose special ids differ from it."""
        text = config.text
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, name) != getattr(text, name):
                raise ValueError(f"tokenizer {name} differs from text_config.{name}")
        if len(tokenizer) > text.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the LM only {text.vocab_size}")
        return cls(tokenizer=tokenizer, settings=ProcessorSettings.from_model_config(config))

    # --- pixels ----------------------------------------------------------------------------

    def view_id(self, view_key: str) -> int:
        """Id of a view key in the vocabulary (case-insensitive), 0 for unknown keys."""
        return self._view_ids.get(view_key.strip().casefold(), 0)

    def target_slices(self, num_slices: int) -> int:
        s = self.settings
        if s.fixed_slices_per_view is not None:
            return s.fixed_slices_per_view
        return min(num_slices, s.max_slices_per_view)

    def source_slice(self, num_slices: int, index: int) -> int:
        """The slice of an n-slice view nearest to slice `index` of what `preprocess_view`
        made of it (`resample_slices` keeps both ends and spaces the rest evenly)."""
        target = self.target_slices(num_slices)
        if not 0 <= index < target:
            raise ValueError(
                f"slice {index} is not one of the {target} slices a {num_slices}-slice view becomes"
            )
        if target == num_slices:
            return index
        if target == 1:
            return 0
        return round(index * (num_slices - 1) / (target - 1))

    def token_region(
        self, rows: int, columns: int, token: int, grid: int
    ) -> tuple[float, float, float, float]:
        """Where patch token `token` (row by row in a `grid` x `grid` ViT grid) lies in a
        `rows` x `columns` source slice: (left, top, right, bottom) in its pixels, 0, 0 the top
        left corner of its first pixel (as a DICOM SCOORD counts), clipped to the image.

        The inverse of `preprocess_view`'s centred padding to a square and resizing, which maps
        the square's edges onto the model's (interpolation without aligned corners), so a
        token's square is exact in the source's pixels. Why: the key image's region
        (`MsVlmForReportGeneration.key_slices`) must fall where the model read the finding.
        """
        if not 0 <= token < grid * grid:
            raise ValueError(f"token {token} is not one of a {grid} x {grid} grid's")
        side = max(rows, columns)
        top, left = (side - rows) // 2, (side - columns) // 2
        row, column = divmod(token, grid)
        step = side / grid

        def clip(value: float, high: int) -> float:
            return min(max(value, 0.0), float(high))

        return (
            clip(column * step - left, columns),
            clip(row * step - top, rows),
            clip((column + 1) * step - left, columns),
            clip((row + 1) * step - top, rows),
        )

    def preprocess_view(self, view: ViewInput) -> torch.Tensor:
        """One view -> (n', 3, S, S) float32 normalised pixels, n' = `target_slices(n)`."""
        pixels = torch.from_numpy(np.ascontiguousarray(view.pixels, dtype=np.float32))
        if not bool(torch.isfinite(pixels).all()):
            raise ValueError(f"view {view.view_key!r} has non-finite pixels")
        n, h, w = pixels.shape
        side = max(h, w)
        if h != w:  # pad to square with the darkest value (air) so anatomy keeps its aspect
            top, left = (side - h) // 2, (side - w) // 2
            pixels = F.pad(pixels, (left, side - w - left, top, side - h - top), value=float(pixels.min()))
        size = self.settings.image_size
        if side != size:
            pixels = F.interpolate(
                pixels.unsqueeze(1),
                size=(size, size),
                mode="bilinear",
                antialias=side > size,
                align_corners=False,
            ).squeeze(1)
        pixels = resample_slices(pixels, self.target_slices(n))
        if view.modality == "CT":
            channels = window_ct(pixels, self.settings.ct_windows)
        else:
            channels = pixels.unsqueeze(1).expand(-1, 3, -1, -1)
        return ((channels - self.settings.pixel_mean) / self.settings.pixel_std).contiguous()

    # --- text ------------------------------------------------------------------------------

    def prompt(self, views: Sequence[ViewInput]) -> str:
        """The prompt after the visual tokens: modality and the view keys, in study order."""
        modalities = list(dict.fromkeys(v.modality for v in views))
        return self.settings.prompt_template.format(
            modality=" and ".join(modalities), views=" , ".join(v.view_key for v in views)
        )

    def prompt_corpus(self) -> list[str]:
        """Texts with every word a prompt can contain, to add to a tokenizer's training corpus."""
        fmt = self.settings.prompt_template.format
        texts = [fmt(modality=" and ".join(MODALITIES), views=" , ".join(self.settings.view_vocabulary))]
        return texts + [fmt(modality=m, views=m) for m in MODALITIES]

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _text_rows(
        self, studies: Sequence[Sequence[ViewInput]], reports: Sequence[str] | None
    ) -> tuple[list[list[int]], list[list[int]]]:
        ids_rows, label_rows = [], []
        limit = self.settings.max_text_tokens
        for i, study in enumerate(studies):
            prompt_ids = [self.tokenizer.bos_token_id, *self._tokens(self.prompt(study))]
            if len(prompt_ids) >= limit:
                raise ValueError(
                    f"prompt of study {i} has {len(prompt_ids)} tokens, max_text_tokens is {limit}"
                )
            report_ids: list[int] = []
            if reports is not None:
                report_ids = self._tokens(reports[i])[: limit - len(prompt_ids) - 1] + [
                    self.tokenizer.eos_token_id
                ]
            ids_rows.append(prompt_ids + report_ids)
            label_rows.append([IGNORE_INDEX] * len(prompt_ids) + report_ids)
        return ids_rows, label_rows

    def _findings_tensor(self, findings: Sequence[Mapping[str, float | bool]]) -> torch.Tensor:
        labels = self.settings.finding_labels
        out = torch.full((len(findings), len(labels)), -1.0)
        for i, study_findings in enumerate(findings):
            unknown = set(study_findings) - set(labels)
            if unknown:
                raise ValueError(f"unknown finding labels: {sorted(unknown)}")
            for key, value in study_findings.items():
                out[i, labels.index(key)] = float(value)
        return out

    # --- batching --------------------------------------------------------------------------

    def __call__(
        self,
        studies: Sequence[Sequence[ViewInput]],
        *,
        reports: Sequence[str] | None = None,
        findings: Sequence[Mapping[str, float | bool]] | None = None,
    ) -> MsVlmBatch:
        """Batch studies; with `reports` for training (right-padded, labels), else for generation.

        `findings` maps finding label -> 1/0 (or probability) per study; missing labels are -1.
        """
        if not studies or any(len(study) == 0 for study in studies):
            raise ValueError("every study needs at least one view")
        for name, values in (("reports", reports), ("findings", findings)):
            if values is not None and len(values) != len(studies):
                raise ValueError(f"{name} must have one entry per study")
        views = [[self.preprocess_view(view) for view in study] for study in studies]
        size = self.settings.image_size
        num_views = max(len(study) for study in views)
        depth = max(v.shape[0] for study in views for v in study)
        pixel_values = torch.zeros((len(studies), num_views, depth, 3, size, size))
        slice_mask = torch.zeros((len(studies), num_views, depth), dtype=torch.bool)
        view_ids = torch.zeros((len(studies), num_views), dtype=torch.long)
        orientations = torch.zeros((len(studies), num_views, 6))
        for b, (study, processed) in enumerate(zip(studies, views, strict=True)):
            for v, (view, pixels) in enumerate(zip(study, processed, strict=True)):
                pixel_values[b, v, : pixels.shape[0]] = pixels
                slice_mask[b, v, : pixels.shape[0]] = True
                view_ids[b, v] = self.view_id(view.view_key)
                if view.orientation is not None:
                    orientations[b, v] = torch.tensor([float(c) for c in view.orientation])

        ids_rows, label_rows = self._text_rows(studies, reports)
        width = max(len(row) for row in ids_rows)
        input_ids = torch.full((len(studies), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(studies), width), dtype=torch.long)
        labels = torch.full((len(studies), width), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, row_labels) in enumerate(zip(ids_rows, label_rows, strict=True)):
            # Generation needs the prompt to end at the last column, training does not care.
            span = slice(0, len(ids)) if reports is not None else slice(width - len(ids), width)
            input_ids[b, span] = torch.tensor(ids)
            attention_mask[b, span] = 1
            labels[b, span] = torch.tensor(row_labels)
        return MsVlmBatch(
            pixel_values=pixel_values,
            slice_mask=slice_mask,
            view_ids=view_ids,
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels if reports is not None else None,
            findings_labels=self._findings_tensor(findings) if findings is not None else None,
            orientations=orientations,
        )

    def decode(self, sequences: torch.Tensor) -> list[str]:
        """Generated ids -> report texts (special tokens and padding dropped)."""
        texts = self.tokenizer.batch_decode(sequences.tolist(), skip_special_tokens=True)
        return [text.strip() for text in texts]

    # --- persistence -----------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / PROCESSOR_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")
        self.tokenizer.save_pretrained(str(path))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MsVlmProcessor:
        path = Path(directory)
        settings = ProcessorSettings.from_json_dict(json.loads((path / PROCESSOR_FILE).read_text()))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
        return cls(tokenizer=tokenizer, settings=settings)
