"""Hugging Face configs of CLIP-MoE: the vision tower alone and the two-tower model.

The dense fields mirror transformers' CLIPVisionConfig / CLIPTextConfig / CLIPConfig so a dense
CLIP config converts field by field; the MoE fields say which blocks hold experts and how tokens
are routed. Written with a classic `__init__` so the same class loads under transformers 4.37
(LLaVA's pin) and 5.x.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .errors import CLIPMoEError

MOE_FIELDS = (
    "num_experts", "num_experts_per_tok", "moe_layers", "normalize_top_k", "router_jitter", "expert_dropout",
    "router_aux_loss_coef", "router_aux_loss_count", "router_z_loss_coef",
)
AUX_LOSS_COUNTS = ("top_k", "top1")  # what counts in the balance loss's f (moe.load_balancing_loss)


def resolve_moe_layers(moe_layers, num_hidden_layers: int) -> list[int]:
    """Which blocks hold an MoE FFN: None or "all" = every block; an int N = the last N blocks;
    a list = those block indices (negative indices count from the end)."""
    if moe_layers is None or moe_layers == "all":
        return list(range(num_hidden_layers))
    if isinstance(moe_layers, bool):
        raise CLIPMoEError(f"moe_layers must be None, 'all', an int or a list of ints, got {moe_layers!r}")
    if isinstance(moe_layers, int):
        if not 0 <= moe_layers <= num_hidden_layers:
            raise CLIPMoEError(f"moe_layers={moe_layers} (last N blocks) must be between 0 and {num_hidden_layers}")
        return list(range(num_hidden_layers - moe_layers, num_hidden_layers))
    if isinstance(moe_layers, (list, tuple)):
        indices = []
        for i in moe_layers:
            if not isinstance(i, int) or isinstance(i, bool) or not -num_hidden_layers <= i < num_hidden_layers:
                raise CLIPMoEError(f"moe_layers entry {i!r} is not a block index of a {num_hidden_layers}-block tower")
            indices.append(i % num_hidden_layers)
        return sorted(set(indices))
    raise CLIPMoEError(f"moe_layers must be None, 'all', an int or a list of ints, got {moe_layers!r}")


class _MoETowerConfig(PretrainedConfig):
    """Fields shared by both towers: the CLIP transformer plus the MoE settings.

    The top-k is stored as `num_experts_per_tok` (as in Mixtral): a `top_k` field would be taken for
    a generation setting by transformers.
    """

    def __init__(
        self,
        hidden_size=768,
        intermediate_size=3072,
        projection_dim=512,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
        num_experts=4,
        num_experts_per_tok=2,
        moe_layers=None,
        normalize_top_k=True,
        router_jitter=0.0,
        expert_dropout=0.0,
        router_aux_loss_coef=0.01,
        router_aux_loss_count="top1",
        router_z_loss_coef=0.0,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.projection_dim = projection_dim
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.initializer_factor = initializer_factor
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layers = list(moe_layers) if isinstance(moe_layers, tuple) else moe_layers
        self.normalize_top_k = normalize_top_k
        self.router_jitter = router_jitter
        self.expert_dropout = expert_dropout
        self.router_aux_loss_coef = router_aux_loss_coef
        # which choices count in the balance loss's f (see moe.load_balancing_loss): "top1" (Switch,
        # 1 at balance) is the default so that configs saved before the field load unchanged;
        # "top_k" is the official code's count (k at balance), DMU's default
        self.router_aux_loss_count = router_aux_loss_count
        self.router_z_loss_coef = router_z_loss_coef
        super().__init__(**kwargs)
        self.validate_moe()

    def validate_moe(self):
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise CLIPMoEError(f"num_experts must be a positive int, got {self.num_experts!r}")
        k = self.num_experts_per_tok
        if not isinstance(k, int) or not 1 <= k <= self.num_experts:
            raise CLIPMoEError(f"num_experts_per_tok (top-k) must be between 1 and num_experts={self.num_experts}, got {k!r}")
        if self.hidden_size % self.num_attention_heads:
            raise CLIPMoEError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if self.router_aux_loss_count not in AUX_LOSS_COUNTS:
            raise CLIPMoEError(f"router_aux_loss_count must be one of {AUX_LOSS_COUNTS}, got {self.router_aux_loss_count!r}")
        resolve_moe_layers(self.moe_layers, self.num_hidden_layers)

    @property
    def moe_layer_indices(self) -> list[int]:
        return resolve_moe_layers(self.moe_layers, self.num_hidden_layers)


class CLIPMoEVisionConfig(_MoETowerConfig):
    model_type = "clipmoe_vision_model"
    base_config_key = "vision_config"

    def __init__(self, num_channels=3, image_size=224, patch_size=32, **kwargs):
        self.num_channels = num_channels
        self.image_size = image_size
        self.patch_size = patch_size
        super().__init__(**kwargs)


class CLIPMoETextConfig(_MoETowerConfig):
    model_type = "clipmoe_text_model"
    base_config_key = "text_config"

    def __init__(
        self,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=512,
        intermediate_size=2048,
        num_attention_heads=8,
        pad_token_id=1,
        bos_token_id=49406,
        eos_token_id=49407,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        super().__init__(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_attention_heads=num_attention_heads,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )


class CLIPMoEConfig(PretrainedConfig):
    model_type = "clipmoe"
    sub_configs = {"text_config": CLIPMoETextConfig, "vision_config": CLIPMoEVisionConfig}

    def __init__(self, text_config=None, vision_config=None, projection_dim=512, logit_scale_init_value=2.6592, **kwargs):
        self.text_config = _as_config(CLIPMoETextConfig, text_config)
        self.vision_config = _as_config(CLIPMoEVisionConfig, vision_config)
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        out["text_config"] = self.text_config.to_dict()
        out["vision_config"] = self.vision_config.to_dict()
        return out


def _as_config(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, PretrainedConfig):
        value = value.to_dict()
    value = {k: v for k, v in value.items() if k != "model_type"}
    return cls(**value)
