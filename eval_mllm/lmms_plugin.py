"""lmms-eval 0.7.x model plugin, registered through the `lmms_eval.models` entry point
(pyproject: `clipmoe = "eval_mllm.lmms_plugin:MANIFESTS"`).

    python -m lmms_eval --model clipmoe_llava --model_args pretrained=DIR[,device=cpu] ...
    python -m lmms_eval --model clipmoe_llava_hf --model_args pretrained=DIR[,device=cpu] ...

* `clipmoe_llava`: a llava-torch checkpoint (LLaVA-1.5 code); subclass of lmms-eval's `llava`
  that first calls `llava_integration.register()` (clipmoe towers, transformers-5 shims), makes
  the model name contain "llava" (LLaVA's builder needs it) and uses `device_map=auto` on CPU
  (upstream hard-codes cuda:N otherwise).
* `clipmoe_llava_hf`: a transformers Llava checkpoint (CLIP-MoE vision_config registered by
  `import clipmoe_encoder`); subclass of `llava_hf` in which a model error fails the run instead
  of upstream's behaviour of logging it and scoring an empty answer.

Both accept `min_new_tokens=N` (smoke tests with untrained models that emit EOS at once).

The classes are built on first attribute access (PEP 562): lmms-eval loads every entry point at
start-up, and importing lmms-eval's model modules (torch, llava) only to list models would be slow.
"""

from __future__ import annotations

import functools
import os

from lmms_eval.models.registry_v2 import ModelManifest

MANIFESTS = [
    ModelManifest("clipmoe_llava", simple_class_path="eval_mllm.lmms_plugin.ClipMoeLlava"),
    ModelManifest("clipmoe_llava_hf", simple_class_path="eval_mllm.lmms_plugin.ClipMoeLlavaHf"),
]


class ModelGenerationError(RuntimeError):
    """The model raised while generating; the evaluation stops (no empty answers are scored)."""


class _Abort(BaseException):
    # A BaseException passes through llava_hf's `except Exception` around generate(), which
    # would otherwise turn the failure into "" and carry on.
    def __init__(self, error):
        super().__init__(repr(error))
        self.error = error


def _on_cpu(device) -> bool:
    import torch

    return not torch.cuda.is_available() or str(device).startswith("cpu")


def _add_min_new_tokens(model, min_new_tokens):
    if not min_new_tokens:
        return
    generate = model.generate

    @functools.wraps(generate)
    def with_min(*args, **kwargs):
        kwargs.setdefault("min_new_tokens", int(min_new_tokens))
        return generate(*args, **kwargs)

    model.generate = with_min


def _build_llava_class():
    from lmms_eval.models.simple.llava import Llava

    class ClipMoeLlava(Llava):
        """lmms-eval's `llava` for checkpoints with a CLIP-MoE (or any) vision tower."""

        def __init__(self, pretrained, device="cuda:0", device_map="cuda:0", model_name=None,
                     min_new_tokens=0, **kwargs):
            import llava_integration

            llava_integration.register()
            if _on_cpu(device):
                device, device_map = "cpu", "auto"
            name = model_name or os.path.basename(os.path.normpath(pretrained))
            if "llava" not in name.lower():  # else LLaVA's builder loads a bare LLM
                name = "llava-" + name
            super().__init__(pretrained=pretrained, device=device, device_map=device_map, model_name=name,
                             **kwargs)
            _add_min_new_tokens(self._model, min_new_tokens)

    return ClipMoeLlava


def _video_reader_placeholder():
    """lmms-eval's llava_hf module imports `decord` at the top, for video input only; lmms-eval does
    not install it. Where it is missing, a placeholder lets images work and any video use fail
    with an ImportError that says what to install."""
    import importlib.util
    import sys
    import types

    if "decord" in sys.modules or importlib.util.find_spec("decord") is not None:
        return

    def missing(*args, **kwargs):
        raise ImportError("video input needs `pip install decord` (lmms-eval's llava_hf reads videos with it)")

    placeholder = types.ModuleType("decord")
    placeholder.VideoReader = placeholder.cpu = missing
    placeholder.__eval_mllm_placeholder__ = True
    sys.modules["decord"] = placeholder


def _build_llava_hf_class():
    _video_reader_placeholder()
    from lmms_eval.models.simple.llava_hf import LlavaHf

    class ClipMoeLlavaHf(LlavaHf):
        """lmms-eval's `llava_hf` for transformers Llava checkpoints with a CLIP-MoE vision_config;
        a generation error raises ModelGenerationError."""

        def __init__(self, pretrained, device="cuda", min_new_tokens=0, **kwargs):
            import clipmoe_encoder  # noqa: F401  registers clipmoe_vision_model before AutoConfig runs

            if _on_cpu(device):
                device = "cpu"
                kwargs.setdefault("dtype", "float32")  # fp16 matmuls on CPU are slow
                if not kwargs.get("device_map"):  # upstream's default "" is rejected by from_pretrained
                    kwargs["device_map"] = "cpu"
            super().__init__(pretrained=pretrained, device=device, **kwargs)
            _add_min_new_tokens(self._model, min_new_tokens)
            generate = self._model.generate

            @functools.wraps(generate)
            def loud_generate(*args, **kw):
                try:
                    return generate(*args, **kw)
                except Exception as error:
                    raise _Abort(error) from error

            self._model.generate = loud_generate

        def generate_until(self, requests):
            try:
                return super().generate_until(requests)
            except _Abort as abort:
                raise ModelGenerationError(
                    f"{type(self).__name__}: generation failed for {self.pretrained}: "
                    f"{type(abort.error).__name__}: {abort.error}") from abort.error

    return ClipMoeLlavaHf


_BUILDERS = {"ClipMoeLlava": _build_llava_class, "ClipMoeLlavaHf": _build_llava_hf_class}
_built = {}


def __getattr__(name):
    if name in _BUILDERS:
        if name not in _built:
            cls = _BUILDERS[name]()
            cls.__module__, cls.__qualname__ = __name__, name
            _built[name] = cls
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
