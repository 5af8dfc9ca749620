"""The 3D-patch (sub-volume) baseline that MS-VLM is compared against.

Importing this package registers model type "msvlm_baseline3d" with `AutoConfig`/`AutoModel`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_baseline3d import Baseline3dConfig
from .modeling_baseline3d import Baseline3dForReportGeneration, VolumePatchEncoder
from .presets import baseline3d_preset

AutoConfig.register(Baseline3dConfig.model_type, Baseline3dConfig, exist_ok=True)
AutoModel.register(Baseline3dConfig, Baseline3dForReportGeneration, exist_ok=True)

__all__ = ["Baseline3dConfig", "Baseline3dForReportGeneration", "VolumePatchEncoder", "baseline3d_preset"]
