"""CLIP-MoE: a mixture-of-experts CLIP built from any dense CLIP by Diversified Multiplet Upcycling.

`import clipmoe_encoder` registers the CLIP-MoE classes with transformers' AutoConfig / AutoModel
(auto_registration.py) and imports nothing heavy: the public names load on first use (PEP 562), so
`clipmoe --help` answers without torch.
"""

import importlib
import sys
import types

from . import auto_registration

auto_registration.install()

_LAZY = {
    "CLIPMoEConfig": "configuration", "CLIPMoETextConfig": "configuration", "CLIPMoEVisionConfig": "configuration",
    "CLIPMoEError": "errors",
    "CLIPMoEModel": "modeling", "CLIPMoEVisionModel": "modeling",
    "assemble_experts": "upcycle", "upcycle": "upcycle",
    "CLIPMoEVisionTower": "tower",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """`upcycle` names both a submodule and the function it exports: importing the submodule would
    bind the package attribute to the module and hide the function (the eager import used to rebind
    it); the function wins, as before."""

    def __setattr__(self, name, value):
        if name == "upcycle" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
