"""MS-VLM in the transformers style: configuration, modeling, processing.

Importing this package registers model type "msvlm" with `AutoConfig` and `AutoModel`, so a
saved folder loads with `AutoModel.from_pretrained(path)`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_msvlm import MsVlmConfig, MsVlmConfigError, ReportModelConfig
from .modeling_msvlm import MsVlmForReportGeneration
from .pipeline import Placement, ReportGenerator, ReportOutput
from .presets import PRESET_NAMES, msvlm_preset
from .processing_msvlm import MsVlmBatch, MsVlmProcessor, ProcessorSettings, ViewInput
from .report_model import MsVlmGenerationOutput, MsVlmOutput, ReportModelBase, VisualEncoding
from .tokenizer import build_word_tokenizer

AutoConfig.register(MsVlmConfig.model_type, MsVlmConfig, exist_ok=True)
AutoModel.register(MsVlmConfig, MsVlmForReportGeneration, exist_ok=True)

__all__ = [
    "PRESET_NAMES",
    "MsVlmBatch",
    "MsVlmConfig",
    "MsVlmConfigError",
    "MsVlmForReportGeneration",
    "MsVlmGenerationOutput",
    "MsVlmOutput",
    "MsVlmProcessor",
    "Placement",
    "ProcessorSettings",
    "ReportGenerator",
    "ReportModelBase",
    "ReportModelConfig",
    "ReportOutput",
    "ViewInput",
    "VisualEncoding",
    "build_word_tokenizer",
    "msvlm_preset",
]
