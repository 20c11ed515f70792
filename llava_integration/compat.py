"""Shims that let LLaVA-1.5's code (llava-torch 1.2.2, written for transformers 4.37) run on newer
transformers, newer DeepSpeed and CPU-only machines. Each shim checks the installed API, not a
version number, and each is applied only where LLaVA needs it, by an explicit call: the model
shims by `llava_integration.register()`, the training ones by `llava_integration.train.prepare()`
and the trainer. Nothing here changes torch, and nothing changes transformers for good.

* generation: 4.38+ passes `cache_position` (and 5.x other keywords) to LLaVA's forward, which has
  no **kwargs; 5.24 renamed `past_key_values` to `cache`. Unknown keywords are dropped, and `cache`
  is mapped back: dropping it would silently decode without a KV cache (wrong tokens).
* training: `ALL_LAYERNORM_LAYERS` left `transformers.trainer` in 4.53 (lent for LLaVA's import
  only); the trainer signature changes are handled by `llava_integration.trainer.CLIPMoELLaVATrainer`.
* DeepSpeed: old transformers fill ZeRO-3's "auto" prefetch bucket size with a float that new
  DeepSpeed refuses (filled as an int first, in the run's own config).
* resume: transformers < 4.48 reads its RNG file (numpy's RNG state inside) with torch.load's
  default, weights_only since torch 2.6, which refuses numpy arrays: the trainer reads it with
  numpy's array types allowed (`numpy_arrays_loadable`), still weights_only.
* CPU: LLaVA's DeepSpeed save calls `torch.cuda.synchronize()`, which fails without CUDA (LLaVA's
  save function is wrapped; torch is left alone).
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def llava_trainer_importable():
    """Import `llava.train.llava_trainer` inside this block: it imports ALL_LAYERNORM_LAYERS from
    transformers.trainer, gone in 4.53 (still in transformers.pytorch_utils). The name is lent to
    transformers.trainer for the import only and taken back afterwards: LLaVA's module keeps its
    own binding, and transformers is left as it was."""
    import transformers.trainer

    if hasattr(transformers.trainer, "ALL_LAYERNORM_LAYERS"):
        yield
        return
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

    transformers.trainer.ALL_LAYERNORM_LAYERS = ALL_LAYERNORM_LAYERS
    try:
        yield
    finally:
        del transformers.trainer.ALL_LAYERNORM_LAYERS


def save_without_cuda_sync(save):
    """Wrap LLaVA's `safe_save_model_for_hf_trainer`: on a machine without CUDA its DeepSpeed branch
    (`torch.cuda.synchronize(); trainer.save_model(output_dir)`) runs without the synchronize,
    which would fail and has nothing to wait for. Every other case is LLaVA's own code."""
    if getattr(save, "_clipmoe", False):
        return save

    @functools.wraps(save)
    def safe_save_model_for_hf_trainer(trainer, output_dir):
        adapter_only = getattr(trainer.args, "tune_mm_mlp_adapter", False)  # LLaVA's first branch
        if trainer.deepspeed and not adapter_only and not torch.cuda.is_available():
            trainer.save_model(output_dir)
            return
        save(trainer, output_dir)

    safe_save_model_for_hf_trainer._clipmoe = True
    return safe_save_model_for_hf_trainer


PREFETCH_BUCKET = "zero_optimization.stage3_prefetch_bucket_size"


def fill_zero3_prefetch_bucket(hf_deepspeed_config, model) -> None:
    """transformers <= 4.4x fills ZeRO-3's "auto" stage3_prefetch_bucket_size with 0.9 * hidden**2, a
    float, which DeepSpeed >= 0.15 refuses (it validates an int). Fill it first, with the same
    value as an int, on this run's config only (transformers leaves a filled value alone)."""
    hidden = getattr(model.config, "hidden_size", None)
    if hidden and hf_deepspeed_config.is_zero3() and hf_deepspeed_config.is_auto(PREFETCH_BUCKET):
        hf_deepspeed_config.fill_only(PREFETCH_BUCKET, int(0.9 * hidden * hidden))


def apply() -> None:
    """The shims LLaVA's models need for inference (safe to call more than once)."""
    for cls in llava_causal_lm_classes():
        patch_forward_keywords(cls)


def numpy_arrays_loadable():
    """A context in which torch.load(weights_only=True) accepts numpy arrays and dtypes (an RNG state
    file), and nothing more. transformers >= 4.48 does the same in its own RNG loading."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return torch.serialization.safe_globals(
        [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))])
