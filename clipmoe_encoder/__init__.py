"""CLIP-MoE: a mixture-of-experts CLIP built from any dense CLIP by Diversified Multiplet Upcycling."""

from transformers import AutoConfig, AutoModel

from .configuration import CLIPMoEConfig, CLIPMoETextConfig, CLIPMoEVisionConfig
from .errors import CLIPMoEError
from .modeling import CLIPMoEModel, CLIPMoEVisionModel

for _config, _model in ((CLIPMoEVisionConfig, CLIPMoEVisionModel), (CLIPMoEConfig, CLIPMoEModel)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
AutoConfig.register(CLIPMoETextConfig.model_type, CLIPMoETextConfig, exist_ok=True)

from .upcycle import assemble_experts, upcycle  # noqa: E402  (needs the registered classes)
from .tower import CLIPMoEVisionTower  # noqa: E402

__all__ = [
    "CLIPMoEConfig",
    "CLIPMoEError",
    "CLIPMoEModel",
    "CLIPMoETextConfig",
    "CLIPMoEVisionConfig",
    "CLIPMoEVisionModel",
    "CLIPMoEVisionTower",
    "assemble_experts",
    "upcycle",
]
