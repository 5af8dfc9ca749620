"""One training forward pass of a model on a processor batch, for the model tests."""

from __future__ import annotations

from typing import Any

from models.msvlm import MsVlmBatch
from models.msvlm.report_model import MsVlmOutput, ReportModelBase


def forward_batch(model: ReportModelBase, batch: MsVlmBatch, **overrides: Any) -> MsVlmOutput:
    """`model(...)` with every input of `batch`; `overrides` replace or add keyword arguments."""
    arguments: dict[str, Any] = {
        "pixel_values": batch.pixel_values,
        "slice_mask": batch.slice_mask,
        "view_ids": batch.view_ids,
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "labels": batch.labels,
        "findings_labels": batch.findings_labels,
    }
    return model(**{**arguments, **overrides})
