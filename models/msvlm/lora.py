"""Optional LoRA adapters on the language model (for 1B-7B LMs that cannot be fully tuned).

peft is an optional dependency: the node never needs it to run a merged model, so it is
imported only when adapters are added. Train with `add_lora`, then `merge_lora` before
`save_pretrained`, so the saved folder has the plain LM keys and loads without peft.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from .report_model import ReportModelBase

LLAMA_ATTENTION_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Sequence[str] = LLAMA_ATTENTION_PROJECTIONS


def add_lora(model: ReportModelBase, settings: LoraSettings) -> None:
    """Wrap `model.language_model` with LoRA adapters; its base weights become frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA needs the optional 'peft' package (pip install peft)") from error
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    with warnings.catch_warnings():
        # peft still probes a property that transformers 5 deprecated; harmless, and only here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.language_model = get_peft_model(model.language_model, config)


def merge_lora(model: ReportModelBase) -> None:
    """Fold the adapters into the LM weights and drop the peft wrapper (no-op without LoRA)."""
    merge_and_unload = getattr(model.language_model, "merge_and_unload", None)
    if merge_and_unload is not None:
        model.language_model = merge_and_unload()
