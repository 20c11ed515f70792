"""CLIP towers whose chosen blocks hold a sparse MoE FFN, as Hugging Face models.

Same computation and parameter names as transformers' CLIPVisionModel / CLIPModel for every dense
part (pre-LN blocks, quick_gelu, pre and post layer norms, projections), so a dense CLIP state
dict loads as is and outputs match to float precision. An MoE block's FFN is `MoEFeedForward`
(router + stacked experts); the model returns its router logits and auxiliary losses on request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .checkpoint_io import check_moe_directory, check_weight_shapes, check_weights_match_config, looks_local
from .configuration import CLIPMoEConfig, CLIPMoETextConfig, CLIPMoEVisionConfig
from .errors import CLIPMoEError
from .moe import MoEFeedForward, RoutingStats, StackedExperts, TopKRouter, activation, aux_losses, routing_stats

try:  # transformers >= 5: initialisers that leave already-loaded tensors alone
    from transformers import initialization as _init
except ImportError:  # transformers 4.x initialises only the tensors missing from a checkpoint
    _init = nn.init


@dataclass
class CLIPMoETowerOutput(ModelOutput):
    """BaseModelOutputWithPooling plus the MoE extras (None unless output_router_logits)."""

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    routing_stats: tuple[RoutingStats, ...] | None = None
    aux_loss: torch.FloatTensor | None = None
    load_balancing_loss: torch.FloatTensor | None = None
    router_z_loss: torch.FloatTensor | None = None


@dataclass
class CLIPMoEOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: CLIPMoETowerOutput | None = None
    vision_model_output: CLIPMoETowerOutput | None = None
    aux_loss: torch.FloatTensor | None = None
    load_balancing_loss: torch.FloatTensor | None = None
    router_z_loss: torch.FloatTensor | None = None


def _wants(flag) -> bool:
    """transformers >= 5.23 passes output_hidden_states as a layer index (0 included)."""
    return flag is not None and flag is not False


class CLIPMoEAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, attention_mask=None, is_causal=False, output_attentions=False):
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:  # SDPA does not return the attention map
            scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            elif is_causal:
                scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=x.device).tril(), torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, dropout_p=dropout, is_causal=is_causal and attention_mask is None
            )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), weights


class CLIPMoEMLP(nn.Module):
    """The dense CLIP FFN, kept for blocks that are not MoE (names as in transformers' CLIPMLP)."""

    def __init__(self, config):
        super().__init__()
        self.act = activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))), None


class CLIPMoEEncoderLayer(nn.Module):
    def __init__(self, config, is_moe: bool):
        super().__init__()
        self.is_moe = is_moe
        self.self_attn = CLIPMoEAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MoEFeedForward(config) if is_moe else CLIPMoEMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, attention_mask=None, is_causal=False, output_attentions=False):
        attn, weights = self.self_attn(self.layer_norm1(x), attention_mask, is_causal, output_attentions)
        x = x + attn
        ffn, router_logits = self.mlp(self.layer_norm2(x))
        return x + ffn, router_logits, weights


class CLIPMoEEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        moe = set(config.moe_layer_indices)
        self.layers = nn.ModuleList(CLIPMoEEncoderLayer(config, i in moe) for i in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x, attention_mask=None, is_causal=False, output_hidden_states=False, output_attentions=False):
        hidden_states, attentions, router_logits = [x], [], []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x, logits, weights = self._gradient_checkpointing_func(layer.__call__, x, attention_mask, is_causal, output_attentions)
            else:
                x, logits, weights = layer(x, attention_mask, is_causal, output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
            if logits is not None:
                router_logits.append(logits)
        return (
            x,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
            tuple(router_logits),
        )


class CLIPMoEVisionTransformer(nn.Module):
    def __init__(self, config: CLIPMoEVisionConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embeddings = CLIPMoEVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(d, eps=config.layer_norm_eps)  # (sic) transformers' name
        self.encoder = CLIPMoEEncoder(config)
        self.post_layernorm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, pixel_values, output_hidden_states=None, output_attentions=None, output_router_logits=None, interpolate_pos_encoding=False):
        x = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        last, hidden, attentions, router_logits = self.encoder(
            x, output_hidden_states=_wants(output_hidden_states), output_attentions=bool(output_attentions)
        )
        return _tower_output(self.config, last, self.post_layernorm(last[:, 0]), hidden, attentions, router_logits, output_router_logits)


class CLIPMoEVisionEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.image_size, self.patch_size, self.embed_dim = config.image_size, config.patch_size, config.hidden_size
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size, bias=False)
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_patches + 1, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(self.num_patches + 1).unsqueeze(0), persistent=False)

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        b, _, h, w = pixel_values.shape
        if not interpolate_pos_encoding and (h != self.image_size or w != self.image_size):
            raise CLIPMoEError(
                f"pixel_values are {h}x{w} but this tower takes {self.image_size}x{self.image_size} images "
                "(resize with the tower's image processor, or pass interpolate_pos_encoding=True)"
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(b, 1, -1).to(patches.dtype), patches], dim=1)
        if interpolate_pos_encoding and (h != self.image_size or w != self.image_size):
            return x + self._interpolated_positions(h // self.patch_size, w // self.patch_size)
        return x + self.position_embedding(self.position_ids)

    def _interpolated_positions(self, rows, cols):
        table = self.position_embedding.weight
        side = int(round((table.shape[0] - 1) ** 0.5))
        grid = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)]).unsqueeze(0)


class CLIPMoETextTransformer(nn.Module):
    def __init__(self, config: CLIPMoETextConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embeddings = CLIPMoETextEmbeddings(config)
        self.encoder = CLIPMoEEncoder(config)
        self.final_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=None, output_attentions=None, output_router_logits=None):
        x = self.embeddings(input_ids, position_ids)
        n = input_ids.shape[1]
        mask = None
        if attention_mask is not None:
            # causal AND not padding, as a boolean SDPA mask (True = may attend). A row with every key
            # masked (left padding) would give NaN: it attends to all keys instead, as the additive
            # masks of transformers' CLIP effectively do.
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        last, hidden, attentions, router_logits = self.encoder(
            x, mask, is_causal=True, output_hidden_states=_wants(output_hidden_states), output_attentions=bool(output_attentions)
        )
        last = self.final_layer_norm(last)
        rows = torch.arange(last.shape[0], device=last.device)
        if self.config.eos_token_id == 2:  # legacy configs: EOT is the largest token id
            eot = input_ids.to(torch.int).argmax(dim=-1)
        else:  # the first EOS (padding may use the same id)
            eot = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)
        return _tower_output(self.config, last, last[rows, eot], hidden, attentions, router_logits, output_router_logits, attention_mask)


class CLIPMoETextEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).unsqueeze(0), persistent=False)

    def forward(self, input_ids, position_ids=None):
        n = input_ids.shape[-1]
        if n > self.position_ids.shape[1]:
            raise CLIPMoEError(f"text of {n} tokens exceeds max_position_embeddings={self.position_ids.shape[1]}")
        if position_ids is None:
            position_ids = self.position_ids[:, :n]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


def _tower_output(config, last, pooled, hidden, attentions, router_logits, output_router_logits, token_mask=None):
    out = CLIPMoETowerOutput(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden, attentions=attentions)
    if output_router_logits:
        out.router_logits = router_logits
        out.routing_stats = tuple(routing_stats(r, config.num_experts_per_tok, token_mask) for r in router_logits)
        out.aux_loss, out.load_balancing_loss, out.router_z_loss = aux_losses(out.routing_stats, config)
    return out


class CLIPMoEPreTrainedModel(PreTrainedModel):
    config_class = CLIPMoEConfig
    base_model_prefix = "clipmoe"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPMoEEncoderLayer", "CLIPMoEVisionEmbeddings", "CLIPMoETextEmbeddings"]
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' from_pretrained, with one clear error for a bad local checkpoint (missing
        path, another model type, weights that do not fit the config, a corrupt safetensors file).
        A vision-only model also loads from a two-tower CLIP-MoE directory."""
        path = pretrained_model_name_or_path
        if isinstance(path, (str, os.PathLike)) and looks_local(path):
            # also when AutoModel passes the config it read: the weights are checked against it all the same
            path = os.fspath(path)
            wanted = ("clipmoe", "clipmoe_vision_model") if cls is CLIPMoEVisionModel else (cls.config_class.model_type,)
            saved = check_moe_directory(path, wanted)
            if saved["model_type"] == cls.config_class.model_type:
                check_weights_match_config(path, saved)  # every tensor, both ways: none left at random init
            else:  # the vision tower out of a two-tower directory: the shapes of the tensors it takes
                if kwargs.get("config") is None:
                    kwargs["config"] = CLIPMoEConfig.from_pretrained(path).vision_config
                with torch.device("meta"):
                    check_weight_shapes(path, cls(kwargs["config"]))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        # Non-reentrant by default: with frozen embeddings (MCL and router stages train only FFNs or
        # routers) the reentrant variant that transformers 4.x picks would drop every gradient.
        kwargs = dict(kwargs, gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False})
        return super().gradient_checkpointing_enable(**kwargs)

    def _init_weights(self, module):
        # Dispatch on the modules that own parameters directly: transformers 5 skips custom modules
        # without direct parameters, so initialising at a parent level would silently do nothing.
        cfg = getattr(self.config, "vision_config", self.config)
        factor, std = cfg.initializer_factor, cfg.initializer_range
        if isinstance(module, nn.LayerNorm):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            _init.normal_(module.weight, std=module.in_features**-0.5 * factor)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, std=0.02 * factor)
        elif isinstance(module, nn.Conv2d):
            _init.normal_(module.weight, std=std * factor)
        elif isinstance(module, CLIPMoEVisionEmbeddings):
            _init.normal_(module.class_embedding, std=module.embed_dim**-0.5 * factor)
            _reset_positions(module)
        elif isinstance(module, CLIPMoETextEmbeddings):
            _reset_positions(module)
        elif isinstance(module, TopKRouter):
            _init.normal_(module.weight, std=std)
        elif isinstance(module, StackedExperts):
            # sizes from the module, not the tensors: under ZeRO-3 a partitioned tensor has shape (0,)
            _init.normal_(module.fc1_weight, std=(2 * module.hidden_size) ** -0.5 * factor)
            _init.normal_(module.fc2_weight, std=(2 * module.intermediate_size) ** -0.5 * factor)
            _init.zeros_(module.fc1_bias)
            _init.zeros_(module.fc2_bias)
        elif isinstance(module, CLIPMoEModel):
            _init.constant_(module.logit_scale, float(self.config.logit_scale_init_value))


def _reset_positions(module):
    # A non-persistent buffer is not in the checkpoint: transformers 5 materialises it empty on load.
    with torch.no_grad():
        module.position_ids.copy_(torch.arange(module.position_ids.shape[1], device=module.position_ids.device).unsqueeze(0))


class CLIPMoEVisionModel(CLIPMoEPreTrainedModel):
    """The vision tower alone (what LLaVA uses); outputs as transformers' CLIPVisionModel."""

    config_class = CLIPMoEVisionConfig
    main_input_name = "pixel_values"
    # loading the vision tower out of a two-tower checkpoint leaves these behind, by design
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^visual_projection\.", r"^text_projection\.", r"^logit_scale$"]

    def __init__(self, config: CLIPMoEVisionConfig):
        super().__init__(config)
        self.vision_model = CLIPMoEVisionTransformer(config)
        self.post_init()

    @property
    def patch_size(self) -> int:  # read by transformers' Llava when image_sizes are given
        return self.config.patch_size

    def get_input_embeddings(self):
        return self.vision_model.embeddings.patch_embedding

    def forward(
        self,
        pixel_values=None,
        output_hidden_states=None,
        output_attentions=None,
        output_router_logits=None,
        interpolate_pos_encoding=False,
        return_dict=None,
        **kwargs,  # Llava and pipelines pass extra keywords (image_sizes, ...)
    ):
        out = self.vision_model(pixel_values, output_hidden_states, output_attentions, output_router_logits, interpolate_pos_encoding)
        return out if return_dict is not False else out.to_tuple()


class CLIPMoEModel(CLIPMoEPreTrainedModel):
    """Both towers, with projections and the contrastive logits, as transformers' CLIPModel."""

    config_class = CLIPMoEConfig

    def __init__(self, config: CLIPMoEConfig):
        super().__init__(config)
        self.text_model = CLIPMoETextTransformer(config.text_config)
        self.vision_model = CLIPMoEVisionTransformer(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_image_features(self, pixel_values, interpolate_pos_encoding=False, **kwargs) -> torch.Tensor:
        """Projected (unnormalised) image embeddings."""
        return self.visual_projection(self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).pooler_output)

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, **kwargs) -> torch.Tensor:
        """Projected (unnormalised) text embeddings."""
        return self.text_projection(self.text_model(input_ids, attention_mask, position_ids).pooler_output)

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        return_loss=None,
        output_hidden_states=None,
        output_attentions=None,
        output_router_logits=None,
        interpolate_pos_encoding=False,
        return_dict=None,
        **kwargs,
    ):
        vision = self.vision_model(pixel_values, output_hidden_states, output_attentions, output_router_logits, interpolate_pos_encoding)
        text = self.text_model(input_ids, attention_mask, position_ids, output_hidden_states, output_attentions, output_router_logits)
        image_embeds = F.normalize(self.visual_projection(vision.pooler_output), dim=-1)
        text_embeds = F.normalize(self.text_projection(text.pooler_output), dim=-1)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        out = CLIPMoEOutput(
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=vision,
        )
        if output_router_logits:
            # every MoE layer of both towers counts once (the paper's 1/(A+B) sum); one coefficient
            # source, the vision config's (the two towers are built with the same MoE settings)
            out.aux_loss, out.load_balancing_loss, out.router_z_loss = aux_losses(
                vision.routing_stats + text.routing_stats, self.config.vision_config
            )
        if return_loss:
            targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
            out.loss = (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2
        return out if return_dict is not False else out.to_tuple()

