"""`import clipmoe_encoder` makes transformers' AutoConfig / AutoModel know the CLIP-MoE classes
without importing transformers or torch itself (in transformers 5 any config class pulls in torch,
seconds that `clipmoe --help` should not pay).

Registration runs right after transformers loads its auto-class tables: the configs when
`configuration_auto` is imported, the models once `modeling_auto`, transformers' `modeling_utils`
and our `modeling.py` are all loaded (transformers 4.x imports modeling_auto in the middle of
modeling_utils). If they are already loaded when this package is imported, the classes register
at once. Either way `AutoConfig` / `AutoModel`
/ `LlavaForConditionalGeneration.from_pretrained` see CLIP-MoE whenever they first look.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

_CONFIGS = "transformers.models.auto.configuration_auto"
_MODELS = "transformers.models.auto.modeling_auto"
_MODELING_UTILS = "transformers.modeling_utils"
_OWN_MODELS = __name__.rsplit(".", 1)[0] + ".modeling"


def register_configs() -> None:
    from transformers import AutoConfig

    from .configuration import CLIPMoEConfig, CLIPMoETextConfig, CLIPMoEVisionConfig

    for config in (CLIPMoEVisionConfig, CLIPMoETextConfig, CLIPMoEConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)


def _half_imported(name: str, defines: str) -> bool:
    """In sys.modules but still executing (its names not defined yet)."""
    module = sys.modules.get(name)
    return module is not None and not hasattr(module, defines)


def register_models() -> None:
    """Runs after modeling_auto, transformers' modeling_utils and our modeling.py each finish
    loading, and registers once nothing it needs is half-imported: transformers 4.x loads
    modeling_auto in the middle of importing modeling_utils, which our modeling.py imports."""
    if _MODELS not in sys.modules or any(
            _half_imported(name, defines) for name, defines in
            ((_MODELS, "AutoModel"), (_MODELING_UTILS, "PreTrainedModel"), (_OWN_MODELS, "CLIPMoEModel"))):
        return
    from transformers import AutoModel

    from .modeling import CLIPMoEModel, CLIPMoEVisionModel

    for model in (CLIPMoEVisionModel, CLIPMoEModel):
        AutoModel.register(model.config_class, model, exist_ok=True)


_AFTER_IMPORT = {_CONFIGS: register_configs, _MODELS: register_models, _MODELING_UTILS: register_models,
                 _OWN_MODELS: register_models}


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the modules in _AFTER_IMPORT it wraps the real loader so that the
    registration runs once the module has executed."""

    def find_spec(self, name, path, target=None):
        if name not in _AFTER_IMPORT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _LoaderThenRegister(spec.loader, _AFTER_IMPORT[name])
                return spec
        return None


class _LoaderThenRegister(importlib.abc.Loader):
    def __init__(self, loader, register):
        self.loader, self.register = loader, register

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.register()


def install() -> None:
    for name, register in _AFTER_IMPORT.items():
        if name in sys.modules:
            register()
    if not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
