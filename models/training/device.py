"""Where training runs: `--device` parsing and the precision each device trains in.

The model is moved to the device once (`models.train`); every stage then works on the
device its model lives on (`module_device`), so a stage cannot disagree with the model.
On CUDA the forward passes run under bfloat16 autocast while weights, gradients, AdamW
state and the losses stay float32: bf16 has float32's range, so no loss scaling is needed,
and the saved weights are the float32 master copy. CPUs train in float32 as they always
did, with the same random streams, so CPU runs reproduce the runs from before `--device`.
"""

from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N` -> a usable device.

    Raises ValueError with the reason when the name is malformed or names a GPU that this
    machine does not have, so the CLI fails before writing or loading anything.
    """
    text = name.strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available (torch {torch.__version__}, no usable GPU)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def module_device(module: nn.Module) -> torch.device:
    """The device of `module`'s first parameter (CPU for a module without parameters)."""
    parameter = next(module.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 on CUDA devices that support it; None (plain float32) elsewhere.

    float16 is not offered as a fallback: it would need a gradient scaler, and GPUs without
    bf16 are old enough that float32 is the simpler honest choice.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def training_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast for forward passes on `device` (a no-op on CPU); compute losses in float32."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
