"""Shims that let LLaVA-1.5's code (llava-torch 1.2.2, written for transformers 4.37) run on newer
transformers, newer DeepSpeed and CPU-only machines. Each shim checks the installed API, not a
version number. On LLaVA's own pins (transformers 4.37.2) the trainer-import shim does nothing, but
the DeepSpeed one is needed there, the CPU one applies on any version without CUDA, and LLaVA's
forward is still wrapped (it drops no keyword 4.37's generate passes).

* generation: 4.38+ passes `cache_position` (and 5.x other keywords) to LLaVA's forward, which has
  no **kwargs; 5.24 renamed `past_key_values` to `cache`. Unknown keywords are dropped, and `cache`
  is mapped back: dropping it would silently decode without a KV cache (wrong tokens).
* training: `ALL_LAYERNORM_LAYERS` left `transformers.trainer` in 4.53; the trainer signature
  changes are handled by `llava_integration.trainer.CLIPMoELLaVATrainer`.
* DeepSpeed: old transformers fill ZeRO-3 "auto" bucket sizes with floats that new DeepSpeed refuses.
* CPU: LLaVA's save path calls `torch.cuda.synchronize()`, which fails without CUDA.
"""

from __future__ import annotations

import functools
import inspect

import torch


def llava_causal_lm_classes():
    """LLaVA's causal-LM classes whose forward has a fixed keyword list."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM

    return [LlavaLlamaForCausalLM, LlavaMistralForCausalLM]


def _accepts_var_kwargs(fn) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def patch_forward_keywords(cls) -> None:
    """Make `cls.forward` accept what newer `generate` passes (idempotent)."""
    original = cls.forward
    if getattr(original, "_clipmoe_keywords", False) or _accepts_var_kwargs(original):
        return
    accepted = set(inspect.signature(original).parameters)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        if "cache" in kwargs and "past_key_values" not in kwargs:  # transformers >= 5.24
            kwargs["past_key_values"] = kwargs.pop("cache")
        for key in [k for k in kwargs if k not in accepted]:  # cache_position (>= 4.38), logits_to_keep, ...
            kwargs.pop(key)
        return original(self, *args, **kwargs)

    forward._clipmoe_keywords = True
    cls.forward = forward


def patch_trainer_imports() -> None:
    """llava.train.llava_trainer imports ALL_LAYERNORM_LAYERS from transformers.trainer (gone in 4.53)."""
    import transformers.trainer

    if not hasattr(transformers.trainer, "ALL_LAYERNORM_LAYERS"):
        # still in transformers.pytorch_utils in 5.x
        from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

        transformers.trainer.ALL_LAYERNORM_LAYERS = ALL_LAYERNORM_LAYERS


def patch_cpu_synchronize() -> None:
    """On a machine without CUDA, torch.cuda.synchronize() (called by LLaVA's save) is a no-op."""
    if torch.cuda.is_available() or getattr(torch.cuda.synchronize, "_clipmoe_noop", False):
        return

    def synchronize(device=None):
        return None

    synchronize._clipmoe_noop = True
    torch.cuda.synchronize = synchronize


def patch_deepspeed_auto_sizes() -> None:
    """transformers <= 4.4x fills ZeRO-3's "auto" stage3_prefetch_bucket_size with 0.9 * hidden**2, a
    float; DeepSpeed >= 0.15 validates it as an int and refuses the config. Round it."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    original = HfTrainerDeepSpeedConfig.trainer_config_finalize
    if getattr(original, "_clipmoe", False):
        return

    @functools.wraps(original)
    def trainer_config_finalize(self, *args, **kwargs):
        original(self, *args, **kwargs)
        zero = self.config.get("zero_optimization", {})
        for key in ("stage3_prefetch_bucket_size", "stage3_param_persistence_threshold", "reduce_bucket_size"):
            if isinstance(zero.get(key), float):
                zero[key] = int(zero[key])

    trainer_config_finalize._clipmoe = True
    HfTrainerDeepSpeedConfig.trainer_config_finalize = trainer_config_finalize


def apply() -> None:
    """All shims for inference and training (safe to call more than once)."""
    for cls in llava_causal_lm_classes():
        patch_forward_keywords(cls)
    patch_trainer_imports()
    patch_cpu_synchronize()
    patch_deepspeed_auto_sizes()
