"""CLIP-MoE for LLaVA-1.5 (PyPI `llava-torch`) and transformers' Llava.

The one line a user adds before building or loading a LLaVA model:

    import llava_integration; llava_integration.register()

After it, `--vision_tower clipmoe` (default checkpoint from $CLIPMOE_VISION_TOWER),
`--vision_tower clipmoe:<path or hub id>` and any CLIP-MoE checkpoint directory work wherever
LLaVA builds a vision tower; every other name still goes to LLaVA's own builder.

Importing this package (or any module of it) patches nothing; `register()` does, and the training
entry point `python -m llava_integration.train` calls it. The DeepSpeed launch scripts and ZeRO
configs ship with the package, in `launch_dir()`.
"""

from __future__ import annotations

import os

_registered = False


def register() -> None:
    """Patch LLaVA-1.5 (idempotent): builder dispatch, config persistence, the MoE aux loss in the
    causal LMs' forward, generation on newer transformers. The only place that patches anything:
    importing this package or its modules changes nothing in torch, transformers or llava."""
    global _registered
    if _registered:
        return
    from . import aux_loss, builder, compat

    compat.apply()
    builder.patch_builders()
    for cls in compat.llava_causal_lm_classes():
        cls.forward = aux_loss.with_moe_aux_loss(cls.forward)
    _registered = True


def launch_dir() -> str:
    """The folder of the LLaVA-1.5 DeepSpeed launch files: pretrain.sh, finetune.sh (and the
    common.sh they source), zero2.json, zero3.json."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch")


def __getattr__(name):
    # The tower module needs torch and transformers: imported when asked for, so that
    # `launch_dir()` answers fast.
    if name in ("CLIPMoEVisionTower", "DEFAULT_TOWER_ENV"):
        from clipmoe_encoder import tower

        return getattr(tower, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_TOWER_ENV", "CLIPMoEVisionTower", "launch_dir", "register"]
